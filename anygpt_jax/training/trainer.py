"""The jitted train and eval steps: exact gradient accumulation and non-finite step skipping.

Gradient accumulation is exact: every microbatch contributes the *sum* of its per-token
losses and gradients, and the total is divided once by the target tokens of the whole batch,
so M microbatches give the same update as one batch M times larger (up to float rounding),
however unevenly the real tokens fall between them.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from anygpt_jax.data.features import BATCH_FEATURES
from anygpt_jax.training import loss as loss_lib
from anygpt_jax.training.train_state import TrainState
from anygpt_jax.vocabulary.layout import VocabularyLayout

Batch = dict[str, jax.Array]


class Trainer:
  """Builds the train/eval step functions for one model, optimizer and mesh.

  Args:
    model: a flax module called as `model.apply({'params': p}, tokens, positions=...,
      segment_ids=...)` returning float32 logits [B, L, V].
    optimizer: the optax transformation (clipping included).
    learning_rate: the schedule (for the logged learning rate only).
    layout: the vocabulary layout (which target ids are which modality).
    mesh: the device mesh; `batch_sharding` says how a [B, L] batch lies on it.
    batch_sharding: sharding of every batch feature.
    mesh_context: a callable returning a context manager that activates the mesh and the
      logical axis rules while tracing (the partitioning module's `use_mesh`).
    num_microbatches: gradient accumulation steps per batch (1 = none).
    z_loss: z-loss coefficient (0 = off).
    loss_chunk_length: apply the output head and the loss this many positions at a time
      (`loss.chunked_loss_sums`: no full [B, L, V] logits); 0 = full logits; None takes the gin
      binding `loss_tiling.chunk_length`.
  """

  def __init__(self, model: nn.Module, optimizer: optax.GradientTransformation,
               learning_rate: optax.Schedule | float, layout: VocabularyLayout,
               mesh: jax.sharding.Mesh, batch_sharding: NamedSharding,
               mesh_context: Callable[[], Any], num_microbatches: int = 1, z_loss: float = 0.0,
               loss_chunk_length: int | None = None):
    if num_microbatches < 1:
      raise ValueError(f"num_microbatches={num_microbatches} must be at least 1")
    self.model = model
    self.optimizer = optimizer
    self.learning_rate = learning_rate
    self.layout = layout
    self.mesh = mesh
    self.batch_sharding = batch_sharding
    self.mesh_context = mesh_context
    self.num_microbatches = num_microbatches
    self.z_loss = z_loss
    self.loss_chunk_length = loss_lib.loss_tiling() if loss_chunk_length is None else loss_chunk_length

  # --- pure functions ----------------------------------------------------------------------
  def loss_sums(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    """Summed losses of one (micro)batch: see `loss.loss_sums`."""
    if self.loss_chunk_length:
      hidden = self.model.apply({"params": params}, batch["decoder_input_tokens"],
                                positions=batch["decoder_positions"], segment_ids=batch["decoder_segment_ids"],
                                return_hidden=True)
      config = self.model.config
      return loss_lib.chunked_loss_sums(hidden, params["lm_head"]["kernel"], batch["decoder_target_tokens"],
                                        batch["decoder_loss_weights"], self.layout, self.z_loss,
                                        self.loss_chunk_length, config.predictable_vocab_size,
                                        jnp.dtype(config.dtype))
    logits = self.model.apply({"params": params}, batch["decoder_input_tokens"],
                              positions=batch["decoder_positions"],
                              segment_ids=batch["decoder_segment_ids"])
    return loss_lib.loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                              self.layout, self.z_loss)

  def _summed_objective(self, params, batch):
    sums = self.loss_sums(params, batch)
    return sums["cross_entropy"] + sums["z_loss"], sums

  def summed_gradients(self, params: Any, batch: Batch) -> tuple[Any, dict[str, jax.Array]]:
    """Gradients of the *summed* token loss, and the loss sums, over all microbatches."""
    grad_fn = jax.grad(self._summed_objective, has_aux=True)
    if self.num_microbatches == 1:
      return grad_fn(params, batch)
    micro = {k: self._split_microbatches(v) for k, v in batch.items()}

    def accumulate(carry, microbatch):
      grads_acc, sums_acc = carry
      microbatch = jax.lax.with_sharding_constraint(microbatch, self.batch_sharding)
      grads, sums = grad_fn(params, microbatch)
      return (jax.tree.map(jnp.add, grads_acc, grads), jax.tree.map(jnp.add, sums_acc, sums)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zero_sums = jax.tree.map(jnp.zeros_like, jax.eval_shape(self.loss_sums, params, first))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), micro)
    return grads, sums

  def _split_microbatches(self, x: jax.Array) -> jax.Array:
    """[B, L] -> [M, B/M, L], microbatch m taking rows m, m+M, ... so that every device keeps
    its own rows (no data moves) as long as B is a multiple of M x data-parallel devices."""
    batch = x.shape[0]
    if batch % self.num_microbatches:
      raise ValueError(f"batch size {batch} is not a multiple of num_microbatches={self.num_microbatches}")
    x = x.reshape((batch // self.num_microbatches, self.num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step; skipped (state kept, counters advanced) if loss or gradients are not finite."""
    grads, sums = self.summed_gradients(state.params, batch)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / tokens, grads)
    grad_norm = optax.global_norm(grads)
    metrics = loss_lib.summarize(sums)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

    updates, new_opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    applied_steps = state.step - state.skipped_steps
    skipped = jnp.logical_not(finite).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1,
        params=keep_if_finite(new_params, state.params),
        opt_state=keep_if_finite(new_opt_state, state.opt_state),
        skipped_steps=state.skipped_steps + skipped,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    lr = self.learning_rate(applied_steps) if callable(self.learning_rate) else self.learning_rate
    metrics.update(grad_norm=grad_norm, learning_rate=jnp.asarray(lr, jnp.float32),
                   skipped=skipped, skipped_steps=new_state.skipped_steps,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics

  def eval_sums(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    return self.loss_sums(params, batch)

  # --- jitted versions ---------------------------------------------------------------------
  def jit_train_step(self, state_shardings: TrainState) -> Callable:
    """`train_step` compiled for `state_shardings`; the old state's buffers are donated."""
    batch_shardings = {k: self.batch_sharding for k in BATCH_FEATURES}
    replicated = NamedSharding(self.mesh, PartitionSpec())
    jitted = jax.jit(self.train_step, in_shardings=(state_shardings, batch_shardings),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))

    def step(state, batch):
      with self.mesh_context():
        return jitted(state, batch)

    return step

  def jit_eval_sums(self, param_shardings: Any) -> Callable:
    batch_shardings = {k: self.batch_sharding for k in BATCH_FEATURES}
    replicated = NamedSharding(self.mesh, PartitionSpec())
    jitted = jax.jit(self.eval_sums, in_shardings=(param_shardings, batch_shardings), out_shardings=replicated)

    def run(params, batch):
      with self.mesh_context():
        return jitted(params, batch)

    return run
