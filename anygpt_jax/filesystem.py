"""The project's one filesystem layer: `etils.epath`, as orbax and JAX's compilation cache use it.

Every path a run writes (the run directory, checkpoints, metrics, profiles, caches) goes through
here, so a relative path and a `gs://bucket/...` URL both work everywhere:

- `resolve(path)` turns a local path into an absolute one once, at the edge (orbax refuses
  relative checkpoint paths, and a process that changes directory must not move its run), and
  leaves a URL (`gs://`, `s3://`, ...) as it is. A URL is never passed to `os` or `open`, which
  would create a local folder literally named `gs:`.
- `is_local(path)` tells the two apart.
- `LocalStaging` gives a local directory for libraries that can only write local files (TF's
  iterator checkpoints, TensorBoard event files, the profiler) and copies it to the real place
  through epath.

On a machine with TensorFlow installed epath reaches `gs://` through `tf.io.gfile`; with
`EPATH_USE_TF=false` through fsspec (`gcsfs`), which honours `STORAGE_EMULATOR_HOST` (the tests
run a local GCS emulator that way).
"""

from __future__ import annotations

import glob as _glob
import json
import os
import re
import shutil
import tempfile
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def is_local(path: PathLike) -> bool:
  """Whether `path` is a local filesystem path (no `scheme://` prefix)."""
  return not _URL.match(os.fspath(path))


def resolve(path: PathLike) -> epath.Path:
  """An absolute local path (`~` expanded) or the URL unchanged, as an `epath.Path`."""
  text = os.fspath(path)
  if not text:
    raise ValueError("an empty path was given where a directory or file is expected")
  if is_local(text):
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  return epath.Path(text)


def glob(pattern: str) -> list[str]:
  """The sorted matches of a glob pattern, local (as `glob.glob` spells them) or a URL (`gs://b/*/x-*.tar`)."""
  if is_local(pattern):
    return sorted(_glob.glob(pattern))
  wildcard = min((pattern.find(c) for c in "*?[" if c in pattern), default=-1)
  if wildcard < 0:
    return [pattern] if resolve(pattern).exists() else []
  base = pattern[:wildcard].rsplit("/", 1)[0]
  return sorted(str(p) for p in resolve(base).glob(pattern[len(base) + 1:]))


def write_text(path: PathLike, text: str) -> None:
  """Writes `text` to `path` (local or URL), creating its parent directory."""
  path = resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def append_json_lines(path: PathLike, records: list[dict]) -> None:
  """Appends one JSON line per record to `path`: in place on a local disk; on an object store (no
  append there) by rewriting the object."""
  path = resolve(path)
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if is_local(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
      f.write(lines)
    return
  previous = path.read_text() if path.exists() else ""
  write_text(path, previous + lines)


def copy_file(source: PathLike, destination: PathLike) -> None:
  """Copies one file, streaming, between any two places (local or URL); creates the target's parent."""
  source, destination = resolve(source), resolve(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  with source.open("rb") as f, destination.open("wb") as g:
    shutil.copyfileobj(f, g, length=16 << 20)


def upload_tree(local_dir: PathLike, destination: PathLike) -> list[str]:
  """Copies every file under `local_dir` to the same relative place under `destination`.

  Returns the relative paths copied.
  """
  local_dir, destination = os.fspath(local_dir), resolve(destination)
  copied = []
  for root, _, files in os.walk(local_dir):
    for name in files:
      source = os.path.join(root, name)
      relative = os.path.relpath(source, local_dir)
      copy_file(source, destination / relative)
      copied.append(relative)
  return copied


def download_tree(source: PathLike, local_dir: PathLike) -> list[str]:
  """Copies every file under `source` (local or URL) into `local_dir`; returns relative paths."""
  source, local_dir = resolve(source), os.fspath(local_dir)
  copied = []

  def copy(directory: epath.Path, relative: str) -> None:
    # iterdir, not walk: epath's fsspec backend gives walk's roots without their `gs://` scheme.
    for item in directory.iterdir():
      name = os.path.join(relative, item.name) if relative else item.name
      if item.is_dir():
        copy(item, name)
      else:
        target = os.path.join(local_dir, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
          f.write(item.read_bytes())
        copied.append(name)

  if source.exists():
    copy(source, "")
  return copied


class LocalStaging:
  """A local directory standing for `destination`: the directory itself when it is local, else
  a temporary one whose files `sync()` copies to `destination` through epath.

  For writers that only know local files. Use as a context manager or call `close()`.
  """

  def __init__(self, destination: PathLike, prefix: str = "anygpt-staging-"):
    self.destination = resolve(destination)
    self.remote = not is_local(self.destination)
    if self.remote:
      self._tmp = tempfile.mkdtemp(prefix=prefix)
      self.local = self._tmp
    else:
      self._tmp = None
      self.local = os.fspath(self.destination)
      os.makedirs(self.local, exist_ok=True)

  def sync(self) -> None:
    """Copies the staged files to `destination` (nothing to do when it is local)."""
    if self.remote:
      upload_tree(self.local, self.destination)

  def close(self) -> None:
    self.sync()
    if self._tmp is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None

  def __enter__(self) -> "LocalStaging":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
