"""Input readers for the tokenization job: a manifest JSONL, a media folder, AnyGPT data files.

Every reader yields `InputRecord`s in a deterministic order. Lines that cannot be parsed are
yielded too, as records carrying a `reject` reason, so that they are counted and reported
instead of silently skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Iterator

MEDIA_KINDS = ("image", "speech", "music")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclasses.dataclass
class InputRecord:
  """One unit of work.

  kind: 'image' | 'speech' | 'music' (media to tokenize), 'anygpt' (a pretokenized AnyGPT
  record in `data`), or '' when `reject` is set (the line could not be read).
  """

  id: str
  kind: str
  path: str = ""
  text: str = ""
  source: str = ""
  data: dict | None = None
  reject: str = ""

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "InputRecord":
    return cls(**d)


def _jsonl_objects(path: str) -> Iterator[tuple[str, dict | None]]:
  """(fallback id `file:line`, parsed object or None when the line is not JSON) per non-blank line."""
  name = pathlib.Path(path).name
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield f"{name}:{line_no}", json.loads(line)
      except json.JSONDecodeError:
        yield f"{name}:{line_no}", None


def _malformed(record_id: str, path: str) -> InputRecord:
  return InputRecord(record_id, "", source=str(path), reject="malformed_manifest_line")


def read_manifest(path: str) -> Iterator[InputRecord]:
  """`{"id", "kind", "path", "text"}` per line; relative paths are relative to the manifest."""
  base = pathlib.Path(path).resolve().parent
  for fallback_id, d in _jsonl_objects(path):
    if not (isinstance(d, dict) and d.get("kind") in MEDIA_KINDS and isinstance(d.get("path"), str)
            and d.get("path") and isinstance(d.get("id", ""), (str, int))
            and isinstance(d.get("text", ""), str)):
      yield _malformed(str(d.get("id", fallback_id)) if isinstance(d, dict) else fallback_id, path)
      continue
    media = d["path"] if os.path.isabs(d["path"]) else str(base / d["path"])
    yield InputRecord(str(d.get("id", fallback_id)), d["kind"], media, d.get("text", ""), source=media)


def read_folder(folder: str, audio_kind: str = "speech") -> Iterator[InputRecord]:
  """Media files in sorted order with sidecar captions `<stem>.txt` (empty text if absent).

  Audio files count as `audio_kind` ('speech' or 'music'); ids are paths relative to the folder.
  """
  root = pathlib.Path(folder)
  for p in sorted(x for x in root.rglob("*") if x.is_file()):
    ext = p.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
      kind = "image"
    elif ext in AUDIO_EXTENSIONS:
      kind = audio_kind
    else:
      continue
    sidecar = p.with_suffix(".txt")
    text = sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else ""
    yield InputRecord(str(p.relative_to(root)), kind, str(p), text, source=str(p))


def read_anygpt(path: str) -> Iterator[InputRecord]:
  """AnyGPT pair / chat / interleaved JSONL (see `anygpt_data`); the data file is the source."""
  for fallback_id, d in _jsonl_objects(path):
    if not isinstance(d, dict):
      yield _malformed(fallback_id, path)
      continue
    yield InputRecord(str(d.get("id", fallback_id)), "anygpt", source=str(path), data=d)


def read_inputs(manifests=(), folders=(), anygpt_files=(), audio_kind: str = "speech") -> Iterator[InputRecord]:
  """All inputs in argument order: manifests, then folders, then AnyGPT data files."""
  for m in manifests:
    yield from read_manifest(m)
  for d in folders:
    yield from read_folder(d, audio_kind)
  for a in anygpt_files:
    yield from read_anygpt(a)
