"""Causal, segment-masked attention with the Pallas TPU splash attention kernel.

`jax.experimental.pallas.ops.tpu.splash_attention` computes attention block by block (flash
attention with a block-sparse mask): the [L, L] scores never exist, and blocks above the causal
diagonal are skipped. Packed rows use its `SegmentIds`: a token sees only earlier tokens of its
own segment, the same mask as `attention.attention_mask`.

Where it runs: the kernel is lowered for TPUs. When the step is traced for any other platform
(the CPU of a development machine, judged from the mesh in context or JAX's default backend)
the same kernel runs in Pallas *interpret mode*, slowly but exactly, which is how the tests
compare it with the XLA reference. Ahead-of-time compilation for a TPU topology on a CPU
machine traces for TPU devices, so it compiles the real kernel.

Sharding: a Pallas call cannot be partitioned by XLA, so under a mesh the kernel runs in
`jax.shard_map` on each device's rows and heads (batch over the rules' 'activation_batch' axes,
heads over 'activation_heads'); the length axis must not be sharded.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec

# Row lengths are padded to a multiple of this (the kernel's smallest block); padded positions
# get a segment id no real token has, so they are invisible to real queries.
_BLOCK_ALIGN = 128
_MAX_BLOCK = 512
_PAD_SEGMENT = -1


def _target_platform() -> str:
  """The platform being traced for: the mesh in context, else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def padded_length(length: int) -> int:
  """The row length the kernel runs on: `length` rounded up to a multiple of 128."""
  return -(-length // _BLOCK_ALIGN) * _BLOCK_ALIGN


def block_size(length: int) -> int:
  """The kernel's query and key block for a padded length: 512, 256 or 128, whichever divides."""
  return next(b for b in (_MAX_BLOCK, 256, _BLOCK_ALIGN) if length % b == 0)


def _kernel(num_heads: int, length: int, is_mqa: bool, interpret: bool):
  """A splash kernel for one example: causal mask, blocks of up to 512."""
  block = block_size(length)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((length, length)) for _ in range(num_heads)])
  make = splash.make_splash_mqa if is_mqa else splash.make_splash_mha
  return make(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q, k, v, segment_ids, interpret: bool):
  """Splash attention of local shards. q: [B, L, H, D]; k, v: [B, L, K, D]; segment_ids: [B, L]."""
  batch, length, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
  # [B, L, K, G, D] -> [B, K, G, L, D]; k, v: [B, K, L, D].
  q = q.reshape(batch, length, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  ids = jax.vmap(lambda s: splash.SegmentIds(q=s, kv=s))(segment_ids)
  if groups == 1:
    kernel = _kernel(num_heads, length, is_mqa=False, interpret=interpret)
    out = jax.vmap(kernel)(q[:, :, 0], k, v, segment_ids=ids)[:, :, None]  # [B, K, 1, L, D]
  else:
    # Grouped-query attention: one multi-query kernel per kv head (its `groups` query heads).
    kernel = _kernel(groups, length, is_mqa=True, interpret=interpret)
    per_kv_head = jax.vmap(lambda q_, k_, v_, ids_: kernel(q_, k_, v_, segment_ids=ids_), (0, 0, 0, None))
    out = jax.vmap(per_kv_head)(q, k, v, ids)  # [B, K, G, L, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, num_heads, head_dim)


def _axes_size(mesh, axes) -> int:
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for axis in axes:
    size *= mesh.shape[axis]
  return size


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Causal attention within segments, no [L, L] array.

  Args:
    q: [B, L, num_heads, head_dim]; k, v: [B, L, num_kv_heads, head_dim] (unscaled q).
    segment_ids: int32 [B, L]; tokens attend to earlier tokens of the same id (0 = padding).
  Returns:
    [B, L, num_heads, head_dim] in q's dtype.
  """
  length = q.shape[1]
  padded = padded_length(length)
  if padded != length:
    pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - length)), constant_values=_PAD_SEGMENT)
  segment_ids = segment_ids.astype(jnp.int32)
  interpret = _target_platform() != "tpu"
  local = functools.partial(_local_attention, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    qs = nn.logical_to_mesh_axes(("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    kvs = nn.logical_to_mesh_axes(("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))
    if qs[1] is not None:
      raise ValueError(f"attention='splash' cannot shard the length axis (activation_length -> {qs[1]}); "
                       "use attention='xla' or map activation_length to None")
    # A dimension the mesh axes do not divide (a batch of 1 at initialisation) stays whole.
    fit = lambda axes, dim: axes if axes is not None and dim % _axes_size(mesh, axes) == 0 else None
    batch_axes = fit(qs[0], q.shape[0])
    qs = PartitionSpec(batch_axes, None, fit(qs[2], q.shape[2]), None)
    kvs = PartitionSpec(batch_axes, None, fit(kvs[2], k.shape[2]), None)
    ids_spec = PartitionSpec(batch_axes, None)
    local = jax.shard_map(local, mesh=mesh, in_specs=(qs, kvs, kvs, ids_spec), out_specs=qs, check_vma=False)
  out = local(q, k, v, segment_ids)
  return out[:, :length]
