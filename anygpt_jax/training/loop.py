"""The gin-configured training loop: set-up, automatic resume, steps, metrics, evaluation, saves.

`train()` is what `anygpt-train` runs; every argument is bound in gin (see `gin/runs/*.gin`). It
builds the run (`build_run`), its first state (`initial_state`), writes the run files
(`write_run_files`) and steps (`run_loop`), calling its hooks between steps (`hooks.py`:
profiling, evaluation and samples, the run file's own, preemption, checkpointing). A restart is
compared with the run's record first (`run_record`): settings that break exact resume are refused
unless accepted on purpose.
A run directory (`model_dir`, local or a URL) holds `config.gin` (the operative config),
`checkpoints/`, `tensorboard/` (event files and `metrics.jsonl`), `compilation_cache/`, while a
trainer runs `trainer.lock` (`run_lock`: one trainer per run directory) and, when
asked for, `profile/`. Starting a run whose directory already has a
checkpoint resumes from the latest one, data iterator included, so an interrupted run and an
uninterrupted one see the same batches and reach the same losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import numpy as np
from etils import epath

from anygpt_jax import distributed
from anygpt_jax import filesystem
from anygpt_jax import partitioning
from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
from anygpt_jax.errors import UserError
from anygpt_jax.model import ModelConfig, get_config
from anygpt_jax.training import benchmark_generations  # noqa: F401  (registers the gin configurable)
from anygpt_jax.training import hooks as hooks_lib
from anygpt_jax.training import metrics as metrics_lib
from anygpt_jax.training import optimizer as optimizer_lib
from anygpt_jax.training import run_lock, run_record
from anygpt_jax.training.assembly import ShardedTrainer, build_trainer
from anygpt_jax.training.bindings import check_types
from anygpt_jax.training.evaluation import Evaluator
from anygpt_jax.training.input import TrainInput, to_global_batch
from anygpt_jax.training.train_state import TrainState, abstract_train_state
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.weights.warm_start import warm_start_params  # noqa: F401  (registers the gin configurable)


class NonFiniteError(UserError, RuntimeError):
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


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {f"train/{k}": float(v) for k, v in jax.device_get(dict(metrics)).items()}


def _console(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


def _schedule_steps(train_steps: int) -> int:
  """`train_steps`, the schedule's length; a different `learning_rate_schedule.total_steps` bound in
  gin is an error rather than silently overridden by the explicit argument."""
  try:
    bound = gin.query_parameter("learning_rate_schedule.total_steps")
  except ValueError:  # not bound: the usual case
    return train_steps
  if isinstance(bound, gin.config.ConfigurableReference):  # a macro such as %TRAIN_STEPS
    bound = bound.scoped_configurable_fn()
  if bound != train_steps:
    raise ValueError(f"learning_rate_schedule.total_steps = {bound} is bound in gin, but the schedule always "
                     f"spans train.train_steps = {train_steps}: drop that binding (train.stop_after_steps stops "
                     "a run early on the full-length schedule)")
  return train_steps


@dataclasses.dataclass
class Run:
  """Everything a run is built from, before any state exists (`build_run`)."""

  model_dir: epath.Path
  train_steps: int
  layout: VocabularyLayout
  config: ModelConfig
  mesh: jax.sharding.Mesh
  optimizer: Any
  data: TrainInput
  checkpoints: Checkpoints
  sharded: ShardedTrainer  # the Trainer, its model, rules and the state's shardings


def build_run(model_dir: str, train_steps: int, model: ModelConfig, layout: VocabularyLayout | None,
              data_registration: Callable[[], Any] | None, train_input: Callable[[], TrainInput],
              mesh_axes: Mapping[str, int] | None, num_microbatches: int, z_loss: float,
              checkpoint: CheckpointConfig) -> Run:
  """Registers the data, builds the mesh, model, optimizer, input and checkpoint manager."""
  model_dir = filesystem.resolve(model_dir)
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
  mesh = partitioning.create_mesh(mesh_axes) if mesh_axes is not None else partitioning.create_mesh()
  # The schedule always spans the run's train_steps (learning_rate_schedule's other arguments in gin).
  learning_rate = optimizer_lib.learning_rate_schedule(total_steps=_schedule_steps(train_steps))
  optimizer = optimizer_lib.make_optimizer(learning_rate=learning_rate)
  data = train_input()
  sharded = build_trainer(config, layout, optimizer, learning_rate, mesh, partitioning.logical_axis_rules(),
                          batch_size=data.batch_size, sequence_length=data.sequence_length,
                          num_microbatches=num_microbatches, z_loss=z_loss)
  return Run(model_dir=model_dir, train_steps=train_steps, layout=layout, config=config, mesh=mesh, optimizer=optimizer,
             data=data, checkpoints=Checkpoints(model_dir, checkpoint), sharded=sharded)


def initial_state(run: Run, seed: int, warm_start: Callable[..., Any] | None, restore_data: bool = True) -> TrainState:
  """The latest checkpoint of the run directory (data iterators included unless `restore_data` is
  False: a data stream changed on purpose starts anew), else a fresh state: warm-started parameters
  or a random initialisation from `seed`."""
  t0 = time.perf_counter()
  sharded = run.sharded
  if run.checkpoints.latest_step() is not None:
    abstract = abstract_train_state(run.optimizer, sharded.params_abstract, sharded.state_shardings)
    restored = run.checkpoints.restore_latest_good(abstract, iterators=run.data.iterators if restore_data else None,
                                                   report=_console)
    if restored.layout is not None and restored.layout.vocab_size != run.layout.vocab_size:
      raise ValueError(f"{run.model_dir} was trained with a vocabulary of {restored.layout.vocab_size} rows, this "
                       f"configuration has {run.layout.vocab_size}")
    logging.info("resumed %s from step %d in %.1f s", run.model_dir, restored.step, time.perf_counter() - t0)
    _console(f"[anygpt-train] resumed from step {restored.step} of {run.model_dir}")
    return restored.state
  if warm_start is not None:
    abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                            sharded.params_abstract, sharded.param_shardings)
    params = _put_params(warm_start(config=run.config, layout=run.layout, abstract_params=abstract),
                         sharded.param_shardings, sharded.params_abstract)
  else:
    params = sharded.random_params(seed)
  return sharded.fresh_state(params)


def hold_run_directory(model_dir, closing: contextlib.ExitStack) -> None:
  """Takes the run directory's lease (`run_lock`; process 0 for every process of the run), released
  when `closing` closes; raises RunDirectoryBusyError naming another trainer that holds it."""
  if jax.process_index() == 0:
    lock = run_lock.RunLock(model_dir, report=_console)
    lock.acquire()
    closing.callback(lock.release)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("run directory lease")


def warn_if_low_on_space(run: Run) -> None:
  """Warns (one line) when a local run directory's disk has room for fewer than two checkpoints of
  the train state: the next save could fail, and a save needs room beside the previous one."""
  if not filesystem.is_local(run.model_dir):
    return
  import shutil
  abstract = abstract_train_state(run.optimizer, run.sharded.params_abstract, run.sharded.state_shardings)
  checkpoint = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract))
  existing = next((p for p in [run.model_dir, *run.model_dir.parents] if p.exists()), None)
  free = shutil.disk_usage(existing).free if existing is not None else None
  if free is not None and free < 2 * checkpoint:
    _console(f"[anygpt-train] warning: {free / 2**20:.0f} MiB free where {run.model_dir} lives, less than two "
             f"checkpoints of this train state ({checkpoint / 2**20:.0f} MiB each): a save may fail")


def write_run_files(run: Run, record: run_record.RunRecord, operative: str, step: int) -> None:
  """`config.gin` (the operative gin config, kept per start in `config_history/`) and
  `vocabulary_layout.json` in the run directory (process 0)."""
  record.note_config(operative, step, report=_console)
  if jax.process_index() == 0:
    filesystem.write_text(run.model_dir / "vocabulary_layout.json", json.dumps(run.layout.to_json_dict(), indent=1))


class Preemption:
  """SIGTERM (a preempted or rescheduled VM) as a stop request the loop checks between steps.

  One process: a Python SIGTERM handler sets a flag. Several processes: JAX's preemption
  service (installed by `jax.distributed.initialize`, which catches SIGTERM itself) agrees on
  one step at which every process stops, so all of them save the same step.
  """

  def __init__(self, enabled: bool = True):
    self.multi_process = jax.process_count() > 1
    self._received = threading.Event()
    self._previous = None
    if enabled and not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._received.set()

  def request_stop(self) -> None:
    """What SIGTERM does (single process); for tests and embedding code."""
    self._received.set()

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; every process must call this at every step."""
    if self.multi_process:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received.is_set()

  def __call__(self, info: hooks_lib.StepInfo) -> hooks_lib.Stop | None:
    """The loop's hook: called at every step (every process must reach each sync point)."""
    if self.should_stop(info.step) and info.step < info.last_step:
      return hooks_lib.Stop("on SIGTERM")
    return None

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


@contextlib.contextmanager
def _compilation_cache_at(path: epath.Path | None):
  """JAX's persistent compilation cache at `path` (local or URL) while the run lasts, so a restart
  reuses compiled programs; the process's previous setting comes back afterwards. None: as is."""
  if path is None:
    yield
    return
  from jax.experimental.compilation_cache import compilation_cache
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", os.fspath(path))
  compilation_cache.reset_cache()  # re-read the setting even if this process compiled before
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()


# Where a run with a URL model_dir keeps compiled programs unless told otherwise. JAX reads and
# writes its cache through epath; through epath's fsspec backend (gcsfs) a gs:// cache
# deadlocked here when orbax compiled a slicing op inside its own event loop, so a URL cache
# directory is used only when asked for (train.compilation_cache_dir).
LOCAL_COMPILATION_CACHE = "~/.cache/anygpt_jax/compilation_cache"


def _compilation_cache_path(configured: str | None, model_dir: epath.Path) -> epath.Path:
  """The configured directory; else `{model_dir}/compilation_cache` for a local run directory and
  `LOCAL_COMPILATION_CACHE` for a URL one."""
  if configured:
    return filesystem.resolve(configured)
  if filesystem.is_local(model_dir):
    return model_dir / "compilation_cache"
  return filesystem.resolve(LOCAL_COMPILATION_CACHE)


class Profile:
  """A `jax.profiler` trace of steps [first, last] into `{model_dir}/profile` (TensorBoard's
  profile plugin reads it); staged locally and copied when the directory is a URL."""

  def __init__(self, directory: epath.Path, steps: tuple[int, int] | None):
    if steps is not None and (len(steps) != 2 or steps[0] > steps[1] or steps[0] < 1):
      raise ValueError(f"train.profile_steps={steps}: expected (first, last) with 1 <= first <= last")
    self.directory = directory
    self.steps = steps
    self._staging = None

  def before_step(self, step: int) -> None:
    """Call before dispatching `step`."""
    if self.steps is not None and step == self.steps[0] and self._staging is None:
      self._staging = filesystem.LocalStaging(self.directory, prefix="anygpt-profile-")
      jax.profiler.start_trace(self._staging.local)

  def __call__(self, info: hooks_lib.StepInfo) -> None:
    """After `info.step` is dispatched: ends the trace once the last traced step is done."""
    if self._staging is not None and info.step >= self.steps[1]:
      jax.block_until_ready(info.state)
      self.close()

  def close(self) -> None:
    if self._staging is not None:
      jax.profiler.stop_trace()
      self._staging.close()
      self._staging = None
      _console(f"[anygpt-train] profile of steps {self.steps[0]}-{self.steps[1]} written to {self.directory}")


@dataclasses.dataclass
class _Pending:
  """A dispatched step whose metrics have not been read yet."""
  step: int
  metrics: Any


def run_loop(run: Run, state: TrainState, *, last_step: int, started: float, hooks: hooks_lib.Hooks,
             log_every_steps: int, max_nonfinite_streak: int, watchdog: distributed.StepWatchdog,
             writer: metrics_lib.MetricsWriter, operative: str) -> dict[str, float]:
  """Steps from the state's step to `last_step`, calling `hooks` after each; returns the last
  step's scalars.

  The host never waits for a step before dispatching the next: step N's metrics are read
  after step N+1 is dispatched, so logging, the non-finite check and the decision to save are
  one step late. A step is saved (`hooks_lib.CheckpointHook`) when the step before it was finite
  (a skipped step leaves the parameters unchanged, so the saved state is still a good one); the
  last step, or the one a hook stopped at, is saved here when it is itself finite. The data
  iterator is not advanced between a step and its save, so a saved step resumes exactly.
  """
  data, checkpoints = run.data, run.checkpoints
  step_fn = run.sharded.trainer.jit_train_step(run.sharded.state_shardings)
  throughput = metrics_lib.Throughput(run.config.flops_per_token(data.sequence_length), metrics_lib.peak_flops())
  eta = metrics_lib.Eta(last_step)
  step = first_step = int(jax.device_get(state.step))

  warned_skipped = [0]

  def report(pending: _Pending) -> dict[str, float]:
    """Reads a finished step's metrics: logs, console, non-finite streak check."""
    scalars = _scalars(pending.metrics)  # waits for that step (the next one is already queued)
    watchdog.kick()
    scalars.update({f"perf/{k}": v for k, v in throughput.update(scalars["train/target_tokens"]).items()})
    remaining = eta.update(pending.step)
    if remaining is not None:
      scalars["perf/eta_s"] = remaining
    scalars["data/skipped_records"] = data.skipped_records
    if data.skipped_records > warned_skipped[0]:  # rare: every new one is worth a line
      warned_skipped[0] = data.skipped_records
      _console(f"[anygpt-train] warning: step {pending.step}: {data.skipped_records} records skipped so far: "
               "the renderer cannot take them (a control token inside text, a code out of range, a pair or chat "
               "without its parts); anygpt-tokenize rejects such records, so remake the shards they came from")
    streak = int(scalars["train/nonfinite_streak"])
    # Skipped steps are always logged: they are rare and one wants to see each.
    if (pending.step % log_every_steps == 0 or pending.step == last_step or pending.step == 1 or streak > 0):
      writer.write(pending.step, scalars)
      writer.flush()
      _console(metrics_lib.console_line(pending.step, scalars))
    if streak >= max_nonfinite_streak:
      checkpoints.wait_until_finished()
      raise NonFiniteError(
          f"step {pending.step}: {streak} steps in a row had a non-finite loss or gradient (limit "
          f"max_nonfinite_streak={max_nonfinite_streak}); stopping. The last good checkpoint is step "
          f"{checkpoints.latest_step()} in {checkpoints.directory}. Lower the learning rate or inspect the data "
          "near this step.")
    return scalars

  pending: _Pending | None = None
  last_scalars: dict[str, float] = {}
  stop = None
  while step < last_step:
    hooks.before_step(step + 1)
    batch = to_global_batch(data.next_local_batch(), run.sharded.trainer.batch_sharding)
    state, step_metrics = step_fn(state, batch)
    step += 1
    if step == first_step + 1:
      jax.block_until_ready(step_metrics)  # once: the time to the first step is worth knowing
      _console(f"[anygpt-train] step {step} done {time.perf_counter() - started:.1f} s after start "
               f"(set-up, {'restore, ' if first_step else ''}compilation and the step)")
    checkpoints.raise_if_save_failed()  # a background save that failed stops the run now
    previous_finite = True  # the state a run starts or resumes from is a good one
    if pending is not None:
      last_scalars = report(pending)
      previous_finite = last_scalars["train/nonfinite_streak"] == 0
    pending = _Pending(step, step_metrics)
    watchdog.pause()
    stop = hooks.after_step(hooks_lib.StepInfo(step, last_step, state, run, writer, previous_finite))
    watchdog.resume()
    if stop is not None:
      break
  if pending is not None:
    last_scalars = report(pending)
    if last_scalars["train/nonfinite_streak"] == 0 and pending.step not in checkpoints.all_steps():
      checkpoints.save(pending.step, state, data.iterators, operative, run.layout, force=True)
  hooks.close()
  watchdog.pause()
  checkpoints.wait_until_finished()
  if stop is not None:
    _console(f"[anygpt-train] stopped at step {step} {stop.reason} after saving it; run the same command to resume")
  return last_scalars


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
    checkpoint: CheckpointConfig | None = None,
    log_every_steps: int = 10,
    evaluator: Callable[[], Evaluator] | None = None,
    eval_every_steps: int | None = None,
    max_nonfinite_streak: int = 10,
    warm_start: Callable[..., Any] | None = None,
    step_timeout_s: float | None = None,
    stop_after_steps: int | None = None,
    operative_config: str | None = None,
    profile_steps: tuple[int, int] | None = None,
    compilation_cache: bool = True,
    compilation_cache_dir: str | None = None,
    stop_on_sigterm: bool = True,
    accept_changes: bool = False,
    hooks: Sequence[Callable[[hooks_lib.StepInfo], Any]] = (),
) -> dict[str, float]:
  """Trains to `train_steps`, resuming from `model_dir` when it holds a checkpoint.

  Args:
    model_dir: the run directory: a local path (relative to the working directory) or a URL
      such as `gs://bucket/run`.
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
    checkpoint: when to save and what to keep; None: `CheckpointConfig()` with its gin bindings.
    log_every_steps: TensorBoard/console period.
    evaluator: builds the held-out evaluator (None: no evaluation).
    eval_every_steps: evaluation period (and the last step).
    max_nonfinite_streak: this many skipped steps in a row stop the run (NonFiniteError).
    warm_start: returns initial parameters (numpy or placed jax arrays) given `config=`,
      `layout=` and `abstract_params=` (e.g. `warm_start_params`); used only when the run
      directory has no checkpoint yet.
    step_timeout_s: the watchdog: no step completed within this time ends the process.
    stop_after_steps: stop (after saving) once the step reaches this, before train_steps;
      the schedule still spans train_steps (for staged or time-sliced runs).
    operative_config: the gin text to store; default `gin.operative_config_str()`.
    profile_steps: (first, last): a `jax.profiler` trace of these steps into `{model_dir}/profile`.
    compilation_cache: use JAX's persistent compilation cache, so a restart does not recompile.
    compilation_cache_dir: where (local or URL); None: `{model_dir}/compilation_cache` for a
      local run directory, `LOCAL_COMPILATION_CACHE` for a URL one.
    stop_on_sigterm: on SIGTERM, save the current step and return (the same command resumes).
    accept_changes: resume although settings that break exact resume changed (`run_record`): the
      change is recorded from the resumed step, and a changed data stream starts anew there.
    hooks: more hooks (`training/hooks.py`), each called with a `StepInfo` after every `every`-th
      step (its attribute; default 1), after evaluation and before preemption and checkpointing.

  Returns:
    The last logged scalars.
  """
  started = time.perf_counter()
  check_types("train", locals(), {"model_dir": (str, os.PathLike), "train_steps": int, "num_microbatches": int,
                                  "seed": int, "log_every_steps": int, "eval_every_steps": (int, type(None)),
                                  "stop_after_steps": (int, type(None)), "z_loss": (float, int)})
  model_dir = filesystem.resolve(model_dir)
  cache = _compilation_cache_path(compilation_cache_dir, model_dir) if compilation_cache else None
  with _compilation_cache_at(cache), contextlib.ExitStack() as closing:
    hold_run_directory(model_dir, closing)
    run = build_run(model_dir, train_steps, model, layout, data_registration, train_input, mesh_axes,
                    num_microbatches, z_loss, CheckpointConfig() if checkpoint is None else checkpoint)
    closing.callback(run.checkpoints.close)
    warn_if_low_on_space(run)
    watchdog = distributed.StepWatchdog(step_timeout_s)
    closing.callback(watchdog.close)
    preemption = Preemption(stop_on_sigterm)
    closing.callback(preemption.close)
    record = run_record.RunRecord(model_dir, writer=jax.process_index() == 0)
    restart_data = record.check(run_record.run_settings(run.config, run.layout, run.data, num_microbatches),
                                run.checkpoints.latest_step(), accept_changes, report=_console)
    state = initial_state(run, seed, warm_start, restore_data=not restart_data)
    the_evaluator = evaluator() if evaluator is not None else None
    # Every configurable of the run has been called by now, so the operative config is complete.
    operative = operative_config if operative_config is not None else gin.operative_config_str()
    write_run_files(run, record, operative, int(jax.device_get(state.step)))
    writer = metrics_lib.MetricsWriter(model_dir / "tensorboard")
    closing.callback(writer.close)  # after flushing: callbacks run last-in first-out
    closing.callback(writer.flush, sync=True)
    scheduled = hooks_lib.Hooks()
    closing.callback(scheduled.close)  # a trace cut short by an error is still written
    scheduled.add_hook(Profile(model_dir / "profile", tuple(profile_steps) if profile_steps else None))
    if the_evaluator is not None and eval_every_steps:
      scheduled.add_hook(hooks_lib.EvaluationHook(the_evaluator, eval_every_steps, _console))
    for hook in hooks:
      scheduled.add_hook(hook)
    scheduled.add_hook(preemption)
    scheduled.add_hook(hooks_lib.CheckpointHook(run.checkpoints, operative))
    last_step = train_steps if stop_after_steps is None else min(train_steps, stop_after_steps)
    return run_loop(run, state, last_step=last_step, started=started, hooks=scheduled,
                    log_every_steps=log_every_steps, max_nonfinite_streak=max_nonfinite_streak, watchdog=watchdog,
                    writer=writer, operative=operative)
