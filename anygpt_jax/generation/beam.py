"""Beam search for text over the key/value cache (the paper decodes text with 5 beams).

Each request holds `beams` rows of the batch. At every step the alive beams' log-probabilities
(of the processed logits: constraints, repetition penalty, min-new-tokens) are extended by every
id; of the 2 x beams best candidates, those ending in a stop id become finished hypotheses,
scored sum_logprob / generated_length ** length_penalty (generated_length counts the stop id),
and the best `beams` others stay alive. At max_new_tokens the alive beams are finished too. A
request stops early only when no alive beam can still beat its worst kept hypothesis (an exact
bound, so the result equals running to the end). The answer is the best finished hypothesis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from anygpt_jax.generation import constraints as cons
from anygpt_jax.generation import sampling


def _gather_rows(tree, rows: jax.Array, scanned: bool):
  """Picks batch rows `rows` (int32 [N]) of every cache leaf (the batch axis is 1 under scan)."""

  def pick(path, x):
    if x.ndim == 0:
      return x
    names = [getattr(k, "key", None) for k in path]
    axis = 1 if scanned and "layers" in names else 0
    return jnp.take(x, rows, axis=axis)

  return jax.tree_util.tree_map_with_path(pick, tree)


def search(gen, params, cache, logits, positions, rows, seen, cstate, *, steps: int, beams: int):
  """(sequences int32 [n, steps] with -1 after the end, scores float32 [n]) for n = rows / beams."""
  total, vocab = logits.shape
  n = total // beams
  neg = jnp.float32(-jnp.inf)
  max_new = rows["max_new_tokens"].reshape(n, beams)[:, 0]
  lp = rows["length_penalty"].reshape(n, beams)[:, 0]
  stop_ids = rows["stop_ids"].reshape(n, beams, -1)[:, 0]
  alive_score = jnp.where(jnp.arange(beams)[None] == 0, 0.0, neg) * jnp.ones((n, 1))
  alive_seq = jnp.full((n, beams, steps), -1, jnp.int32)
  fin_score = jnp.full((n, beams), neg)
  fin_seq = jnp.full((n, beams, steps), -1, jnp.int32)
  base = (jnp.arange(n) * beams)[:, None]

  def cond(carry):
    return (carry[0] < steps) & ~jnp.all(carry[1])

  def body(carry):
    step, done, alive_score, alive_seq, fin_score, fin_seq, logits, cache, seen, cstate = carry
    processed = sampling.process_logits(logits, step, rows, seen, cstate, gen.tables)
    logp = jax.nn.log_softmax(processed, axis=-1).reshape(n, beams, vocab)
    flat = (alive_score[:, :, None] + logp).reshape(n, beams * vocab)
    values, index = jax.lax.top_k(flat, 2 * beams)
    source, token = index // vocab, (index % vocab).astype(jnp.int32)
    length = (step + 1).astype(jnp.float32)
    last = (step + 1 >= max_new)[:, None]
    is_stop = jnp.any(token[:, :, None] == stop_ids[:, None, :], axis=-1)
    candidates = jnp.take_along_axis(alive_seq, source[:, :, None], axis=1).at[:, :, step].set(token)

    finished = jnp.where(is_stop | last, values / length ** lp[:, None], neg)
    merged_score = jnp.concatenate([fin_score, finished], axis=1)
    merged_seq = jnp.concatenate([fin_seq, candidates], axis=1)
    fin_score, keep = jax.lax.top_k(merged_score, beams)
    fin_seq = jnp.take_along_axis(merged_seq, keep[:, :, None], axis=1)

    alive_values = jnp.where(is_stop | last, neg, values)
    alive_score, pick = jax.lax.top_k(alive_values, beams)
    alive_seq = jnp.take_along_axis(candidates, pick[:, :, None], axis=1)
    chosen_source = jnp.take_along_axis(source, pick, axis=1)
    chosen_token = jnp.take_along_axis(token, pick, axis=1).reshape(-1)
    rows_from = (base + chosen_source).reshape(-1)

    cache = _gather_rows(cache, rows_from, gen.config.scan_layers)
    seen = seen[rows_from].at[jnp.arange(total), chosen_token].set(True)
    if cstate is not None:
      cstate = cons.advance(gen.tables, jax.tree.map(lambda x: x[rows_from], cstate), chosen_token, jnp)
    logits, cache = gen._next_logits(params, cache, chosen_token, positions + step)

    # No alive beam can beat the worst kept hypothesis: sums only fall, and for length_penalty
    # >= 0 dividing a negative sum by a longer length raises it at most to sum / max_new ** lp.
    best_alive = alive_score[:, 0]
    bound = jnp.maximum(best_alive / length ** lp, best_alive / max_new.astype(jnp.float32) ** lp)
    full = fin_score[:, -1] > neg
    done = done | last[:, 0] | (full & (fin_score[:, -1] >= bound)) | (best_alive == neg)
    return step + 1, done, alive_score, alive_seq, fin_score, fin_seq, logits, cache, seen, cstate

  carry = (jnp.int32(0), jnp.zeros((n,), bool), alive_score, alive_seq, fin_score, fin_seq, logits, cache, seen,
           cstate)
  out = jax.lax.while_loop(cond, body, carry)
  return out[5][:, 0], out[4][:, 0]
