"""`anygpt-eval score --watch MODEL_DIR`: a training run's benchmark answers scored as they appear.

The trainer's `BenchmarkGenerations` hook writes, at each chosen step,

  {model_dir}/benchmarks/step_{step:08d}/{benchmark}/...   the generation stage's layout (`report`)
  {model_dir}/benchmarks/step_{step:08d}/complete.json     last, once every benchmark of the step is written

`watch` scores each complete step that has no `report.json` yet (the caller's `score_step` writes
the report and the run's TensorBoard scalars at that step), then looks again every `poll_s` seconds
while `training()` says the run goes on (the command asks whether the trainer holds the run
directory, `training.run_lock.held`); once it does not, what is left is scored and the watch
ends. So a scorer started beside a run follows it to its end, and one started after it scores
everything in one pass. No JAX: this runs on the scoring box.
"""

from __future__ import annotations

import json
import re
import time
from typing import Callable

from anygpt_jax import filesystem
from anygpt_jax.evaluation import report

BENCHMARKS_DIR = "benchmarks"
COMPLETE_FILE = "complete.json"
_STEP = re.compile(r"^step_(\d{8})$")


def step_directory(model_dir, step: int):
  """`{model_dir}/benchmarks/step_{step:08d}`: an `anygpt-eval` output directory of one step."""
  return filesystem.resolve(model_dir) / BENCHMARKS_DIR / f"step_{step:08d}"


def mark_complete(model_dir, step: int, benchmarks: list[str]) -> None:
  """Written by the trainer once every benchmark of `step` is on file."""
  filesystem.write_text(step_directory(model_dir, step) / COMPLETE_FILE,
                        json.dumps({"step": step, "benchmarks": benchmarks}))


def unscored_steps(model_dir) -> list[tuple[int, str]]:
  """(step, directory) of every complete step without a report, in step order."""
  root = filesystem.resolve(model_dir) / BENCHMARKS_DIR
  if not root.exists():
    return []
  found = []
  for directory in root.iterdir():
    match = _STEP.match(directory.name)
    if match and (directory / COMPLETE_FILE).exists() and not (directory / report.REPORT_JSON).exists():
      found.append((int(match.group(1)), str(directory)))
  return sorted(found)


def watch(model_dir: str, score_step: Callable[[int, str], None], training: Callable[[], bool],
          poll_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> list[int]:
  """Scores every unscored step of `model_dir` with `score_step(step, directory)` until `training()`
  is False and none is left; returns the steps scored, in order."""
  scored = []
  while True:
    running = training()  # asked first: a step the trainer wrote before it stopped is still found
    for step, directory in unscored_steps(model_dir):
      score_step(step, directory)
      scored.append(step)
    if not running:
      return scored
    sleep(poll_s)
