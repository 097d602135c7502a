"""Input readers for the tokenization job: a manifest JSONL, a media folder, AnyGPT data files.

Every reader yields `InputRecord`s in a deterministic order. Lines that cannot be parsed are
yielded too, as records carrying a `reject` reason, so that they are counted and reported
instead of silently skipped.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pathlib
import zipfile
from typing import Iterator

from anygpt_jax import filesystem
from anygpt_jax.tokenizers.media import MediaRef
from anygpt_jax.vocabulary.layout import MODALITY_NAMES

MEDIA_KINDS = MODALITY_NAMES
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


SHAPES = ("pair", "document", "chat")


@dataclasses.dataclass
class InputRecord:
  """One unit of work.

  kind: a modality name such as 'image' (a pair: one medium at `path` and its caption `text`),
  'document' | 'chat' (several parts in `parts`), 'anygpt' (a pretokenized AnyGPT record in
  `data`), or '' when `reject` is set (the input could not be read; `reject_detail` says why).

  `parts` (optional for pairs, required for documents and chats) lists the sample's pieces in
  order, each `text_part(...)` or `media_part(...)`. A medium marked `optional` (an image of an
  interleaved document) is dropped alone when it cannot be read; any other failed medium
  rejects the whole record (a pair, a conversation).
  """

  id: str
  kind: str
  path: str = ""
  text: str = ""
  source: str = ""
  data: dict | None = None
  reject: str = ""
  reject_detail: str = ""
  parts: list[dict] | None = None
  dropped: list[dict] | None = None  # media the reader already left out: {"part", "reason", "detail"}

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "InputRecord":
    return cls(**d)

  def raw_parts(self) -> list[dict]:
    """`parts`, or for a plain pair [its medium, its caption]."""
    if self.parts is not None:
      return self.parts
    return [media_part(self.kind, MediaRef(self.path)), text_part(self.text)]


def text_part(text: str, role: str = "") -> dict:
  return {"kind": "text", "text": text, "role": role}


def media_part(kind: str, ref: MediaRef, role: str = "", optional: bool = False, label: str = "") -> dict:
  """A medium of a record; `label` names it in rejections (e.g. `image_info[3]`; default: its part index)."""
  part = {"kind": kind, "media": ref.to_dict(), "role": role, "optional": optional}
  if label:
    part["label"] = label
  return part


def rejected(record_id: str, source: str, reason: str, detail: str) -> InputRecord:
  """A record that could not be read, carried to the rejects file instead of dropped."""
  return InputRecord(str(record_id), "", source=str(source), reject=reason, reject_detail=detail)


def open_binary(path: str):
  """A file's bytes (local or a URL), also inside `.gz` or a one-member `.zip` (MMC4 ships `docs_shard_*_v2.jsonl.zip`)."""
  if str(path).endswith(".gz"):
    return gzip.open(filesystem.resolve(path).open("rb"), "rb")
  if str(path).endswith(".zip"):
    archive = zipfile.ZipFile(filesystem.resolve(path).open("rb"))
    names = [n for n in archive.namelist() if not n.endswith("/")]
    if len(names) != 1:
      raise ValueError(f"{path}: expected one file in the zip, found {names[:5]}")
    return archive.open(names[0])
  return filesystem.resolve(path).open("rb")


def open_text(path: str):
  """`open_binary`'s file as UTF-8 text."""
  return io.TextIOWrapper(open_binary(path), encoding="utf-8")


def jsonl_objects(path: str) -> Iterator[tuple[str, object]]:
  """(fallback id `file:line`, parsed value) per non-blank line; a line that is not UTF-8 or not JSON
  gives its `UnicodeDecodeError` or `json.JSONDecodeError` as its value (the message says where), so
  one bad line is one rejection and the rest of the file is read. Reads `.gz`/`.zip` too."""
  name = pathlib.Path(path).name
  with open_binary(path) as f:
    for line_no, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield f"{name}:{line_no}", e
        continue
      if not line.strip():
        continue
      try:
        yield f"{name}:{line_no}", json.loads(line)
      except json.JSONDecodeError as e:
        yield f"{name}:{line_no}", e


def _malformed(record_id: str, path: str, detail: str) -> InputRecord:
  return rejected(record_id, path, "malformed_manifest_line", detail)


def read_manifest(path: str) -> Iterator[InputRecord]:
  """`{"id", "kind", "path", "text"}` per line; relative paths are relative to the manifest."""
  base = pathlib.Path(path).resolve().parent if filesystem.is_local(path) else filesystem.resolve(path).parent
  for fallback_id, d in jsonl_objects(path):
    problem = _manifest_problem(d)
    if problem:
      yield _malformed(str(d.get("id", fallback_id)) if isinstance(d, dict) else fallback_id, path,
                       f"{fallback_id}: {problem}")
      continue
    absolute = os.path.isabs(d["path"]) or not filesystem.is_local(d["path"])
    media = d["path"] if absolute else str(base / d["path"])
    yield InputRecord(str(d.get("id", fallback_id)), d["kind"], media, d.get("text", ""), source=media)


def _manifest_problem(d) -> str:
  """Why a manifest line is unusable ('' when it is fine)."""
  if isinstance(d, Exception):
    return f"not JSON: {d}"
  if not isinstance(d, dict):
    return "not a JSON object"
  if d.get("kind") not in MEDIA_KINDS:
    return f"field 'kind' is {d.get('kind')!r}, not one of {MEDIA_KINDS}"
  if not (isinstance(d.get("path"), str) and d["path"]):
    return "field 'path' missing or not a string"
  if not isinstance(d.get("id", ""), (str, int)):
    return "field 'id' is not a string or integer"
  if not isinstance(d.get("text", ""), str):
    return "field 'text' is not a string"
  return ""


def read_folder(folder: str, audio_kind: str = "speech") -> Iterator[InputRecord]:
  """Media files in sorted order with sidecar captions `<stem>.txt` (empty text if absent).

  Audio files count as `audio_kind` ('speech' or 'music'); ids are paths relative to the folder.
  """
  root = pathlib.Path(folder) if filesystem.is_local(folder) else filesystem.resolve(folder)
  for p in sorted(_files_under(root), key=str):
    ext = p.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
      kind = "image"
    elif ext in AUDIO_EXTENSIONS:
      kind = audio_kind
    else:
      continue
    sidecar = p.with_suffix(".txt")
    text = sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else ""
    yield InputRecord(str(p)[len(str(root)) + 1:], kind, str(p), text, source=str(p))


def _files_under(root) -> Iterator:
  """Every file below `root` (a pathlib or epath directory; epath has no recursive glob on object stores)."""
  for item in root.iterdir():
    if item.is_dir():
      yield from _files_under(item)
    else:
      yield item


def read_anygpt(path: str) -> Iterator[InputRecord]:
  """AnyGPT pair / chat / interleaved JSONL (see `anygpt_data`); the data file is the source."""
  for fallback_id, d in jsonl_objects(path):
    if not isinstance(d, dict):
      yield _malformed(fallback_id, path, f"{fallback_id}: {d if isinstance(d, Exception) else 'not a JSON object'}")
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
