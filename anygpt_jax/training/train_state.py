"""The train state: what a checkpoint holds besides the data iterator."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
  """Parameters, optimizer state and counters, all jax arrays (a pytree orbax saves as is).

  Attributes:
    step: int32 [], batches consumed so far (skipped steps included, so the step number and
      the data position always agree).
    params: the model parameters.
    opt_state: the optax state; its step count advances only on applied (finite) steps.
    skipped_steps: int32 [], steps skipped for a non-finite loss or gradient, in total.
    nonfinite_streak: int32 [], how many of the latest steps in a row were skipped.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  skipped_steps: jax.Array
  nonfinite_streak: jax.Array

  @classmethod
  def create(cls, params: Any, opt_state: Any) -> "TrainState":
    # Three distinct buffers: the train step donates the state, and one buffer may not be donated twice.
    zero = lambda: jnp.zeros((), jnp.int32)
    return cls(step=zero(), params=params, opt_state=opt_state, skipped_steps=zero(), nonfinite_streak=zero())


def optimizer_state_shardings(optimizer: optax.GradientTransformation, params_abstract: Any,
                              param_shardings: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shardings of `optimizer.init(params)`: moments follow their parameter, scalars are replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_abstract = jax.eval_shape(optimizer.init, params_abstract)
  return optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, opt_abstract, param_shardings,
      transform_non_params=lambda _: replicated)


def train_state_shardings(optimizer: optax.GradientTransformation, params_abstract: Any,
                          param_shardings: Any, mesh: jax.sharding.Mesh) -> TrainState:
  replicated = NamedSharding(mesh, PartitionSpec())
  return TrainState(
      step=replicated,
      params=param_shardings,
      opt_state=optimizer_state_shardings(optimizer, params_abstract, param_shardings, mesh),
      skipped_steps=replicated,
      nonfinite_streak=replicated)


def abstract_train_state(optimizer: optax.GradientTransformation, params_abstract: Any,
                         shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying `shardings`: the restore target of a checkpoint on any mesh."""
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  abstract = TrainState(step=scalar, params=params_abstract,
                        opt_state=jax.eval_shape(optimizer.init, params_abstract),
                        skipped_steps=scalar, nonfinite_streak=scalar)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
