"""img2dataset / webdataset shards: `{key}.jpg` + `{key}.txt` + `{key}.json` in a plain tar.

LAION-2B, LAION-COCO, LAION-Aesthetics and JourneyDB reach a user as img2dataset output:
`00000.tar` holding each sample's files under one key, and `00000.parquet` listing every
sample of the shard with its download `status`. Each key becomes one pair record. The caption
is the `.txt` member, else the `.json` member's `caption`. A key without a medium member, and a
parquet row marked `success` whose key the tar lacks, are rejected as `missing_member`; a tar
cut short keeps the members before the cut and adds one `truncated_tar` rejection.

Two ways to read a tar, with the same records for a well-formed one:
- `read_webdataset` on a local tar indexes its headers and reads each medium at its offset
  when it is decoded (nothing is unpacked or held).
- `stream_webdataset` reads the tar once, front to back, members carried as bytes: for tars on
  an object store (`gs://`), where a read at an offset is a request of its own, and in the Ray
  engine's read tasks. A stream needs each key's members adjacent (the webdataset rule, which
  img2dataset follows); a key seen again later is a `split_key` rejection of that fragment, and
  a member cut off by the end of the tar is lost with it (the index rejects it as
  `truncated_member`).
"""

from __future__ import annotations

import json
import os
import tarfile
from typing import Iterator

from anygpt_jax import filesystem
from anygpt_jax.tokenizers.inputs import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, InputRecord, media_part, rejected, text_part
from anygpt_jax.tokenizers.media import MediaError, MediaRef, TarIndex, check_plain_tar


def split_key(member: str) -> tuple[str, str]:
  """webdataset's convention: the key is the path up to the first dot of the file name."""
  directory, base = os.path.split(member)
  stem, _, ext = base.partition(".")
  return os.path.join(directory, stem), ext.lower()


def _media_exts(kind: str) -> tuple[str, ...]:
  return tuple(e.lstrip(".") for e in (IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS))


def _caption(members: dict[str, MediaRef]) -> tuple[str, str]:
  """(caption, '') or ('', why not) from the `.txt` member, else the `.json` member's `caption`."""
  try:
    if "txt" in members:
      return members["txt"].read_bytes().decode("utf-8").strip(), ""
    if "json" in members:
      meta = json.loads(members["json"].read_bytes())
      caption = meta.get("caption") if isinstance(meta, dict) else None
      return (caption.strip(), "") if isinstance(caption, str) else ("", f"{members['json'].member} has no 'caption'")
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    return "", f"unreadable caption member: {e}"
  except MediaError as e:
    return "", e.detail
  return "", "no .txt or .json member"


def parquet_success_keys(tar_path: str) -> list[str] | None:
  """Keys img2dataset's `<shard>.parquet` lists as downloaded (None without a parquet)."""
  parquet = filesystem.resolve(os.path.splitext(tar_path)[0] + ".parquet")
  if not parquet.is_file():
    return None
  import pyarrow.parquet as pq  # only needed for this check
  with parquet.open("rb") as f:
    table = pq.read_table(f, columns=["key", "status"])
  return [k for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist()) if s == "success"]


def key_record(tar_path: str, key: str, members: dict[str, MediaRef], kind: str) -> InputRecord:
  """The pair record of one key, from its members (lower-case extension -> ref), or its rejection."""
  exts = _media_exts(kind)
  medium = next((members[e] for e in members if e in exts), None)
  source = f"{tar_path}::{key}"
  if medium is None:
    return rejected(key, source, "missing_member", f"{tar_path}: key {key!r} has {sorted(members)} but no {kind} "
                    f"member ({'/'.join(exts)})")
  caption, why = _caption(members)
  if not caption:
    return rejected(key, source, "missing_text", f"{tar_path}: key {key!r}: {why or 'empty caption'}")
  return InputRecord(key, kind, text=caption, source=f"{tar_path}::{medium.member}",
                     parts=[media_part(kind, medium), text_part(caption)])


def shard_rejections(tar_path: str, keys, truncated: str) -> Iterator[InputRecord]:
  """What a tar's end adds: keys its parquet lists as downloaded but `keys` lacks, and a cut-off tar."""
  keys = set(keys)
  for key in parquet_success_keys(tar_path) or ():
    if key not in keys:
      yield rejected(key, tar_path, "missing_member",
                     f"{os.path.splitext(tar_path)[0]}.parquet lists key {key!r} as downloaded; {tar_path} lacks it")
  if truncated:
    yield rejected(os.path.basename(tar_path), tar_path, "truncated_tar", truncated)


class _Prefixed:
  """A stream whose first bytes were already read (to check the tar is not compressed)."""

  def __init__(self, head: bytes, stream):
    self.head, self.stream = head, stream

  def read(self, size: int = -1) -> bytes:
    if size is not None and 0 <= size <= len(self.head):
      data, self.head = self.head[:size], self.head[size:]
      return data
    data, self.head = self.head, b""
    return data + self.stream.read(-1 if size is None or size < 0 else size - len(data))


def _stream_members(stream, tar_path: str, cut: list[str]) -> Iterator[tuple[str, bytes]]:
  """(name, bytes) of each regular member of a plain tar stream, in order; a tar cut short ends
  the iteration and appends the reason to `cut`."""
  try:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
      for info in tar:
        if info.isreg():
          yield info.name, tar.extractfile(info).read()
  except (tarfile.TarError, EOFError, OSError) as e:
    cut.append(f"{tar_path}: {type(e).__name__}: {e}")


def stream_webdataset(stream, tar_path: str, kind: str = "image") -> Iterator[InputRecord]:
  """Pair records of a webdataset tar read front to back from `stream` (named `tar_path`)."""
  head = stream.read(3)
  try:
    check_plain_tar(tar_path, head)
  except MediaError as e:  # a compressed tar: its shard says so
    yield rejected(os.path.basename(tar_path), tar_path, e.reason, e.detail)
    return
  cut: list[str] = []
  seen: set[str] = set()
  key, refs = None, {}
  for name, data in _stream_members(_Prefixed(head, stream), tar_path, cut):
    member_key, ext = split_key(name)
    if member_key != key:
      if key is not None:
        yield _finished_key(tar_path, key, refs, kind, seen)
      key, refs = member_key, {}
    refs[ext] = MediaRef(tar_path, member=name, data=data)
  if key is not None:
    yield _finished_key(tar_path, key, refs, kind, seen)
  yield from shard_rejections(tar_path, seen, cut[0] if cut else "")


def _finished_key(tar_path: str, key: str, refs: dict[str, MediaRef], kind: str, seen: set[str]) -> InputRecord:
  if key in seen:
    return rejected(key, f"{tar_path}::{key}", "split_key", f"{tar_path}: key {key!r} appears again after other keys "
                    f"(members {sorted(refs)}); a streamed webdataset tar needs each key's members together")
  seen.add(key)
  return key_record(tar_path, key, refs, kind)


def read_webdataset(tar_path: str, kind: str = "image") -> Iterator[InputRecord]:
  """Pair records of one webdataset tar, in tar order; `kind` is the medium's kind.

  A local tar is indexed and read at offsets; a tar at a URL is streamed once (`stream_webdataset`).
  """
  if not filesystem.is_local(tar_path):
    with filesystem.resolve(tar_path).open("rb") as f:
      yield from stream_webdataset(f, tar_path, kind)
    return
  try:
    index = TarIndex(tar_path)
  except MediaError as e:  # a compressed tar: its shard says so
    yield rejected(os.path.basename(tar_path), tar_path, e.reason, e.detail)
    return
  groups: dict[str, dict[str, MediaRef]] = {}
  for member in index.members:
    key, ext = split_key(member)
    groups.setdefault(key, {})[ext] = index.ref(member)
  for key, members in groups.items():
    yield key_record(tar_path, key, members, kind)
  yield from shard_rejections(tar_path, groups, index.truncated)
