"""A run's orbax `CheckpointManager`: what each step holds and how a run resumes.

Each saved step `{model_dir}/checkpoints/{step}/` holds four items:
  state/   the `TrainState` (params, optimizer state, counters), sharded arrays via orbax;
  data/    the data iterators' states, one file set per input shard (`shard_00000...`),
           written by the process that reads that shard;
  config/  the operative gin config of the run (JSON: {"operative_gin": text});
  layout/  the vocabulary layout (`VocabularyLayout.to_json_dict()`).

Orbax writes a step into a temporary directory and renames it only once every item of every
process is complete, so a process killed during a save leaves the previous step as the latest
usable one (the partial directory is ignored and cleaned up on the next start).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Mapping, Protocol

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath

from anygpt_jax import filesystem
from anygpt_jax.errors import UserError
from anygpt_jax.vocabulary.layout import VocabularyLayout

CHECKPOINT_SUBDIR = "checkpoints"


class StatefulIterator(Protocol):
  """A data iterator whose position can be written to and read from a path prefix."""

  def save_state(self, path: str) -> None: ...

  def restore_state(self, path: str) -> None: ...


def shard_state_name(shard_index: int) -> str:
  return f"shard_{shard_index:05d}"


class IteratorCheckpointHandler(ocp.CheckpointHandler):
  """Saves/restores this process's data iterators, keyed by global input-shard index.

  Saving is synchronous (it runs before the asynchronous part of a save starts): the
  iterator's position must be captured at the step being saved.
  """

  def save(self, directory: epath.Path, args: "IteratorSave") -> None:
    # tf.train.Checkpoint writes local files only as far as this project is concerned (its own
    # gs:// client cannot be pointed at anything but Google's servers, so it is not what runs
    # in tests): stage locally, copy through epath.
    with filesystem.LocalStaging(directory, prefix="anygpt-iterator-") as staging:
      for shard_index, iterator in args.iterators.items():
        iterator.save_state(os.path.join(staging.local, shard_state_name(shard_index)))

  def restore(self, directory: epath.Path, args: "IteratorRestore") -> Mapping[int, StatefulIterator]:
    for shard_index in args.iterators:
      if not (directory / (shard_state_name(shard_index) + ".index")).exists():
        saved = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(
            f"no data iterator state for input shard {shard_index} in {directory} (found {saved}); "
            "a run resumes only with the number of input shards it was saved with")
    if filesystem.is_local(directory):
      local, tmp = os.fspath(directory), None
    else:
      tmp = tempfile.TemporaryDirectory(prefix="anygpt-iterator-")
      local = tmp.name
      filesystem.download_tree(directory, local)
    try:
      for shard_index, iterator in args.iterators.items():
        iterator.restore_state(os.path.join(local, shard_state_name(shard_index)))
    finally:
      if tmp is not None:
        tmp.cleanup()
    return args.iterators

  def metadata(self, directory: epath.Path) -> None:
    return None


@ocp.args.register_with_handler(IteratorCheckpointHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  iterators: Mapping[int, StatefulIterator]


@ocp.args.register_with_handler(IteratorCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  iterators: Mapping[int, StatefulIterator]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When and how a run saves.

  Attributes:
    save_every_steps: save every N steps (and at the last step).
    keep_last: keep the latest K steps...
    keep_every: ...and, in addition, every step that is a multiple of M (None: none).
    async_save: write in a background thread while training goes on.
  """

  save_every_steps: int = 1000
  keep_last: int = 3
  keep_every: int | None = None
  async_save: bool = True


def _pytree_restore(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Restore args placing every array by its target's sharding (which may be another mesh's)."""
  return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=partial)


class CheckpointMismatchError(UserError, ValueError):
  """The run directory's checkpoints were saved by another model configuration than this one."""


class UnrestorableCheckpointsError(UserError, RuntimeError):
  """No checkpoint of the run directory restores; the message names each one and why."""


class CheckpointSaveError(UserError, RuntimeError):
  """A save failed (a full disk, lost access); the message names the step's path and the cause."""


UNRESTORABLE_SUFFIX = ".unrestorable"


def _one_line(error: BaseException, limit: int = 600) -> str:
  """An exception as one short line: the type and first message line of its root cause (orbax wraps
  TensorStore's error, which names the array and the file, in generic ones)."""
  seen = set()
  while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _shape_changes(stored: Any, wanted: Any, limit: int = 5) -> list[str]:
  """'name: stored S, this configuration W' for parameters whose shapes (or presence) differ."""
  def shapes(tree):
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  a, b = shapes(stored), shapes(wanted)
  changes = [f"params{k}: stored {a.get(k, 'absent')}, this configuration {b.get(k, 'absent')}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return changes[:limit] + ([f"... and {len(changes) - limit} more"] if len(changes) > limit else [])


@dataclasses.dataclass
class RestoredCheckpoint:
  step: int
  state: Any
  operative_gin: str | None
  layout: VocabularyLayout | None


class Checkpoints:
  """The checkpoints of one run directory (`{model_dir}/checkpoints`)."""

  def __init__(self, model_dir: str | os.PathLike, config: CheckpointConfig | None = None):
    """`model_dir`: the run directory, a local path (relative ones are made absolute) or a URL."""
    config = CheckpointConfig() if config is None else config
    self.directory = filesystem.resolve(model_dir) / CHECKPOINT_SUBDIR
    self.config = config
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.save_every_steps,
        max_to_keep=config.keep_last,
        keep_period=config.keep_every,
        enable_async_checkpointing=config.async_save,
        create=True,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config", "layout"))
    self._saving: int | None = None  # the step of a save started and not yet seen to finish
    self._failed = False  # a save failed and was reported: closing must not raise it again

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Every `save_every_steps` steps (orbax alone would also save the first step of a run)."""
    return step % self.config.save_every_steps == 0 and step not in self.manager.all_steps()

  def save(self, step: int, state: Any, iterators: Mapping[int, StatefulIterator] | None,
           operative_gin: str, layout: VocabularyLayout, force: bool = False) -> bool:
    """Starts saving `step` (asynchronously when configured) if it is due or `force`; returns
    whether a save started."""
    if not (force or self.should_save(step)):
      return False
    items = {
        "state": ocp.args.PyTreeSave(state),
        "config": ocp.args.JsonSave({"operative_gin": operative_gin}),
        "layout": ocp.args.JsonSave(layout.to_json_dict()),
    }
    if iterators is not None:
      items["data"] = IteratorSave(iterators)
    self.raise_if_save_failed(wait=True)  # orbax would wait for the previous save anyway
    try:
      started = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # the synchronous part of the save (or all of it, without async_save)
      self._failed = True
      raise self._save_error(step, e) from e
    self._saving = step if started else None
    if started and not self.config.async_save:
      self.raise_if_save_failed(wait=True)
    return started

  def raise_if_save_failed(self, wait: bool = False) -> None:
    """Raises CheckpointSaveError, naming the step's path and the cause, if the last save failed.

    Without `wait` it only looks at a save that has finished (the step loop calls it every step:
    a failed background save stops the run at once, not at the next save)."""
    step = self._saving
    if step is None or (not wait and self.manager.is_saving_in_progress()):
      return
    self._saving = None
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      self._failed = True
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
    partial = [p.name for p in self.directory.iterdir() if p.name.startswith(f"{step}.") and "tmp" in p.name] \
        if self.directory.exists() else []
    leftover = f"; its partial directory {partial[0]} is removed at the next start" if partial else ""
    return CheckpointSaveError(f"saving step {step} to {self.directory / str(step)} failed: {_one_line(error)}"
                               f"{leftover}. The run stopped; the latest complete checkpoint is step "
                               f"{self.latest_complete_step(exclude=step)}, where the same command resumes.")

  def latest_complete_step(self, exclude: int | None = None) -> int | None:
    steps = [s for s in self.all_steps() if s != exclude]
    return max(steps) if steps else None

  def restore(self, abstract_state: Any, iterators: Mapping[int, StatefulIterator] | None = None,
              step: int | None = None) -> RestoredCheckpoint:
    """Restores `step` (default: the latest) onto `abstract_state`'s shardings (any mesh).

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with `sharding` set: the target
        layout, which may differ from the one the checkpoint was saved from.
      iterators: this process's data iterators by input-shard index; restored in place.
      step: which step; None for the latest.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {
        "state": _pytree_restore(abstract_state),
        "config": ocp.args.JsonRestore(),
        "layout": ocp.args.JsonRestore(),
    }
    if iterators is not None:
      items["data"] = IteratorRestore(iterators)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    layout = restored["layout"]
    return RestoredCheckpoint(
        step=step, state=restored["state"],
        operative_gin=(restored["config"] or {}).get("operative_gin"),
        layout=VocabularyLayout.from_json_dict(layout) if layout else None)

  def stored_params_metadata(self, step: int) -> Any:
    """The shapes and dtypes of step `step`'s parameters as stored (orbax's metadata tree)."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state")
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    return tree["params"]

  def restore_latest_good(self, abstract_state: Any, iterators: Mapping[int, StatefulIterator] | None = None,
                          report=print) -> RestoredCheckpoint:
    """The latest step that restores; each newer one that does not is reported in one line (step,
    file, cause) and moved aside to `{step}.unrestorable` in the checkpoint directory, never deleted.

    A step whose parameters were saved with other shapes than `abstract_state`'s is not damage but
    another configuration: that raises CheckpointMismatchError naming the parameters, and nothing
    is moved. Raises UnrestorableCheckpointsError, naming each step, when none restores.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        stored = self.stored_params_metadata(step)
      except Exception as e:  # orbax and tensorstore raise many kinds; any of them is this step's damage
        failures.append(self._set_aside(step, f"its parameter metadata does not read ({_one_line(e)})", report))
        continue
      changes = _shape_changes(stored, abstract_state.params)
      if changes:
        raise CheckpointMismatchError(
            f"{self.directory} holds checkpoints of another model than this configuration's (step {step}): "
            + "; ".join(changes) + ". Use a new run directory, or the configuration the run was made with.")
      try:
        return self.restore(abstract_state, iterators, step)
      except Exception as e:
        failures.append(self._set_aside(step, _one_line(e), report))
    raise UnrestorableCheckpointsError(f"no checkpoint in {self.directory} restores: " + "; ".join(failures))

  def _set_aside(self, step: int, reason: str, report) -> str:
    """Moves step `step` to `{step}.unrestorable` (process 0; every process waits) and says so."""
    from jax.experimental import multihost_utils

    source = self.directory / str(step)
    target = self.directory / f"{step}{UNRESTORABLE_SUFFIX}"
    suffix = 1
    while target.exists():
      suffix += 1
      target = self.directory / f"{step}{UNRESTORABLE_SUFFIX}-{suffix}"
    if jax.process_index() == 0:
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self.manager.reload()
    line = f"checkpoint step {step} in {self.directory} does not restore: {reason}; moved aside to {target.name}"
    report(f"[anygpt-train] {line}")
    return line

  def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
    """Only the parameters of a step (warm start, evaluation), onto `abstract_params`' shardings.

    Args:
      abstract_params: `jax.ShapeDtypeStruct`s with `sharding`, shaped like the saved params.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=_pytree_restore({"params": abstract_params}, partial=True)))
    return restored["state"]["params"]

  def wait_until_finished(self) -> None:
    self.raise_if_save_failed(wait=True)
    self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception:
      if not self._failed:
        raise
