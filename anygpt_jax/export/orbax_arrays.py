"""Single parameters, or blocks of a scanned parameter's layers, read from an orbax checkpoint.

A run's step directory holds `state/` as one OCDBT key-value store with one zarr array per leaf
(`params.layers.mlp.gate_proj.kernel`). Reading a leaf through tensorstore brings only that
array, or the requested slice of it, into host memory: no device, no whole model.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np
from etils import epath

from anygpt_jax import filesystem
from anygpt_jax.checkpoints.manager import CHECKPOINT_SUBDIR

STATE_ITEM = "state"
PARAMS_KEY = "params"


def _kvstore_url(path: epath.Path) -> str:
  text = os.fspath(filesystem.resolve(path))
  if not filesystem.is_local(text):
    return text.rstrip("/") + "/"
  return "file://" + text + "/"


def step_directories(model_dir: epath.PathLike) -> dict[int, epath.Path]:
  """Finished steps of a run -> their directories (orbax renames a step once it is complete)."""
  root = epath.Path(model_dir) / CHECKPOINT_SUBDIR
  if not root.is_dir():
    raise FileNotFoundError(f"{root} does not exist: is {model_dir} a run directory of anygpt-train/anygpt-import?")
  steps = {}
  for child in root.iterdir():
    if child.name.isdigit() and (child / STATE_ITEM / "_METADATA").exists():
      steps[int(child.name)] = child
  return steps


class CheckpointArrays:
  """The parameter arrays of one step of a run, read leaf by leaf.

  Args:
    model_dir: the run directory (local, relative or gs://-style).
    step: which step; None for the latest.
  """

  def __init__(self, model_dir: epath.PathLike, step: int | None = None):
    steps = step_directories(model_dir)
    if not steps:
      raise FileNotFoundError(f"no finished checkpoint in {epath.Path(model_dir) / CHECKPOINT_SUBDIR}")
    self.step = max(steps) if step is None else step
    if self.step not in steps:
      raise FileNotFoundError(f"{model_dir} has no step {self.step}; it has {sorted(steps)}")
    self.state_dir = steps[self.step] / STATE_ITEM
    metadata = json.loads((self.state_dir / "_METADATA").read_text())
    self._driver = "zarr3" if metadata.get("use_zarr3") else "zarr"
    self._ocdbt = metadata.get("use_ocdbt", True)
    self.leaves = {tuple(k["key"] for k in v["key_metadata"]) for v in metadata["tree_metadata"].values()}

  def _spec(self, leaf: tuple[str, ...]) -> dict:
    key = ".".join((PARAMS_KEY,) + tuple(leaf))
    if (PARAMS_KEY,) + tuple(leaf) not in self.leaves:
      raise KeyError(f"{self.state_dir} has no parameter {'/'.join(leaf)}")
    if self._ocdbt:
      kvstore = {"driver": "ocdbt", "base": _kvstore_url(self.state_dir), "path": key}
    else:
      kvstore = _kvstore_url(self.state_dir / key)
    return {"driver": self._driver, "kvstore": kvstore}

  def open(self, leaf: tuple[str, ...]):
    """The tensorstore array of a parameter (nothing read yet)."""
    import tensorstore as ts
    return ts.open(self._spec(leaf), open=True, read=True).result()

  def read(self, leaf: tuple[str, ...]) -> np.ndarray:
    """A whole parameter as numpy."""
    return self.open(leaf).read().result()

  def layer_blocks(self, leaf: tuple[str, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """(first layer, block) of a scanned parameter [layers, ...], in blocks of its storage chunks
    along the layer axis: each stored chunk is read once, and at most one block is in memory."""
    array = self.open(leaf)
    layers = array.shape[0]
    chunk = array.chunk_layout.read_chunk.shape
    block = max(1, int(chunk[0]) if chunk is not None and chunk[0] else layers)
    for start in range(0, layers, block):
      yield start, array[start:min(start + block, layers)].read().result()
