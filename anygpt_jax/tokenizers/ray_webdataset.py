"""Ray Data's webdataset reader, cutting the tokenization job's windows inside its read tasks.

With `--engine ray` and webdataset input, no tar is opened by the driver: Ray Data's
`WebDatasetDatasource` lists the tars and gives each its own read task, which opens it on any
pyarrow or fsspec filesystem (with Ray's I/O retries) and streams it once through
`readers.webdataset.stream_webdataset`, the reader the local engine uses for tars on an object
store: the same records, member bytes carried in their `MediaRef`s. The read task emits one row
per window of one output shard, so the tokenizer actors get the local engine's windows and the
shards get the local engine's bytes.

Streaming needs each key's members adjacent and loses a member cut off by the end of the tar
(see `readers/webdataset.py`); for a well-formed local tar the records equal the indexed
reader's.
"""

from __future__ import annotations

import os
import pickle

from anygpt_jax import filesystem
from anygpt_jax.tokenizers.inputs import InputRecord
from anygpt_jax.tokenizers.readers import webdataset

try:  # Ray Data's webdataset reader; its module moved under `_internal` in Ray 2.x
  from ray.data._internal.datasource.webdataset_datasource import WebDatasetDatasource
except ImportError as e:  # pragma: no cover - depends on the installed Ray
  raise ImportError(f"the Ray engine's webdataset reader needs Ray Data's WebDatasetDatasource ({e}); "
                    "install the tokenize role's pinned ray[data]") from e


def _strip_scheme(path: str) -> str:
  """How pyarrow names a file: a local path made absolute, a URL without its `scheme://`."""
  return os.path.abspath(path) if filesystem.is_local(path) else path.split("://", 1)[1]


class WebDatasetWindows(WebDatasetDatasource):
  """Rows {shard, window, last, records}: the job's windows of each wanted output shard, in order.

  `inputs` are the plan's input tars (as the user named them), `per_input` its output shards
  per input, `shards` the output shards to make; `records` is a pickled list of
  `InputRecord.to_dict()`s with the media bytes inline.
  """

  def __init__(self, inputs: list[str], per_input: int, shards: list[int], window: int, kind: str):
    wanted = sorted({i // per_input for i in shards})
    super().__init__([_strip_scheme(inputs[i]) for i in wanted], decoder=None,
                     filesystem=_filesystem_of(inputs[wanted[0]]))
    self.input_of = {_strip_scheme(inputs[i]): (i, inputs[i]) for i in wanted}
    self.per_input, self.shards, self.window, self.kind = per_input, set(shards), window, kind

  def _read_stream(self, stream, path: str):
    import pyarrow as pa
    index, tar_path = self.input_of[path]
    mine = [s for s in range(index * self.per_input, (index + 1) * self.per_input) if s in self.shards]
    count = dict.fromkeys(mine, 0)

    def row(shard: int, records: list[InputRecord], last: bool) -> "pa.Table":
      blob = pickle.dumps([r.to_dict() for r in records])
      count[shard] += 1
      return pa.table({"shard": [shard], "window": [count[shard] - 1], "last": [last],
                       "records": pa.array([blob], pa.large_binary())})

    # A full window is held back until its shard's next record shows it is not the last one.
    filling = {s: [] for s in mine}
    full: dict[int, list[InputRecord]] = {}
    for n, record in enumerate(webdataset.stream_webdataset(stream, tar_path, self.kind)):
      shard = index * self.per_input + n % self.per_input
      if shard not in filling:
        continue
      if shard in full:
        yield row(shard, full.pop(shard), last=False)
      filling[shard].append(record)
      if len(filling[shard]) == self.window:
        full[shard], filling[shard] = filling[shard], []
    # Each shard's last window: the held-back full one, else the partial one (empty when the shard got no record).
    for shard in mine:
      yield row(shard, full.pop(shard, None) or filling[shard], last=True)


def _filesystem_of(path: str):
  """A pyarrow filesystem for a URL through fsspec (as `anygpt_jax.filesystem` reaches it), None for local."""
  if filesystem.is_local(path):
    return None
  import fsspec
  from pyarrow.fs import FSSpecHandler, PyFileSystem
  return PyFileSystem(FSSpecHandler(fsspec.core.url_to_fs(path)[0]))


def read_windows(inputs: list[str], per_input: int, shards: list[int], window: int, kind: str):
  """A Ray Dataset of the windows of `shards` (see `WebDatasetWindows`), one read task per tar, in order."""
  import ray
  source = WebDatasetWindows(inputs, per_input, shards, window, kind)
  # Read tasks reserve no CPU: they stream bytes while the actors, which hold the CPUs, encode
  # (with a reservation, a cluster whose CPUs all went to actors could never start a read).
  return ray.data.read_datasource(source, override_num_blocks=len(source.input_of), num_cpus=0)
