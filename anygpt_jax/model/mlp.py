"""LLaMA's SwiGLU feed-forward block."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.linear import DenseGeneral


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, hidden] -> [B, L, hidden]: down(silu(gate(x)) * up(x))."""
    cfg = self.config
    kwargs = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
    gate = DenseGeneral((cfg.intermediate_size,), ("embed", "mlp"), name="gate_proj", **kwargs)(x)
    up = DenseGeneral((cfg.intermediate_size,), ("embed", "mlp"), name="up_proj", **kwargs)(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
    return DenseGeneral((cfg.hidden_size,), ("mlp", "embed"), name="down_proj", **kwargs)(hidden)
