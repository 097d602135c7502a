"""Logits processing and token choice, per row of a batch (transformers' definitions).

Order, as transformers' `generate` applies them: modality constraints and padded rows, the
repetition penalty, min-new-tokens (stop ids masked), then, for sampling rows only,
temperature, top-k and top-p, and a categorical draw; greedy rows take the argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from anygpt_jax.generation import constraints as cons

NEG_INF = -jnp.inf


def repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
  """logits float32 [B, V]; seen bool [B, V] (ids in the prompt or output); penalty float32 [B]."""
  p = penalty[:, None]
  return jnp.where(seen, jnp.where(logits < 0, logits * p, logits / p), logits)


def mask_stop_ids(logits: jax.Array, stop_ids: jax.Array, active: jax.Array) -> jax.Array:
  """Sets stop ids (int32 [B, K], -1 = none) to -inf on rows where active (bool [B])."""
  batch, vocab = logits.shape
  ids = jnp.where(stop_ids < 0, vocab, stop_ids)  # out of range: dropped by the scatter
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], ids.shape)
  is_stop = jnp.zeros((batch, vocab), bool).at[rows, ids].set(True, mode="drop")
  return jnp.where(is_stop & active[:, None], NEG_INF, logits)


def process_logits(logits, step, rows: dict, seen, cstate, tables):
  """Constraints, repetition penalty and min-new-tokens on float32 logits [B, V] at decoding `step`
  (int32 scalar); `rows` holds the batch's per-row settings, `seen` bool [B, V] the ids so far,
  `cstate` the constraints' state (None tables: unconstrained). Shared by sampling and beam search."""
  if tables is not None:
    logits = cons.apply(tables, cstate, logits, rows["max_new_tokens"] - step, jnp)
  logits = repetition_penalty(logits, seen, rows["repetition_penalty"])
  masked = mask_stop_ids(logits, rows["stop_ids"], step < rows["min_new_tokens"])
  # A closed answer span allows only stop ids: there min_new_tokens yields to the constraints.
  return jnp.where(jnp.any(masked > jnp.finfo(jnp.float32).min, axis=-1, keepdims=True), masked, logits)


def top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """transformers' TopK then TopP warpers per row; top_k int32 [B] (0: off), top_p float32 [B].

  Top-k keeps every id at least as likely as the k-th; top-p drops the least likely ids whose
  cumulative probability stays at or below 1 - top_p, always keeping the most likely one.
  """
  vocab = logits.shape[-1]
  descending = -jnp.sort(-logits, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth = jnp.take_along_axis(descending, (k - 1)[:, None], axis=-1)
  logits = jnp.where(logits < kth, NEG_INF, logits)
  ascending = jnp.sort(logits, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  removed = (cumulative <= (1 - top_p)[:, None]).at[:, -1].set(False)
  threshold = jnp.take_along_axis(ascending, jnp.sum(removed, axis=-1, keepdims=True), axis=-1)
  return jnp.where(logits < threshold, NEG_INF, logits)


def choose(logits: jax.Array, rng: jax.Array, do_sample: jax.Array, temperature: jax.Array,
           top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """int32 [B]: argmax where not do_sample, else a draw from the warped distribution."""
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sample(_):
    warped = top_k_top_p(logits / temperature[:, None], top_k, top_p)
    sampled = jax.random.categorical(rng, warped, axis=-1).astype(jnp.int32)
    return jnp.where(do_sample, sampled, greedy)

  # The vocabulary sorts of top-k/top-p only run when some row samples.
  return jax.lax.cond(jnp.any(do_sample), sample, lambda _: greedy, None)
