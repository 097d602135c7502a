"""What a shard was made from: its inputs, the job's settings and the tokenizer checkpoints.

Each shard's stats carry this record (`provenance`). A rerun of `anygpt-tokenize` compares it with
what it would make the shard from now: a finished shard made from other inputs or settings is
refused, naming what changed, unless the rerun asks to rebuild it (`--rebuild`), so a corpus is
never silently a mix of old and new shards. Input files up to `HASHED_BYTES` are fingerprinted by
content (SHA-256); bigger files (tars, parquet, media archives) and checkpoint files by size and
modification time, which costs one `stat` per file. A folder input is described by its path only:
listing a folder of millions of media files on every rerun costs more than it would catch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

from anygpt_jax import filesystem
from anygpt_jax.errors import UserError

HASHED_BYTES = 64 << 20
# JobConfig fields that change what a shard holds (performance settings such as workers do not).
OUTPUT_SETTINGS = ("corpus", "split", "num_shards", "max_speech_seconds", "max_music_seconds", "music_clip_seconds",
                   "strict_formats", "drop_duplicate_ids")
TOKENIZERS = ("speech_model", "music_model", "image_model")


class StaleShardError(UserError, ValueError):
  """A finished shard was made from other inputs, settings or tokenizers than this run's."""


def file_fingerprint(path: str) -> dict:
  """{"path", "size", "sha256"} for a file up to HASHED_BYTES, {"path", "size", "mtime"} above it,
  {"path", "directory": True} for a folder. Local paths and URLs alike."""
  resolved = filesystem.resolve(path)
  if resolved.is_dir():
    return {"path": path, "directory": True}
  stat = resolved.stat()
  if stat.length > HASHED_BYTES:
    return {"path": path, "size": stat.length, "mtime": int(stat.mtime)}
  return {"path": path, "size": stat.length, "sha256": _sha256(path, stat.length, stat.mtime)}


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime: float) -> str:
  """Hashed once per version of a file (size and mtime in the key): every shard of a job reads the same input."""
  digest = hashlib.sha256()
  with filesystem.resolve(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def checkpoint_fingerprint(directory: str) -> dict:
  """{relative file name: [size, mtime]} of every file of a tokenizer checkpoint (or the one file)."""
  root = filesystem.resolve(directory)
  files = sorted(_files_under(root)) if root.is_dir() else [root]
  out = {}
  for f in files:
    stat = f.stat()
    out[str(f.relative_to(root)) if f != root else f.name] = [stat.length, int(stat.mtime)]
  return out


def _files_under(directory):
  for child in directory.iterdir():  # epath has no recursive glob on buckets; a checkpoint has few files
    if child.is_dir():
      yield from _files_under(child)
    else:
      yield child


def shard_provenance(cfg, inputs: Sequence[str]) -> dict:
  """The record a shard's stats keep (`cfg`: the job's `JobConfig`; `inputs`: the files it reads)."""
  settings = dataclasses.asdict(cfg)
  return {
      "inputs": [file_fingerprint(str(p)) for p in inputs],
      "settings": {k: settings[k] for k in OUTPUT_SETTINGS},
      "tokenizers": {k: {"path": settings[k], "files": checkpoint_fingerprint(settings[k])}
                     for k in TOKENIZERS if settings[k]},
  }


def changes(made_from: dict, now: dict) -> list[str]:
  """What differs between a shard's recorded provenance and this run's, one phrase each."""
  out = []
  before = {i["path"]: i for i in made_from.get("inputs", [])}
  after = {i["path"]: i for i in now["inputs"]}
  for path in sorted(before.keys() - after.keys()):
    out.append(f"input {path} is no longer an input")
  for path in sorted(after.keys() - before.keys()):
    out.append(f"input {path} is new")
  for path in sorted(before.keys() & after.keys()):
    if before[path] != after[path]:
      out.append(f"input {path} changed (size {before[path].get('size')} -> {after[path].get('size')})")
  for key, value in now["settings"].items():
    if made_from.get("settings", {}).get(key) != value:
      out.append(f"setting {key}: {made_from.get('settings', {}).get(key)!r} -> {value!r}")
  old_tokenizers = made_from.get("tokenizers", {})
  for key in sorted(set(old_tokenizers) | set(now["tokenizers"])):
    if old_tokenizers.get(key) != now["tokenizers"].get(key):
      out.append(f"{key} checkpoint changed ({(old_tokenizers.get(key) or {}).get('path')} -> "
                 f"{(now['tokenizers'].get(key) or {}).get('path')})")
  return out
