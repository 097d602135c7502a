"""A dense layer over named multi-dimensional kernels (q/k/v/o projections, MLP, head)."""

from __future__ import annotations

import math
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
    # As one 2-D GEMM: XLA's CPU backend turns the weight gradient of a contraction over
    # several batch-like dimensions into a slow loop (10x here), while every backend runs a
    # plain [tokens, in] x [in, out] product at full speed.
    lead_shape = x.shape[:x.ndim - self.in_dims]
    x2d = x.reshape((math.prod(lead_shape), math.prod(in_shape))).astype(self.dtype)
    k2d = kernel.reshape((math.prod(in_shape), math.prod(self.features))).astype(self.dtype)
    return jnp.dot(x2d, k2d).reshape(tuple(lead_shape) + tuple(self.features))
