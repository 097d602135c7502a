"""img2dataset / webdataset shards: `{key}.jpg` + `{key}.txt` + `{key}.json` in a plain tar.

LAION-2B, LAION-COCO, LAION-Aesthetics and JourneyDB reach a user as img2dataset output:
`00000.tar` holding each sample's files under one key, and `00000.parquet` listing every
sample of the shard with its download `status`. Each key becomes one pair record whose
medium is read at its offset inside the tar (nothing is unpacked). The caption is the `.txt`
member, else the `.json` member's `caption`. A key without a medium member, and a parquet row
marked `success` whose key the tar lacks, are rejected as `missing_member`; a tar cut short
keeps the members before the cut and adds one `truncated_tar` rejection.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

from anygpt_jax.tokenizers.inputs import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, InputRecord, media_part, rejected, text_part
from anygpt_jax.tokenizers.media import MediaError, TarIndex


def split_key(member: str) -> tuple[str, str]:
  """webdataset's convention: the key is the path up to the first dot of the file name."""
  directory, base = os.path.split(member)
  stem, _, ext = base.partition(".")
  return os.path.join(directory, stem), ext.lower()


def _media_exts(kind: str) -> tuple[str, ...]:
  return tuple(e.lstrip(".") for e in (IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS))


def _caption(index: TarIndex, members: dict[str, str]) -> tuple[str, str]:
  """(caption, '') or ('', why not) from the `.txt` member, else the `.json` member's `caption`."""
  try:
    if "txt" in members:
      return index.ref(members["txt"]).read_bytes().decode("utf-8").strip(), ""
    if "json" in members:
      meta = json.loads(index.ref(members["json"]).read_bytes())
      caption = meta.get("caption") if isinstance(meta, dict) else None
      return (caption.strip(), "") if isinstance(caption, str) else ("", f"{members['json']} has no 'caption'")
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    return "", f"unreadable caption member: {e}"
  except MediaError as e:
    return "", e.detail
  return "", "no .txt or .json member"


def parquet_success_keys(tar_path: str) -> list[str] | None:
  """Keys img2dataset's `<shard>.parquet` lists as downloaded (None without a parquet)."""
  parquet = os.path.splitext(tar_path)[0] + ".parquet"
  if not os.path.isfile(parquet):
    return None
  import pyarrow.parquet as pq  # only needed for this check
  table = pq.read_table(parquet, columns=["key", "status"])
  return [k for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist()) if s == "success"]


def read_webdataset(tar_path: str, kind: str = "image") -> Iterator[InputRecord]:
  """Pair records of one webdataset tar, in tar order; `kind` is the medium's kind."""
  index = TarIndex(tar_path)
  groups: dict[str, dict[str, str]] = {}
  for member in index.members:
    key, ext = split_key(member)
    groups.setdefault(key, {})[ext] = member
  exts = _media_exts(kind)
  for key, members in groups.items():
    medium = next((members[e] for e in members if e in exts), None)
    source = f"{tar_path}::{key}"
    if medium is None:
      yield rejected(key, source, "missing_member", f"{tar_path}: key {key!r} has {sorted(members)} but no {kind} "
                     f"member ({'/'.join(exts)})")
      continue
    caption, why = _caption(index, members)
    if not caption:
      yield rejected(key, source, "missing_text", f"{tar_path}: key {key!r}: {why or 'empty caption'}")
      continue
    ref = index.ref(medium)
    yield InputRecord(key, kind, text=caption, source=f"{tar_path}::{medium}",
                      parts=[media_part(kind, ref), text_part(caption)])
  for key in parquet_success_keys(tar_path) or ():
    if key not in groups:
      yield rejected(key, tar_path, "missing_member",
                     f"{os.path.splitext(tar_path)[0]}.parquet lists key {key!r} as downloaded; {tar_path} lacks it")
  if index.truncated:
    yield rejected(os.path.basename(tar_path), tar_path, "truncated_tar", index.truncated)
