"""A checkpoint directory in any published LLaMA layout, read lazily as HF-named numpy tensors.

Layouts recognised (in this order):
  model.safetensors.index.json + shards   HF, sharded safetensors
  *.safetensors                           HF, one (or a few) safetensors files
  pytorch_model.bin.index.json + shards   HF, sharded pickles (what AnyGPT's trainer writes)
  pytorch_model*.bin                      HF, one pickle
  consolidated.NN.pth + params.json       Meta's original release (q/k permuted on the way in)
HF layouts carry `config.json`; Meta's carries `params.json`. Tensors are read one at a time when
asked for (safetensors and zip pickles are memory-mapped), so a 7B import never holds two copies.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from etils import epath

from anygpt_jax import filesystem
from anygpt_jax.model.hf_convert import to_numpy
from anygpt_jax.weights import meta
from anygpt_jax.weights.pickled import load_pickled_tensors

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
HF_CONFIG = "config.json"


class WeightsFormatError(ValueError):
  """A directory that holds no recognised checkpoint layout, or an inconsistent one."""


def _local(path: epath.Path) -> str | None:
  """The local file name of `path`, or None for a remote (gs://-style) one."""
  return os.fspath(path) if filesystem.is_local(path) else None


def _open_safetensors(path: epath.Path):
  import safetensors
  from safetensors.torch import load as load_bytes

  local = _local(path)
  if local is not None:
    handle = safetensors.safe_open(local, framework="pt")  # memory-mapped
    return list(handle.keys()), handle.get_tensor
  tensors = load_bytes(path.read_bytes())  # a remote shard is read whole (one shard at a time)
  return list(tensors), tensors.__getitem__


def _open_pickle(path: epath.Path):
  local = _local(path)
  state = load_pickled_tensors(local if local is not None else io.BytesIO(path.read_bytes()))
  if not isinstance(state, Mapping):
    raise WeightsFormatError(f"{path}: expected a state dict (name -> tensor), found {type(state).__name__}")
  return list(state), state.__getitem__


class LazyStateDict(Mapping):
  """HF tensor name -> numpy array, each read from its file when asked for."""

  def __init__(self, readers: dict[str, Callable[[], Any]]):
    self._readers = readers

  def __getitem__(self, key: str) -> np.ndarray:
    return to_numpy(self._readers[key]())

  def __iter__(self) -> Iterator[str]:
    return iter(self._readers)

  def __len__(self) -> int:
    return len(self._readers)


@dataclasses.dataclass
class SourceCheckpoint:
  """What a checkpoint directory holds.

  Attributes:
    path: the directory.
    kind: 'hf-safetensors', 'hf-bin' or 'meta'.
    config_file: the file the model's shape comes from (config.json / params.json).
    config: that file's fields in HF `LlamaConfig` names (Meta's are translated).
    state_dict: HF-named tensors, read lazily (Meta's q/k already in HF's rotate-half order).
    files: the weight files, in order.
  """

  path: epath.Path
  kind: str
  config_file: epath.Path
  config: dict
  state_dict: LazyStateDict
  files: list[epath.Path]


def _index_files(directory: epath.Path, index_name: str) -> list[epath.Path]:
  index = json.loads((directory / index_name).read_text())
  names = sorted(set(index.get("weight_map", {}).values()))
  if not names:
    raise WeightsFormatError(f"{directory / index_name}: no weight_map")
  missing = [n for n in names if not (directory / n).exists()]
  if missing:
    raise WeightsFormatError(f"{directory / index_name} names shard(s) {missing} that are not in {directory}")
  return [directory / n for n in names]


def _hf_readers(files: list[epath.Path], opener) -> dict[str, Callable[[], Any]]:
  readers = {}
  for file in files:
    keys, get = opener(file)
    for key in keys:
      readers[key] = (lambda get=get, key=key: get(key))
  return readers


def _read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise WeightsFormatError(f"{path}: not valid JSON ({e})") from e


def _open_hf(directory: epath.Path, kind: str, files: list[epath.Path], opener) -> SourceCheckpoint:
  config_file = directory / HF_CONFIG
  if not config_file.exists():
    raise WeightsFormatError(f"{directory}: {[f.name for f in files]} but no {HF_CONFIG} (the model's shape "
                             "must be stated, it is checked against the model configuration)")
  return SourceCheckpoint(directory, kind, config_file, _read_json(config_file),
                          LazyStateDict(_hf_readers(files, opener)), files)


def _open_meta(directory: epath.Path, files: list[epath.Path]) -> SourceCheckpoint:
  config_file = directory / meta.PARAMS_FILE
  if not config_file.exists():
    raise WeightsFormatError(f"{directory}: {[f.name for f in files]} but no {meta.PARAMS_FILE}")
  params = _read_json(config_file)
  shards = [_open_pickle(f) for f in files]
  readers = {}
  for meta_key in shards[0][0]:
    mapped = meta.hf_name(meta_key)
    if mapped is None:
      continue
    hf_key, dim = mapped

    def read(meta_key=meta_key, hf_key=hf_key, dim=dim):
      parts = [to_numpy(get(meta_key)) for _, get in shards]
      joined = parts[0] if dim is None or len(parts) == 1 else np.concatenate(parts, axis=dim)
      return meta.to_hf_tensor(hf_key, joined, params)

    readers[hf_key] = read
  return SourceCheckpoint(directory, "meta", config_file, meta.hf_config_from_params(params),
                          LazyStateDict(readers), files)


def open_source(path: str | os.PathLike) -> SourceCheckpoint:
  """Recognises the layout of the checkpoint directory `path` (local, relative or gs://-style).

  Raises:
    FileNotFoundError / WeightsFormatError: naming the directory and the layouts looked for.
  """
  directory = epath.Path(path)
  if not directory.is_dir():
    raise FileNotFoundError(f"{path}: no such checkpoint directory")
  names = sorted(p.name for p in directory.iterdir())
  if SAFETENSORS_INDEX in names:
    return _open_hf(directory, "hf-safetensors", _index_files(directory, SAFETENSORS_INDEX), _open_safetensors)
  safetensors = [directory / n for n in names if n.endswith(".safetensors")]
  if safetensors:
    return _open_hf(directory, "hf-safetensors", safetensors, _open_safetensors)
  if BIN_INDEX in names:
    return _open_hf(directory, "hf-bin", _index_files(directory, BIN_INDEX), _open_pickle)
  bins = [directory / n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
  if bins:
    return _open_hf(directory, "hf-bin", bins, _open_pickle)
  consolidated = [directory / n for n in names if n.startswith("consolidated.") and n.endswith(".pth")]
  if consolidated:
    return _open_meta(directory, consolidated)
  raise WeightsFormatError(
      f"{path}: no checkpoint found; expected {SAFETENSORS_INDEX} or *.safetensors, {BIN_INDEX} or "
      f"pytorch_model.bin (each with {HF_CONFIG}), or consolidated.NN.pth with {meta.PARAMS_FILE}; "
      f"the directory holds {names[:20]}")
