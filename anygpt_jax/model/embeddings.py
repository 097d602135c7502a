"""Token embedding and rotary position embedding (HuggingFace rotate-half layout)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Embed(nn.Module):
  """Token ids -> vectors, the table sharded over ('vocab', 'embed')."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  embedding_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens: int32 [B, L] -> [B, L, features] in `dtype`."""
    table = self.param("embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
                       (self.num_embeddings, self.features), self.param_dtype)
    # Gather the fsdp shards of the table first (FSDP's all-gather before use): looking rows
    # up in a table split along 'embed' over the axis the batch is split on forces XLA to
    # replicate the whole table instead.
    table = nn.with_logical_constraint(table, ("vocab", "activation_embed"))
    embedded = jnp.take(table, tokens, axis=0).astype(self.dtype)
    return nn.with_logical_constraint(embedded, ("activation_batch", "activation_length", "activation_embed"))


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates query or key heads by their positions, HF's rotate-half convention.

  HF's LLaMA pairs dimension i with i + head_dim/2 (not interleaved pairs as Meta's
  checkpoints), so HF weights need no q/k permutation here.

  Args:
    x: [B, L, heads, head_dim].
    positions: int32 [B, L]; restart at 0 for every packed segment.
    theta: RoPE base.
  Returns:
    [B, L, heads, head_dim], dtype of x.
  """
  head_dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, head_dim/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)
