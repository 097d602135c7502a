"""Multi-head and grouped-query self-attention over packed rows.

Every implementation gets the same mask: causal by position in the row, and a token only
sees tokens of its own segment, so packed samples never attend to each other.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.embeddings import rotary_embedding
from anygpt_jax.model.linear import DenseGeneral
from anygpt_jax.model.splash_attention import splash_attention


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """Causal, segment-restricted mask. segment_ids: int32 [B, L] -> bool [B, 1, L, L]."""
  length = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (causal[None] & same_segment)[:, None]


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Reference attention: explicit scores, float32 softmax, grouped heads without copying k/v.

  Args:
    q: [B, T, num_heads, head_dim]; k, v: [B, S, num_kv_heads, head_dim].
    mask: bool [B, 1, T, S], True where attention is allowed.
  Returns:
    [B, T, num_heads, head_dim] in q's dtype.
  """
  b, t, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  q = q.reshape(b, t, num_kv_heads, groups, head_dim)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  # A finite minimum keeps fully masked rows (padding) free of NaNs.
  scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, num_heads, head_dim)


def blockwise_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                               chunk: int) -> jax.Array:
  """`xla_attention` over query blocks of `chunk`, each against the keys up to its end.

  Causality masks every key after a block's last query, so skipping those keys is exact and
  saves almost half the score work and memory at long lengths. Same shapes as xla_attention.
  """
  length = q.shape[1]
  if chunk <= 0 or length <= chunk or length % chunk:
    return xla_attention(q, k, v, mask)
  blocks = []
  for start in range(0, length, chunk):
    end = start + chunk
    blocks.append(xla_attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, :, start:end, :end]))
  return jnp.concatenate(blocks, axis=1)


def fused_attention(q, k, v, mask, implementation: str | None) -> jax.Array:
  """jax.nn.dot_product_attention with the same mask (cuDNN flash when implementation='cudnn')."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               cache_index: jax.Array | None = None) -> jax.Array:
    """x: [B, L, hidden]; positions: int32 [B, L]; mask: bool [B, 1, L, L] (`attention_mask`),
    or for attention='splash' the int32 [B, L] segment ids (the kernel masks blockwise).

    Decoding (cache_index, an int32 scalar, given): k/v are written into the 'cache' collection
    at slots [cache_index, cache_index + L) and the queries attend over all S cache slots;
    mask is then bool [B, 1, L, S] (built by `Transformer` for decoding), whatever the attention kind.
    """
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    head_dim = cfg.resolved_head_dim
    init = nn.initializers.normal(cfg.initializer_range)

    def projection(name, heads, axes):
      return DenseGeneral((heads, head_dim), axes, dtype=dtype, param_dtype=pdtype, kernel_init=init, name=name)

    q = projection("q_proj", cfg.num_heads, ("embed", "heads", "kv"))(x)
    k = projection("k_proj", cfg.num_kv_heads, ("embed", "kv_heads", "kv"))(x)
    v = projection("v_proj", cfg.num_kv_heads, ("embed", "kv_heads", "kv"))(x)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))
    v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))
    # Named so the 'qkv_proj' remat policy can keep them for the backward pass.
    q = checkpoint_name(rotary_embedding(q, positions, cfg.rope_theta), "query_proj")
    k = checkpoint_name(rotary_embedding(k, positions, cfg.rope_theta), "key_proj")
    v = checkpoint_name(v, "value_proj")

    if cache_index is not None:
      k, v = _update_kv_cache(self, k, v, cache_index)
      out = xla_attention(q, k, v, mask)
    elif cfg.attention == "xla":
      out = blockwise_causal_attention(q, k, v, mask, cfg.attention_chunk)
    elif cfg.attention == "splash":
      out = splash_attention(q, k, v, mask)
    else:
      out = fused_attention(q, k, v, mask, "cudnn" if cfg.attention == "cudnn" else None)
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    return DenseGeneral((cfg.hidden_size,), ("heads", "kv", "embed"), in_dims=2, dtype=dtype, param_dtype=pdtype,
                        kernel_init=init, name="o_proj")(out)


_CACHE_AXES = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")


def _update_kv_cache(module: nn.Module, k: jax.Array, v: jax.Array, index: jax.Array):
  """Writes k, v [B, L, kv_heads, head_dim] at cache slot `index`; returns the whole caches [B, S, ...].

  The cache variables take their shape from the first call (`init` with [B, S] tokens).
  """
  zeros = nn.with_logical_partitioning(jnp.zeros, _CACHE_AXES)
  cached_k = module.variable("cache", "cached_key", zeros, k.shape, k.dtype)
  cached_v = module.variable("cache", "cached_value", zeros, v.shape, v.dtype)
  start = (0, index, 0, 0)
  cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), start)
  cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), start)
  return (nn.with_logical_constraint(cached_k.value, _CACHE_AXES),
          nn.with_logical_constraint(cached_v.value, _CACHE_AXES))
