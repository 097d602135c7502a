"""Readers for corpora as they are distributed, one input shard at a time.

Every reader takes one input file (a tar, a JSONL part, a TSV, a transcripts file, a metadata
JSON) and yields `InputRecord`s in the shard schema's shapes: pairs, interleaved documents,
chats. `read_input(format, path, options)` dispatches; `detect_format(path)` picks a format
from the file's name and first bytes; `expand_inputs` turns the user's paths and globs into
the sorted list of input shards every machine of a job computes alike. Paths, globs and
directories may be local or URLs (`gs://bucket/laion/*.tar`).

  format       input shard                                  records
  webdataset   img2dataset `.tar` (+ `.parquet`)             image (or audio) pairs
  mmc4         MMC4 `.jsonl` part (also `.jsonl.zip`/`.gz`)  documents
  anyinstruct  AnyInstruct metadata `.json`/`.jsonl`         chats
  mls          MLS `transcripts.txt`                         speech pairs
  commonvoice  Common Voice `<split>.tsv`                    speech pairs
  gigaspeech   GigaSpeech metadata `.json`                   speech pairs (segments)
  manifest     `{"id","kind","path","text"}` JSONL           pairs
  anygpt       AnyGPT's tokenized JSONL                      pairs, chats, documents
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator

from anygpt_jax import filesystem
from anygpt_jax.tokenizers import inputs
from anygpt_jax.tokenizers.inputs import InputRecord

FORMATS = ("webdataset", "mmc4", "anyinstruct", "mls", "commonvoice", "gigaspeech", "manifest", "anygpt")
# What a directory given as an input stands for, per format.
_DIR_PATTERNS = {"webdataset": "*.tar", "mmc4": "*.jsonl*", "commonvoice": "*.tsv", "mls": "transcripts.txt",
                 "anyinstruct": "metadata.json*", "gigaspeech": "*.json", "manifest": "*.jsonl", "anygpt": "*.jsonl"}


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
  """Format options: `media_kind` of webdataset media; `images` (folders or tars) for MMC4."""

  media_kind: str = "image"
  images: tuple[str, ...] = ()


def read_input(fmt: str, path: str, options: ReaderOptions = ReaderOptions()) -> Iterator[InputRecord]:
  """The records of one input shard in format `fmt`."""
  if fmt == "webdataset":
    from anygpt_jax.tokenizers.readers.webdataset import read_webdataset
    return read_webdataset(path, options.media_kind)
  if fmt == "mmc4":
    from anygpt_jax.tokenizers.media import MediaStore
    from anygpt_jax.tokenizers.readers.mmc4 import read_mmc4
    return read_mmc4(path, MediaStore(options.images or (str(filesystem.resolve(path).parent),)))
  if fmt == "anyinstruct":
    from anygpt_jax.tokenizers.readers.anyinstruct import read_anyinstruct
    return read_anyinstruct(path)
  if fmt in ("mls", "commonvoice", "gigaspeech"):
    from anygpt_jax.tokenizers.readers import speech_sets
    return {"mls": speech_sets.read_mls, "commonvoice": speech_sets.read_common_voice,
            "gigaspeech": speech_sets.read_gigaspeech}[fmt](path)
  if fmt == "manifest":
    return inputs.read_manifest(path)
  if fmt == "anygpt":
    return inputs.read_anygpt(path)
  raise ValueError(f"unknown input format {fmt!r}; one of {FORMATS}")


def _first_object(path: str):
  """The first JSON object of a JSONL file or JSON list (None when there is none)."""
  with inputs.open_text(path) as f:
    head = f.read(1 << 16)
  stripped = head.lstrip()
  if stripped.startswith("["):
    start = stripped.find("{")
    decoder, text = json.JSONDecoder(), stripped[start:] if start >= 0 else ""
  else:
    decoder, text = json.JSONDecoder(), stripped.split("\n", 1)[0]
  try:
    obj, _ = decoder.raw_decode(text)
  except json.JSONDecodeError:
    return None
  return obj


def detect_format(path: str) -> str:
  """The format of one input file, from its name and first record; ValueError when unclear."""
  name = os.path.basename(path)
  if name.endswith(".tar"):
    return "webdataset"
  if name == "transcripts.txt":
    return "mls"
  if name.endswith(".tsv"):
    return "commonvoice"
  if name.endswith((".json", ".jsonl", ".jsonl.gz", ".jsonl.zip")):
    with inputs.open_text(path) as f:
      head = f.read(1 << 12)
    if '"audios"' in head and head.lstrip().startswith("{") and name.endswith(".json"):
      return "gigaspeech"
    obj = _first_object(path)
    if isinstance(obj, dict):
      if "text_list" in obj and "image_info" in obj:
        return "mmc4"
      if "kind" in obj and "path" in obj:
        return "manifest"
      body = json.dumps(obj, ensure_ascii=False)
      has_codes = any(sym in body for sym in ("<\U0001F440", "<\U0001F5E3", "<\U0001F3B6"))
      if "conversation" in obj or "chat" in obj:
        return "anygpt" if has_codes else "anyinstruct"
      if has_codes:
        return "anygpt"
  raise ValueError(f"cannot tell the format of {path}; give --format ({', '.join(FORMATS)})")


def expand_inputs(paths, fmt: str | None = None) -> list[str]:
  """Paths, globs and directories (local or URLs) -> the sorted, de-duplicated input files (FileNotFoundError if none).

  A directory stands for its files of the format's pattern (e.g. `*.tar` for webdataset).
  """
  out = []
  for p in paths:
    if any(c in p for c in "*?["):
      found = filesystem.glob(p)
    elif filesystem.resolve(p).is_dir():
      if fmt is None or fmt == "auto":
        raise ValueError(f"{p} is a directory: give --format so the job knows which files it holds")
      found = filesystem.glob(os.path.join(p, _DIR_PATTERNS[fmt]))
    else:
      found = [p] if filesystem.resolve(p).is_file() else []
    if not found:
      raise FileNotFoundError(f"input not found: {p}")
    out.extend(found)
  return sorted(dict.fromkeys(out))
