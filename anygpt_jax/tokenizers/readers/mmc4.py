"""MMC4 interleaved documents: JSONL with `text_list` and `image_info`, images in folders or tars.

Each line is one document: `text_list` (sentences) and `image_info` entries
`{"image_name", "matched_text_index", "matched_sim", ...}`. An image is placed just before the
sentence it is matched to, images of one sentence in `image_info` order, and each image is
tokenized in place. Images are looked up by `image_name` in the given folders and plain tars
(`media.MediaStore`). One bad image does not cost the document: an entry whose
`matched_text_index` is outside `text_list` (`bad_image_index`), a name no location holds
(`missing_file`), or an image that does not decode is dropped alone and listed in the rejects
file with `dropped_part`; a document left with no image is rejected (`no_media_left`).
"""

from __future__ import annotations

from typing import Iterator

from anygpt_jax.tokenizers.inputs import InputRecord, jsonl_objects, media_part, rejected, text_part
from anygpt_jax.tokenizers.media import MediaStore


def _document_problem(d) -> str:
  if isinstance(d, Exception):
    return f"not JSON: {d}"
  if not isinstance(d, dict):
    return "not a JSON object"
  if not (isinstance(d.get("text_list"), list) and all(isinstance(t, str) for t in d["text_list"])):
    return "field 'text_list' missing or not a list of strings"
  if not isinstance(d.get("image_info"), list):
    return "field 'image_info' missing or not a list"
  return ""


def document_record(d: dict, doc_id: str, source: str, images: MediaStore) -> InputRecord:
  """One MMC4 document -> a 'document' record (images before their matched sentences)."""
  texts = d["text_list"]
  before: dict[int, list[tuple[int, str]]] = {}
  dropped = []
  for j, info in enumerate(d["image_info"]):
    name = info.get("image_name") if isinstance(info, dict) else None
    index = info.get("matched_text_index") if isinstance(info, dict) else None
    where = f"image_info[{j}]"
    if not isinstance(name, str) or not name:
      dropped.append({"part": where, "reason": "malformed_image_info", "detail": f"{where}: no 'image_name'"})
    elif not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(texts):
      dropped.append({"part": where, "reason": "bad_image_index",
                      "detail": f"{where} ({name}): matched_text_index {index!r} outside text_list of {len(texts)}"})
    else:
      before.setdefault(index, []).append((j, name))
  items = []  # ("image", ref, j) or ("text", sentence) in document order
  for i, sentence in enumerate(texts):
    for j, name in before.get(i, ()):
      ref = images.find(name)
      if ref is None:
        dropped.append({"part": f"image_info[{j}]", "reason": "missing_file",
                        "detail": f"image_info[{j}]: {name!r} is in none of {images.describe()}"})
      else:
        items.append(("image", ref, j))
    items.append(("text", sentence))
  return InputRecord(doc_id, "document", source=source, parts=_spaced_parts(items), dropped=dropped)


def _spaced_parts(items: list[tuple]) -> list[dict]:
  """Parts whose plain concatenation reads `A. B. <image> C.`: one space between neighbours, on the text side.

  Documents are rendered by concatenating their parts as they are, so sentences and the
  spaces around images must be in the text.
  """
  parts = []
  for n, item in enumerate(items):
    if item[0] == "image":
      parts.append(media_part("image", item[1], optional=True, label=f"image_info[{item[2]}]"))
      continue
    text = (" " if n > 0 else "") + item[1]
    if n + 1 < len(items) and items[n + 1][0] == "image":
      text += " "
    parts.append(text_part(text))
  return parts


def read_mmc4(path: str, images: MediaStore) -> Iterator[InputRecord]:
  """The documents of one MMC4 JSONL part, in file order; ids are `file:line`."""
  for doc_id, d in jsonl_objects(path):
    problem = _document_problem(d)
    if problem:
      yield rejected(doc_id, path, "malformed_record", f"{doc_id}: {problem}")
    else:
      yield document_record(d, doc_id, f"{path}:{doc_id.rsplit(':', 1)[1]}", images)
