"""Next-token loss normalised by the real target tokens, z-loss, per-modality loss and accuracy.

Everything here returns *sums* (never means) so that microbatches, devices and hosts add
up exactly; the trainer divides by the summed target-token count once, at the end.
"""

from __future__ import annotations

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from anygpt_jax.vocabulary.layout import CONTENT_KINDS, VocabularyLayout, target_modality


def loss_sums(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    layout: VocabularyLayout,
    z_loss: float = 0.0,
) -> dict[str, jax.Array]:
  """Summed cross entropy, z-loss and accuracy, overall and per target modality.

  Args:
    logits: float32 [B, L, V].
    targets: int32 [B, L] next-token ids.
    weights: int32/float [B, L]; 0 for positions outside the loss (padding, user turns).
    layout: the vocabulary layout that says which ids are which modality.
    z_loss: coefficient of the squared log-partition penalty (PaLM's z-loss); 0 disables it.

  Returns:
    float32 scalars `cross_entropy`, `z_loss`, `correct`, `tokens`, and float32 [K] arrays
    `modality_cross_entropy`, `modality_correct`, `modality_tokens`, one entry per `CONTENT_KINDS`
    (text, then each modality; role and chat markers count as text).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  cross_entropy = (log_z - target_logit) * weights
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
  one_hot_modality = jax.nn.one_hot(target_modality(targets, layout), len(CONTENT_KINDS), dtype=jnp.float32)
  per_modality = lambda x: jnp.einsum("bl,blm->m", x, one_hot_modality)
  return {
      "cross_entropy": cross_entropy.sum(),
      "z_loss": z_loss * jnp.sum(jnp.square(log_z) * weights),
      "correct": correct.sum(),
      "tokens": weights.sum(),
      "modality_cross_entropy": per_modality(cross_entropy),
      "modality_correct": per_modality(correct),
      "modality_tokens": per_modality(weights),
  }


@gin.configurable
def loss_tiling(chunk_length: int = 0) -> int:
  """Tokens of each row per output-head chunk (`chunked_loss_sums`); 0 computes full logits.

  Bind `loss_tiling.chunk_length = 512` in a run or mesh file to never hold [rows, length,
  vocab] fp32 logits at once (with AnyGPT's 49536 rows they are most of a long row's memory).
  """
  if chunk_length < 0:
    raise ValueError(f"loss_tiling.chunk_length={chunk_length} must be >= 0")
  return chunk_length


def chunked_loss_sums(
    hidden: jax.Array,
    head_kernel: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    layout: VocabularyLayout,
    z_loss: float,
    chunk_length: int,
    real_vocab_size: int,
    dtype: jnp.dtype,
) -> dict[str, jax.Array]:
  """`loss_sums` of `hidden @ head_kernel`, computed `chunk_length` positions of every row at a time.

  Each chunk's fp32 logits [B, chunk_length, V] are made, reduced to the sums and dropped; the
  backward pass recomputes them chunk by chunk (the chunk body is rematerialised), so neither
  pass ever holds [B, L, V]. The result equals `loss_sums(full logits)` up to summation order.
  A length that `chunk_length` does not divide is padded with weight-0 positions.

  Args:
    hidden: [B, L, D], the final norm's output (the output head's input).
    head_kernel: [D, V], the output head's kernel (`params['lm_head']['kernel']`).
    targets, weights, layout, z_loss: as `loss_sums`.
    chunk_length: positions per chunk (> 0).
    real_vocab_size: logits of rows at or above it are masked as the model masks them.
    dtype: the matmul dtype (the model's compute dtype).
  """
  from anygpt_jax.model.transformer import mask_padded_vocab

  batch, length, width = hidden.shape
  chunks = -(-length // chunk_length)
  pad = chunks * chunk_length - length
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  # The head is gathered once, outside the loop (it is FSDP-sharded over 'embed'), not per chunk.
  kernel = nn.with_logical_constraint(head_kernel.astype(dtype), (None, "activation_vocab"))
  to_chunks = lambda x: jnp.swapaxes(x.reshape((batch, chunks, chunk_length) + x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk_sums(hidden_c, targets_c, weights_c):
    logits = jnp.dot(hidden_c.reshape(-1, width).astype(dtype), kernel)
    logits = logits.reshape(batch, chunk_length, -1).astype(jnp.float32)
    logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return loss_sums(mask_padded_vocab(logits, real_vocab_size), targets_c, weights_c, layout, z_loss)

  def body(acc, xs):
    sums = chunk_sums(*xs)
    return jax.tree.map(jnp.add, acc, sums), None

  xs = (to_chunks(hidden), to_chunks(targets), to_chunks(weights))
  first = jax.tree.map(lambda x: x[0], xs)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(chunk_sums, *first))
  sums, _ = jax.lax.scan(body, zeros, xs)
  return sums


def summarize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Means from `loss_sums` (summed over any number of microbatches): loss, accuracy, per modality.

  A modality with no target tokens in the batch reports NaN, so that plots show a gap rather
  than a fake zero loss.
  """
  tokens = jnp.maximum(sums["tokens"], 1.0)
  out = {
      "loss": (sums["cross_entropy"] + sums["z_loss"]) / tokens,
      "cross_entropy": sums["cross_entropy"] / tokens,
      "z_loss": sums["z_loss"] / tokens,
      "accuracy": sums["correct"] / tokens,
      "target_tokens": sums["tokens"],
  }
  for i, name in enumerate(CONTENT_KINDS):
    count = sums["modality_tokens"][i]
    safe = jnp.maximum(count, 1.0)
    out[f"{name}/loss"] = jnp.where(count > 0, sums["modality_cross_entropy"][i] / safe, jnp.nan)
    out[f"{name}/accuracy"] = jnp.where(count > 0, sums["modality_correct"][i] / safe, jnp.nan)
    out[f"{name}/tokens"] = count
  return out
