"""The gin-configured training loop: set-up, automatic resume, steps, metrics, evaluation, saves.

`train()` is what `anygpt-train` runs; every argument is bound in gin (see `gin/runs/*.gin`).
A run directory (`model_dir`) holds `config.gin` (the operative config), `checkpoints/`,
`tensorboard/` (event files and `metrics.jsonl`). Starting a run whose directory already has a
checkpoint resumes from the latest one, data iterator included, so an interrupted run and an
uninterrupted one see the same batches and reach the same losses.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import gin
import jax
import numpy as np

from anygpt_jax import distributed
from anygpt_jax import partitioning
from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
from anygpt_jax.model import ModelConfig, Transformer, get_config
from anygpt_jax.training import metrics as metrics_lib
from anygpt_jax.training import optimizer as optimizer_lib
from anygpt_jax.training.evaluation import Evaluator
from anygpt_jax.training.input import TrainInput, to_global_batch
from anygpt_jax.training.train_state import TrainState, abstract_train_state, train_state_shardings
from anygpt_jax.training.trainer import Trainer
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.weights.warm_start import warm_start_params  # noqa: F401  (registers the gin configurable)


class NonFiniteError(RuntimeError):
  """Too many steps in a row had a non-finite loss or gradient."""


@gin.configurable
def model_config(name: str = gin.REQUIRED, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
  """A named model configuration (`anygpt_jax.model.get_config`) with fields replaced."""
  return get_config(name, **dict(overrides or {}))


@gin.configurable
def vocabulary_layout(text_vocab_size: int | None = None, sentencepiece_model: str | None = None,
                      chat_tokens: bool = False, pad_multiple: int = 128) -> VocabularyLayout:
  """The run's vocabulary layout: from a SentencePiece model's piece count, or a given size."""
  if sentencepiece_model:
    import sentencepiece as spm
    pieces = spm.SentencePieceProcessor(model_file=sentencepiece_model).get_piece_size()
    if text_vocab_size not in (None, pieces):
      raise ValueError(f"vocabulary_layout: text_vocab_size={text_vocab_size} but {sentencepiece_model} "
                       f"has {pieces} pieces")
    text_vocab_size = pieces
  if text_vocab_size is None:
    raise ValueError("vocabulary_layout needs text_vocab_size or sentencepiece_model")
  return VocabularyLayout(text_vocab_size=text_vocab_size, chat_tokens=chat_tokens, pad_multiple=pad_multiple)


def _put_params(params: Any, shardings: Any, abstract: Any) -> Any:
  def put(x, sharding, target):
    if isinstance(x, jax.Array) and x.sharding == sharding and x.dtype == target.dtype:
      return x
    x = np.asarray(x).astype(target.dtype)
    if x.shape != target.shape:
      raise ValueError(f"warm start: a parameter of shape {x.shape} where the model has {target.shape}")
    return jax.make_array_from_callback(target.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, params, shardings, abstract)


def _write_text(path: str, text: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {f"train/{k}": float(v) for k, v in jax.device_get(dict(metrics)).items()}


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    model: ModelConfig = gin.REQUIRED,
    layout: VocabularyLayout | None = None,
    data_registration: Callable[[], Any] | None = None,
    train_input: Callable[[], TrainInput] = TrainInput,
    mesh_axes: Mapping[str, int] | None = None,
    num_microbatches: int = 1,
    z_loss: float = 0.0,
    seed: int = 0,
    checkpoint: CheckpointConfig = CheckpointConfig(),
    log_every_steps: int = 10,
    evaluator: Callable[[], Evaluator] | None = None,
    eval_every_steps: int | None = None,
    max_nonfinite_streak: int = 10,
    warm_start: Callable[..., Any] | None = None,
    step_timeout_s: float | None = None,
    stop_after_steps: int | None = None,
    operative_config: str | None = None,
) -> dict[str, float]:
  """Trains to `train_steps`, resuming from `model_dir` when it holds a checkpoint.

  Args:
    model_dir: the run directory.
    train_steps: the total step count (the schedule's length).
    model: the model configuration (its vocabulary is replaced by `layout`'s).
    layout: the vocabulary layout of the data; None takes the registered vocabulary's.
    data_registration: registers the SeqIO tasks and mixtures before the data is read
      (`anygpt_jax.data.pipeline.register_corpora`, bound in gin); its result's vocabulary
      must have the same layout as `layout`.
    train_input: builds this process's `TrainInput`.
    mesh_axes: mesh sizes {'data': -1, 'fsdp': .., 'tensor': ..}; None uses `create_mesh`'s gin
      binding or all devices on 'data'.
    num_microbatches: gradient accumulation steps per batch.
    z_loss: z-loss coefficient.
    seed: parameter initialisation seed.
    checkpoint: when to save and what to keep.
    log_every_steps: TensorBoard/console period.
    evaluator: builds the held-out evaluator (None: no evaluation).
    eval_every_steps: evaluation period.
    max_nonfinite_streak: this many skipped steps in a row stop the run (NonFiniteError).
    warm_start: returns initial parameters (numpy or placed jax arrays) given `config=`,
      `layout=` and `abstract_params=` (e.g. `warm_start_params`); used only when the run
      directory has no checkpoint yet.
    step_timeout_s: the watchdog: no step completed within this time ends the process.
    stop_after_steps: stop (after saving) once the step reaches this, before train_steps;
      the schedule still spans train_steps (for staged or time-sliced runs).
    operative_config: the gin text to store; default `gin.operative_config_str()`.

  Returns:
    The last logged scalars.
  """
  process_index = jax.process_index()
  started = time.perf_counter()
  registration = data_registration() if data_registration is not None else None
  registered_vocabulary = getattr(registration, "vocabulary", None)
  if registered_vocabulary is not None:
    if layout is None:
      layout = registered_vocabulary.layout
    elif registered_vocabulary.layout != layout:
      raise ValueError(f"train.layout {layout} differs from the registered data's vocabulary layout "
                       f"{registered_vocabulary.layout}: the model and the data must share one vocabulary")
  if layout is None:
    raise ValueError("train needs a vocabulary layout: bind train.layout or train.data_registration")
  config = model.with_vocabulary(layout)
  transformer = Transformer(config)
  mesh = partitioning.create_mesh(mesh_axes) if mesh_axes is not None else partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  batch_sharding = partitioning.data_sharding(mesh)
  # The schedule always spans the run's train_steps (learning_rate_schedule's other arguments in gin).
  learning_rate = optimizer_lib.learning_rate_schedule(total_steps=train_steps)
  optimizer = optimizer_lib.make_optimizer(learning_rate=learning_rate)
  trainer = Trainer(transformer, optimizer, learning_rate, layout, mesh, batch_sharding,
                    lambda: partitioning.use_mesh(mesh, rules), num_microbatches=num_microbatches, z_loss=z_loss)

  data = train_input()
  sequence_length = data.sequence_length
  batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if data.batch_size % (batch_ways * num_microbatches):
    raise ValueError(f"batch size {data.batch_size} must be a multiple of the mesh's data x fsdp = {batch_ways} "
                     f"devices times num_microbatches={num_microbatches}; change BATCH_SIZE or the mesh "
                     f"({dict(mesh.shape)})")
  with partitioning.use_mesh(mesh, rules):
    boxed = partitioning.abstract_params(transformer, (1, min(sequence_length, 8)))
    param_shardings = partitioning.logical_to_sharding(boxed, mesh, rules)
  params_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
  state_shardings = train_state_shardings(optimizer, params_abstract, param_shardings, mesh)

  checkpoints = Checkpoints(model_dir, checkpoint)
  watchdog = distributed.StepWatchdog(step_timeout_s)
  t0 = time.perf_counter()
  if checkpoints.latest_step() is not None:
    restored = checkpoints.restore(abstract_train_state(optimizer, params_abstract, state_shardings),
                                   iterators=data.iterators)
    if restored.layout is not None and restored.layout.vocab_size != layout.vocab_size:
      raise ValueError(f"{model_dir} was trained with a vocabulary of {restored.layout.vocab_size} rows, this "
                       f"configuration has {layout.vocab_size}")
    state = restored.state
    logging.info("resumed %s from step %d in %.1f s", model_dir, restored.step, time.perf_counter() - t0)
    print(f"[anygpt-train] resumed from step {restored.step} of {model_dir}", flush=True)
  else:
    if warm_start is not None:
      params = _put_params(warm_start(config=config, layout=layout, abstract_params=jax.tree.map(
          lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), params_abstract, param_shardings)),
                           param_shardings, params_abstract)
    else:
      params, _ = partitioning.init_params(transformer, jax.random.key(seed), mesh, rules,
                                           (1, min(sequence_length, 8)))
    opt_state = jax.jit(optimizer.init, out_shardings=state_shardings.opt_state)(params)
    state = TrainState.create(params, opt_state)
    state = jax.device_put(state, state_shardings)

  step_fn = trainer.jit_train_step(state_shardings)
  eval_fn = trainer.jit_eval_sums(param_shardings) if evaluator is not None else None
  the_evaluator = evaluator() if evaluator is not None else None
  # Every configurable of the run has been called by now, so the operative config is complete.
  operative = operative_config if operative_config is not None else gin.operative_config_str()
  _write_text(os.path.join(model_dir, "config.gin"), operative)
  _write_text(os.path.join(model_dir, "vocabulary_layout.json"), json.dumps(layout.to_json_dict(), indent=1))
  writer = metrics_lib.MetricsWriter(os.path.join(model_dir, "tensorboard"))
  throughput = metrics_lib.Throughput(config.flops_per_token(sequence_length), metrics_lib.peak_flops())

  step = first_step = int(jax.device_get(state.step))
  last_step = train_steps if stop_after_steps is None else min(train_steps, stop_after_steps)
  last_scalars: dict[str, float] = {}
  try:
    while step < last_step:
      batch = to_global_batch(data.next_local_batch(), batch_sharding)
      state, step_metrics = step_fn(state, batch)
      step += 1
      scalars = _scalars(step_metrics)  # waits for the step: keeps timing and the streak check exact
      watchdog.kick()
      if process_index == 0 and step == first_step + 1:
        print(f"[anygpt-train] step {step} done {time.perf_counter() - started:.1f} s after start "
              f"(set-up, {'restore, ' if first_step else ''}compilation and the step)", flush=True)
      scalars.update({f"perf/{k}": v for k, v in throughput.update(scalars["train/target_tokens"]).items()})
      streak = int(scalars["train/nonfinite_streak"])
      # Skipped steps are always logged: they are rare and one wants to see each.
      if step % log_every_steps == 0 or step == last_step or step == 1 or streak > 0:
        writer.write(step, scalars)
        if process_index == 0:
          print(metrics_lib.console_line(step, scalars), flush=True)
      if streak >= max_nonfinite_streak:
        checkpoints.wait_until_finished()
        good = checkpoints.latest_step()
        raise NonFiniteError(
            f"step {step}: {streak} steps in a row had a non-finite loss or gradient (limit "
            f"max_nonfinite_streak={max_nonfinite_streak}); stopping. The last good checkpoint is step "
            f"{good} in {checkpoints.directory}. Lower the learning rate or inspect the data near this step.")
      if (the_evaluator is not None and eval_every_steps and
          (step % eval_every_steps == 0 or step == last_step)):
        watchdog.pause()
        eval_scalars = the_evaluator.evaluate(eval_fn, state.params, batch_sharding)
        writer.write(step, eval_scalars)
        scalars.update(eval_scalars)
        watchdog.resume()
      # Never save inside a streak of skipped steps: the last checkpoint stays a good one.
      if streak == 0 and (checkpoints.should_save(step) or step == last_step):
        checkpoints.save(step, state, data.iterators, operative, layout, force=step == last_step)
      last_scalars = scalars
    watchdog.pause()
    checkpoints.wait_until_finished()
  finally:
    watchdog.close()
    writer.flush()
    writer.close()
    checkpoints.close()
  return last_scalars
