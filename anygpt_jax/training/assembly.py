"""A Trainer put together on a mesh: the one place the training loop and the AOT compile build it.

`build_trainer` makes the Transformer, the Trainer (batch sharding, mesh context, microbatches,
z-loss, loss tiling), the abstract parameters with their shardings from the logical axis rules,
and the train state's shardings. `train()` then fills the state with arrays; `aot` lowers the
same step with abstract arguments for a TPU topology, so what is compiled there is what runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import optax

from anygpt_jax import partitioning
from anygpt_jax.model import ModelConfig, Transformer
from anygpt_jax.training.train_state import TrainState, train_state_shardings
from anygpt_jax.training.trainer import Trainer
from anygpt_jax.vocabulary.layout import VocabularyLayout


@dataclasses.dataclass(frozen=True)
class ShardedTrainer:
  """A Trainer on its mesh with its parameters' and train state's shardings.

  params_abstract: the parameters as a tree of `jax.ShapeDtypeStruct` (no sharding);
  param_shardings: the same tree of `NamedSharding`s; state_shardings: a `TrainState` of shardings;
  init_shape: the [batch, length] of the dummy tokens the parameters are initialised with.
  """

  trainer: Trainer
  transformer: Transformer
  rules: partitioning.LogicalRules
  params_abstract: Any
  param_shardings: Any
  state_shardings: Any
  init_shape: tuple[int, int] = (1, 8)

  def random_params(self, seed: int) -> Any:
    """Parameters initialised from `seed`, each created directly in its shards."""
    params, _ = partitioning.init_params(self.transformer, jax.random.key(seed), self.trainer.mesh, self.rules,
                                         self.init_shape)
    return params

  def fresh_state(self, params: Any) -> TrainState:
    """Step 0 of training from `params`: the optimizer's initial state beside them, all in their shards."""
    opt_state = jax.jit(self.trainer.optimizer.init, out_shardings=self.state_shardings.opt_state)(params)
    return jax.device_put(TrainState.create(params, opt_state), self.state_shardings)


def check_batch(batch_size: int, mesh: jax.sharding.Mesh, num_microbatches: int) -> None:
  """Raises MeshError (a ValueError) unless each microbatch splits evenly over the mesh's data x fsdp devices."""
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % (ways * num_microbatches):
    raise partitioning.MeshError(f"batch size {batch_size} must be a multiple of the mesh's data x fsdp = {ways} devices times "
                     f"num_microbatches={num_microbatches}; change BATCH_SIZE or the mesh ({dict(mesh.shape)})")


def build_trainer(config: ModelConfig, layout: VocabularyLayout, optimizer: optax.GradientTransformation,
                  learning_rate: Any, mesh: jax.sharding.Mesh, rules: partitioning.LogicalRules, *,
                  batch_size: int, sequence_length: int, num_microbatches: int = 1, z_loss: float = 0.0,
                  loss_chunk_length: int | None = None) -> ShardedTrainer:
  """The Trainer of a [batch_size, sequence_length] batch on `mesh` (config: vocabulary applied).

  `loss_chunk_length` None takes the gin binding `loss_tiling.chunk_length`. Raises ValueError
  when the batch does not split over the mesh (`check_batch`).
  """
  check_batch(batch_size, mesh, num_microbatches)
  transformer = Transformer(config)
  trainer = Trainer(transformer, optimizer, learning_rate, layout, mesh, partitioning.data_sharding(mesh),
                    lambda: partitioning.use_mesh(mesh, rules), num_microbatches=num_microbatches, z_loss=z_loss,
                    loss_chunk_length=loss_chunk_length)
  init_shape = (1, min(sequence_length, 8))
  with partitioning.use_mesh(mesh, rules):
    boxed = partitioning.abstract_params(transformer, init_shape)
    param_shardings = partitioning.logical_to_sharding(boxed, mesh, rules)
  params_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
  state_shardings = train_state_shardings(optimizer, params_abstract, param_shardings, mesh)
  return ShardedTrainer(trainer, transformer, rules, params_abstract, param_shardings, state_shardings, init_shape)
