"""What a run directory is: the settings that fix its state and its data stream, recorded at the first
start (`run_record.json`) and compared at every restart.

A restart that changes one of them cannot resume exactly (another model, vocabulary, mixture,
corpus shards, batch, length, data seed or input sharding): it is refused, naming each changed
setting with its recorded and its new value, unless `train.accept_changes = True` says it is on
purpose; then the change is recorded with the step it applies from, and the data stream starts anew
at that step (the saved iterator position belongs to the old stream). Every other change of the
operative config (learning rate, logging, evaluation) is safe: it is printed and recorded. Each
start's operative config is kept as `config_history/step_{N:08d}.gin`; `config.gin` is the one in
force.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import time
from typing import Any, Mapping

from anygpt_jax import filesystem
from anygpt_jax.errors import UserError

RECORD_FILE = "run_record.json"
HISTORY_DIR = "config_history"
DATA_SETTINGS = ("data.",)  # settings of the data stream: an accepted change restarts the stream


class RunChangedError(UserError, ValueError):
  """A restart with settings that break exact resume; the message names each one."""


def run_settings(config, layout, data, num_microbatches: int) -> dict[str, Any]:
  """The settings exact resume needs unchanged: the model's architecture (`ARCHITECTURE_FIELDS`),
  the vocabulary layout, the data stream (`TrainInput.description`) and the microbatching."""
  from anygpt_jax.model.config import ARCHITECTURE_FIELDS
  model = dataclasses.asdict(config)
  return {"model": {k: model[k] for k in ARCHITECTURE_FIELDS}, "vocabulary": layout.to_json_dict(),
          "data": data.description(), "num_microbatches": num_microbatches}


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'model': {'hidden_size': 64}} -> {'model.hidden_size': 64} (lists stay values)."""
  flat = {}
  for key, value in settings.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _show(value: Any, limit: int = 160) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def changed_settings(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """(setting, recorded value, new value; None where absent) for every flattened setting that differs."""
  a, b = flatten(recorded), flatten(json.loads(json.dumps(now)))  # as JSON stores them (tuples as lists)
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k] != b[k]]


def config_changes(previous: str, operative: str) -> list[str]:
  """The binding lines the new operative config adds or drops (`+ ...` / `- ...`), comments ignored."""
  def lines(text):
    return [l.rstrip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
  return [f"{l[0]} {l[1:]}" for l in difflib.unified_diff(lines(previous), lines(operative), lineterm="", n=0)
          if l[:1] in "+-" and not l.startswith(("+++", "---"))]


class RunRecord:
  """The record of one run directory (`{model_dir}/run_record.json`)."""

  def __init__(self, model_dir, writer: bool = True):
    """`writer`: whether this process writes (process 0 of a multi-process run); every process checks."""
    self.model_dir = filesystem.resolve(model_dir)
    self.path = self.model_dir / RECORD_FILE
    self.writer = writer

  def read(self) -> dict | None:
    return json.loads(self.path.read_text()) if self.path.exists() else None

  def check(self, settings: Mapping[str, Any], resume_step: int | None, accept_changes: bool,
            report=print) -> bool:
    """Compares `settings` with the record before a start at `resume_step` (None: a fresh run).

    Returns whether the data stream must start anew (accepted data changes). Raises
    RunChangedError for unaccepted changes; writes nothing then.
    """
    record = self.read()
    if resume_step is None or record is None:
      self._write({"settings": settings, "changes": [], "created": time.time()})
      return False
    changes = changed_settings(record["settings"], settings)
    if not changes:
      return False
    listed = "; ".join(f"{k}: recorded {_show(a)}, now {_show(b)}" for k, a, b in changes)
    if not accept_changes:
      raise RunChangedError(
          f"{self.model_dir} was made with other settings than these, and resuming at step {resume_step} would "
          f"not continue that run exactly: {listed}. Use the recorded settings, a new run directory, or "
          "--gin.train.accept_changes=True to continue with the change on purpose (it is recorded from step "
          f"{resume_step}).")
    if self.writer:
      report(f"[anygpt-train] continuing at step {resume_step} with changed settings (accepted): {listed}")
    record["changes"] += [{"from_step": resume_step, "setting": k, "was": a, "now": b, "time": time.time()}
                          for k, a, b in changes]
    record["settings"] = settings
    self._write(record)
    return any(k.startswith(DATA_SETTINGS) for k, _, _ in changes)

  def note_config(self, operative: str, step: int, report=print) -> None:
    """Keeps this start's operative config in `config_history/`, says what changed since the last
    start's, and makes it `config.gin`."""
    current = self.model_dir / "config.gin"
    previous = current.read_text() if current.exists() else None
    if previous is not None and previous != operative:
      changes = config_changes(previous, operative)
      if changes:
        if self.writer:
          report(f"[anygpt-train] config changed since the last start (from step {step}): " + "; ".join(changes))
        record = self.read()
        if record is not None:
          record.setdefault("config_changes", []).append({"from_step": step, "lines": changes, "time": time.time()})
          self._write(record)
    if self.writer:
      filesystem.write_text(self.model_dir / HISTORY_DIR / f"step_{step:08d}.gin", operative)
      filesystem.write_text(current, operative)

  def _write(self, record: dict) -> None:
    if self.writer:
      filesystem.write_text(self.path, json.dumps(record, indent=1, sort_keys=True))
