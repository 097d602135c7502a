"""Ray Data's webdataset reader, cutting the tokenization job's windows inside its read tasks.

With `--engine ray` and webdataset input, no tar is opened by the driver: each tar is streamed
by a Ray Data read task (`WebDatasetDatasource`: the tar listing, one read task per file, any
pyarrow or fsspec filesystem, I/O retries) and its members grouped into samples by Ray's
webdataset rule (`_group_by_keys`: the key is the name up to the first dot, and one key's
members are adjacent in the tar). The read task turns each sample into the record the local
reader makes of it (`readers.webdataset.key_record`, the member's bytes carried in its
`MediaRef`) and emits one row per window of one output shard, so the tokenizer actors get
the local engine's windows and the shards get the local engine's bytes.

One thing differs from the local reader: a tar cut off inside a member loses that member
here (a stream cannot read past the cut) where the local reader lists it and rejects it as
`truncated_member`; both add the tar's `truncated_tar` rejection and keep what came before.
"""

from __future__ import annotations

import itertools
import os
import pickle
import tarfile
from typing import Iterator

from anygpt_jax import filesystem
from anygpt_jax.tokenizers.inputs import InputRecord, rejected
from anygpt_jax.tokenizers.media import MediaError, MediaRef, check_plain_tar
from anygpt_jax.tokenizers.readers import webdataset

try:  # Ray Data's webdataset reader; its module moved under `_internal` in Ray 2.x
  from ray.data._internal.datasource.webdataset_datasource import WebDatasetDatasource, _group_by_keys
except ImportError as e:  # pragma: no cover - depends on the installed Ray
  raise ImportError(f"the Ray engine's webdataset reader needs Ray Data's WebDatasetDatasource ({e}); "
                    "install the tokenize role's pinned ray[data]") from e


def _strip_scheme(path: str) -> str:
  """How pyarrow names a file: a local path made absolute, a URL without its `scheme://`."""
  return os.path.abspath(path) if filesystem.is_local(path) else path.split("://", 1)[1]


class _Prefixed:
  """A stream whose first bytes were already read (to check the tar is not compressed)."""

  def __init__(self, head: bytes, stream):
    self.head, self.stream = head, stream

  def read(self, size: int = -1) -> bytes:
    if not self.head:
      return self.stream.read(size)
    if size < 0 or size > len(self.head):
      data, self.head = self.head, b""
      return data + self.stream.read(-1 if size < 0 else size - len(data))
    data, self.head = self.head[:size], self.head[size:]
    return data


def _members(stream, path: str, cut: list[str]) -> Iterator[dict]:
  """The regular members of a tar stream as Ray's tar iterator yields them ({fname, data}).

  A tar cut short ends the iteration instead of failing the read task; `cut` gets the reason.
  Raises MediaError('compressed_tar') as the local reader does.
  """
  head = stream.read(3)
  check_plain_tar(path, head)
  try:
    with tarfile.open(fileobj=_Prefixed(head, stream), mode="r|") as tar:
      for info in tar:
        if info.isreg():
          yield {"fname": info.name, "data": tar.extractfile(info).read()}
  except (tarfile.TarError, EOFError, OSError) as e:
    cut.append(f"{path}: {type(e).__name__}: {e}")


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

  def _records(self, stream, tar_path: str) -> Iterator[InputRecord]:
    cut: list[str] = []
    keys = []
    try:
      members = _members(stream, tar_path, cut)
      first = next(members, None)
    except MediaError as e:  # a compressed tar: its shard says so, as in the local reader
      yield rejected(os.path.basename(tar_path), tar_path, e.reason, e.detail)
      return
    members = itertools.chain([first] if first else [], members)
    for sample in _group_by_keys(members, meta={"__url__": tar_path}):
      key = sample["__key__"]
      keys.append(key)
      refs = {suffix.lower(): MediaRef(tar_path, member=f"{key}.{suffix}", data=data)
              for suffix, data in sample.items() if not suffix.startswith("__")}
      yield webdataset.key_record(tar_path, key, refs, self.kind)
    yield from webdataset.shard_rejections(tar_path, keys, cut[0] if cut else "")

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
    for n, record in enumerate(self._records(stream, tar_path)):
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
