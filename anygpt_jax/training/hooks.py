"""What the training loop runs between steps: hooks, each with an `every` (Levanter's `add_hook` shape).

The loop dispatches steps and reads their metrics; everything else is a hook. After each
dispatched step it calls every due hook in order with a `StepInfo`, with the step watchdog paused
(a hook is not a training step, and an evaluation or generation may take minutes):

  profiling (`Profile`), held-out evaluation and samples (`EvaluationHook`), the run file's own
  hooks (`train.hooks`: e.g. `ParameterNorms` here, benchmark answers with
  `benchmark_generations.BenchmarkGenerations`), preemption (`Preemption`), checkpointing
  (`CheckpointHook`).

A run file adds a hook without editing the loop: any gin-configurable callable taking a `StepInfo`,
its period in an `every` attribute (default 1) and `at_last = True` to be called at the last step
too, e.g. the parameter norms this module ships:

  train.hooks = [@ParameterNorms()]
  ParameterNorms.every = 100

A hook that returns a `Stop` ends the run after this step: the hooks after it are not called, and
the loop saves the step (if finite) as it saves the last one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import gin
import jax
import optax


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """What a hook sees after step `step` is dispatched (its metrics may still be computing).

  Attributes:
    step: the step just dispatched (1-based: the state's step counter after it).
    last_step: the step this run stops at.
    state: the `TrainState` after `step` (device arrays; reading one waits for the step).
    run: the `loop.Run` (model_dir, mesh, data, checkpoints, the sharded trainer).
    writer: the run's `metrics.MetricsWriter` (TensorBoard).
    previous_finite: step - 1 had a finite loss and gradient, so `state` is a good one to save.
  """

  step: int
  last_step: int
  state: Any
  run: Any
  writer: Any
  previous_finite: bool = True

  @property
  def is_last(self) -> bool:
    return self.step == self.last_step


@dataclasses.dataclass(frozen=True)
class Stop:
  """A hook's request to end the run after this step; `reason` completes "stopped at step N ..."."""

  reason: str


@dataclasses.dataclass(frozen=True)
class ScheduledHook:
  """`fn` called after every `every`-th step, and at the last step when `at_last`."""

  fn: Callable[[StepInfo], Stop | None]
  every: int = 1
  at_last: bool = False

  def due(self, step: int, last_step: int) -> bool:
    return step % self.every == 0 or (self.at_last and step == last_step)


class Hooks:
  """The loop's hooks in the order they run."""

  def __init__(self):
    self.scheduled: list[ScheduledHook] = []
    self._closed = False

  def add_hook(self, fn: Callable[[StepInfo], Stop | None], every: int | None = None,
               at_last: bool | None = None) -> None:
    """Adds `fn` after the hooks already added; `every` and `at_last` default to `fn`'s own
    attributes of those names, else 1 and False."""
    if not callable(fn):
      raise TypeError(f"hook {fn!r} is not callable: a hook is a callable taking a StepInfo")
    every = getattr(fn, "every", 1) if every is None else every
    at_last = getattr(fn, "at_last", False) if at_last is None else at_last
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
      raise ValueError(f"hook {_name(fn)}: every={every!r}: expected a step count >= 1")
    self.scheduled.append(ScheduledHook(fn, every, bool(at_last)))

  def before_step(self, step: int) -> None:
    """Lets hooks with a `before_step(step)` method (a profile's start) act before `step` is dispatched."""
    for hook in self.scheduled:
      before = getattr(hook.fn, "before_step", None)
      if before is not None:
        before(step)

  def after_step(self, info: StepInfo) -> Stop | None:
    """Calls the due hooks in order; returns the first `Stop` one of them returned (the rest are skipped)."""
    for hook in self.scheduled:
      if hook.due(info.step, info.last_step):
        result = hook.fn(info)
        if isinstance(result, Stop):
          return result
    return None

  def close(self) -> None:
    """Lets hooks with a `close()` method finish (a profile cut short by an error is still written);
    the first call only."""
    if self._closed:
      return
    self._closed = True
    for hook in self.scheduled:
      close = getattr(hook.fn, "close", None)
      if close is not None:
        close()


def _name(fn: Any) -> str:
  return getattr(fn, "__name__", type(fn).__name__)


class EvaluationHook:
  """Held-out losses per task (`training.evaluation.Evaluator`) and its generated samples."""

  at_last = True

  def __init__(self, evaluator, every: int, console: Callable[[str], None]):
    self.evaluator, self.every, self.console = evaluator, every, console
    self._eval_fn = None

  def __call__(self, info: StepInfo) -> None:
    from anygpt_jax.training import metrics as metrics_lib

    trainer = info.run.sharded.trainer
    if self._eval_fn is None:
      self._eval_fn = trainer.jit_eval_sums(info.run.sharded.param_shardings)
    scalars = self.evaluator.evaluate(self._eval_fn, info.state.params, trainer.batch_sharding)
    info.writer.write(info.step, scalars)
    for line in metrics_lib.eval_console_lines(info.step, scalars):
      self.console(line)
    if self.evaluator.samples is not None:  # generated samples to TensorBoard (training/samples.py)
      self.evaluator.samples.write(info.run, info.step, info.state.params, info.writer, final=info.is_last)


class CheckpointHook:
  """Saves every `CheckpointConfig.save_every_steps` steps, never inside a streak of skipped steps
  (the last checkpoint stays a good one); the loop itself saves the last step."""

  def __init__(self, checkpoints, operative_config: str):
    self.checkpoints, self.operative_config = checkpoints, operative_config
    self.every = checkpoints.config.save_every_steps

  def __call__(self, info: StepInfo) -> None:
    if info.step < info.last_step and info.previous_finite and self.checkpoints.should_save(info.step):
      self.checkpoints.save(info.step, info.state, info.run.data.iterators, self.operative_config, info.run.layout)


@gin.configurable
class ParameterNorms:
  """A hook for run files: the global L2 norm of the parameters, and of each top-level module's, as
  TensorBoard scalars `params/norm` and `params/norm/{module}` (a drifting norm shows a learning
  rate too high or a weight decay too low before the loss does)."""

  def __init__(self, every: int = 100, at_last: bool = True):
    self.every, self.at_last = every, at_last
    self._norms = jax.jit(lambda params: {name: optax.global_norm(tree) for name, tree in params.items()})

  def __call__(self, info: StepInfo) -> None:
    norms = {name: float(value) for name, value in jax.device_get(self._norms(info.state.params)).items()}
    scalars = {f"params/norm/{name}": value for name, value in norms.items()}
    scalars["params/norm"] = math.sqrt(sum(v * v for v in norms.values()))
    info.writer.write(info.step, scalars)
