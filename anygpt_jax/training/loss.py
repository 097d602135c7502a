"""Next-token loss normalised by the real target tokens, z-loss, per-modality loss and accuracy.

Everything here returns *sums* (never means) so that microbatches, devices and hosts add
up exactly; the trainer divides by the summed target-token count once, at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from anygpt_jax.data.pipeline import MODALITY_INDEX, target_modality
from anygpt_jax.vocabulary.layout import VocabularyLayout

# The data pipeline's modality indices: 0 text (role and chat markers too), 1 image, 2 speech, 3 music.
MODALITIES = tuple(sorted(MODALITY_INDEX, key=MODALITY_INDEX.get))


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
    float32 scalars `cross_entropy`, `z_loss`, `correct`, `tokens`, and float32 [4] arrays
    `modality_cross_entropy`, `modality_correct`, `modality_tokens` (text, image, speech, music).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  cross_entropy = (log_z - target_logit) * weights
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
  one_hot_modality = jax.nn.one_hot(target_modality(targets, layout), len(MODALITIES), dtype=jnp.float32)
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
  for i, name in enumerate(MODALITIES):
    count = sums["modality_tokens"][i]
    safe = jnp.maximum(count, 1.0)
    out[f"{name}/loss"] = jnp.where(count > 0, sums["modality_cross_entropy"][i] / safe, jnp.nan)
    out[f"{name}/accuracy"] = jnp.where(count > 0, sums["modality_correct"][i] / safe, jnp.nan)
    out[f"{name}/tokens"] = count
  return out
