"""A dense layer over named multi-dimensional kernels (q/k/v/o projections, MLP, head)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class DenseGeneral(nn.Module):
  """Contracts the last `in_dims` input dimensions with a kernel of shape in_shape + features.

  Attributes:
    features: output dimensions (e.g. (num_heads, head_dim)).
    kernel_axes: logical axis names of the kernel, one per kernel dimension.
    in_dims: how many trailing input dimensions are contracted.
  """

  features: Sequence[int]
  kernel_axes: Sequence[str]
  in_dims: int = 1
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., *in_shape] -> [..., *features] in `dtype`."""
    in_shape = x.shape[x.ndim - self.in_dims:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    if len(self.kernel_axes) != len(kernel_shape):
      raise ValueError(f"{self.name}: {len(self.kernel_axes)} kernel axes {tuple(self.kernel_axes)} "
                       f"for a kernel of shape {kernel_shape}")
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
                        kernel_shape, self.param_dtype)
    contract_x = tuple(range(x.ndim - self.in_dims, x.ndim))
    contract_k = tuple(range(self.in_dims))
    return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), ((contract_x, contract_k), ((), ())))
