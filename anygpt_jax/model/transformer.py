"""The LLaMA-2 decoder over AnyGPT's expanded vocabulary."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from anygpt_jax.model.attention import Attention, attention_mask
from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.embeddings import Embed
from anygpt_jax.model.linear import DenseGeneral
from anygpt_jax.model.mlp import MLP
from anygpt_jax.model.normalization import RMSNorm

_RESIDUAL_AXES = ("activation_batch", "activation_length", "activation_embed")

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
}


class DecoderLayer(nn.Module):
  """Pre-norm attention and SwiGLU blocks with residuals."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache_index=None):
    """x: [B, L, hidden]; mask: bool [B, 1, L, L] -> ([B, L, hidden], None), an nn.scan body.

    cache_index: None, or the int32 scalar cache slot of x's first token when decoding.
    """
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name=name)
    x = nn.with_logical_constraint(x, _RESIDUAL_AXES)
    h = x + Attention(cfg, name="self_attn")(norm("input_layernorm")(x), positions, mask, cache_index)
    h = nn.with_logical_constraint(h, _RESIDUAL_AXES)
    out = h + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(h))
    return nn.with_logical_constraint(out, _RESIDUAL_AXES), None


def _layer_class(cfg: ModelConfig):
  if cfg.remat_policy == "none":
    return DecoderLayer
  # Under scan the loop already stops CSE from undoing the remat.
  return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


class Transformer(nn.Module):
  """LLaMA-2: embedding, `num_layers` decoder layers, final norm, untied output head.

  Parameter names follow HuggingFace's `LlamaForCausalLM` (embed_tokens, layers,
  self_attn.q_proj, mlp.gate_proj, input_layernorm, norm, lm_head) so conversion is a
  rename plus transposes.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, return_hidden: bool = False,
               decode: bool = False, last_only: bool = False) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: int32 [B, L].
      positions: int32 [B, L], restarting at 0 per packed segment; default 0..L-1.
      segment_ids: int32 [B, L]; tokens attend only within their segment. Default: one segment.
      return_hidden: return the final norm's output [B, L, hidden] (compute dtype) instead, for a
        loss that applies the output head (`params['lm_head']['kernel']`) in chunks.
      decode: run against a key/value cache (the mutable 'cache' collection, created by `init`
        with decode=True on [B, S] tokens): the tokens go into cache slots [i, i + L), i the
        cache's own index, and attend causally to every earlier slot of their segment.
      last_only: the logits of the last position only, [B, 1, vocab_size]: all a prefill needs,
        and the head is a vocabulary-wide matmul per position (as costly as every layer together
        on a small model with AnyGPT's 49418 rows).
    Returns:
      float32 [B, L, vocab_size]; rows at or above real_vocab_size hold a large negative value.
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    cache_index = None
    if decode:
      mask, cache_index = self._decode_mask(segment_ids)
    elif cfg.attention == "splash":
      mask = segment_ids  # the kernel masks blockwise from the segment ids
    else:
      mask = attention_mask(segment_ids)  # built once, shared by every layer

    x = Embed(cfg.vocab_size, cfg.hidden_size, dtype, jnp.dtype(cfg.param_dtype),
              nn.initializers.normal(cfg.initializer_range), name="embed_tokens")(tokens)
    layer = _layer_class(cfg)
    if cfg.scan_layers:
      layers = nn.scan(layer, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = layers(cfg, name="layers")(x, positions, mask, cache_index)
    else:
      for i in range(cfg.num_layers):
        x, _ = layer(cfg, name=f"layers_{i}")(x, positions, mask, cache_index)

    x = RMSNorm(cfg.rms_norm_eps, dtype, jnp.dtype(cfg.param_dtype), name="norm")(x)
    if return_hidden and not self.is_initializing():
      return x
    if last_only:
      x = x[:, -1:]
    logits = DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
                          kernel_init=nn.initializers.normal(cfg.initializer_range), name="lm_head")(x)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32),
                                        ("activation_batch", "activation_length", "activation_vocab"))
    return mask_padded_vocab(logits, cfg.predictable_vocab_size)

  def _decode_mask(self, segment_ids: jax.Array):
    """(bool [B, 1, L, S] mask over the cache slots, int32 index of the first new slot).

    Keeps the segment id of every cache slot (0 for left padding) and the next free slot in
    the 'cache' collection, so each call sees the whole history.
    """
    zeros = nn.with_logical_partitioning(jnp.zeros, ("activation_batch", "activation_length"))
    slots = self.variable("cache", "segment_ids", zeros, segment_ids.shape, jnp.int32)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    start = index.value
    slots.value = jax.lax.dynamic_update_slice(slots.value, segment_ids.astype(jnp.int32), (0, start))
    index.value = start + segment_ids.shape[1]
    query_slot = start + jnp.arange(segment_ids.shape[1])
    causal = jnp.arange(slots.value.shape[1])[None, :] <= query_slot[:, None]
    same_segment = segment_ids[:, :, None] == slots.value[:, None, :]
    return (causal[None] & same_segment)[:, None], start


def mask_padded_vocab(logits: jax.Array, real_vocab_size: int) -> jax.Array:
  """Sets logits of padding rows (ids >= real_vocab_size) to a large negative: never predicted."""
  if real_vocab_size >= logits.shape[-1]:
    return logits
  valid = jnp.arange(logits.shape[-1]) < real_vocab_size
  return jnp.where(valid, logits, jnp.asarray(-1e9, logits.dtype))
