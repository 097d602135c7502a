"""AnyInstruct-style raw conversations: turns whose messages reference image, speech and music files.

AnyInstruct is distributed per part as a metadata file next to media tars (`metadata.json`,
`images_224.tar`, `speech.tar`, `music.tar`). Its raw metadata layout could not be checked
against the published files here, so this reader takes one explicit form, the raw
counterpart of AnyGPT's tokenized `anyinstruct_*.jsonl`: a JSON list (or JSONL) of
`{"id", "conversation": [[{"role", "message"}, ...]]}` (`chat` is accepted for
`conversation`, a flat message list too; several inner lists are rejected, see
`anygpt_data.conversation_messages`) where each medium sits in a message as a file name
inside its modality's span tokens:

  {"role": "user", "message": "<sosp>speech/q_001.mp3<eosp> Please describe this picture <soim>images_224/001.jpg<eoim>"}

Names are looked up next to the metadata file, then in every `*.tar` beside it, by full
member name and then by base name (`media.MediaStore`). Each medium is tokenized in its turn,
the text around it is kept verbatim (as in AnyGPT's tokenized messages) and roles are kept; `<-Ins->`/`<-Res->` stay in the text. A conversation naming a file that
is nowhere, or whose medium does not decode, is rejected whole (category and detail name the
turn and the file).
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterator

from anygpt_jax import filesystem
from anygpt_jax.tokenizers.anygpt_data import AnyGPTDataError, conversation_messages
from anygpt_jax.tokenizers.inputs import InputRecord, jsonl_objects, media_part, open_text, rejected, text_part
from anygpt_jax.tokenizers.media import MediaStore
from anygpt_jax.vocabulary.layout import MODALITIES

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "anygpt": "assistant", "mmgpt": "assistant",
         "system": "system"}
# `<soim>name<eoim>` etc., with the span tokens taken from the vocabulary layout.
_SPAN = re.compile("|".join(f"({re.escape(m.start_token)})(.*?){re.escape(m.end_token)}" for m in MODALITIES))


def _objects(path: str) -> Iterator[tuple[str, object]]:
  """(fallback id, value) per conversation: a JSON list file, or JSONL."""
  with open_text(path) as f:
    head = f.read(1 << 12).lstrip()
  if head.startswith("["):
    with open_text(path) as f:
      items = json.load(f)
    name = os.path.basename(path)
    yield from ((f"{name}[{i}]", d) for i, d in enumerate(items))
  else:
    yield from jsonl_objects(path)


class ConversationError(ValueError):
  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason, self.detail = reason, detail


def _turn_parts(i: int, msg, store: MediaStore) -> list[dict]:
  if not isinstance(msg, dict) or not isinstance(msg.get("message"), str):
    raise ConversationError("malformed_record", f"turn {i}: no 'message' string")
  role = ROLES.get(str(msg.get("role", "")).lower())
  if role is None:
    raise ConversationError("malformed_record", f"turn {i}: role {msg.get('role')!r} not in {sorted(ROLES)}")
  parts, pos, text = [], 0, msg["message"]
  for m in _SPAN.finditer(text):
    parts.append(text_part(text[pos:m.start()], role))  # verbatim, as AnyGPT's tokenized messages keep it
    groups = [g for g in m.groups() if g is not None]
    kind = next(mod.name for mod in MODALITIES if mod.start_token == groups[0])
    name = groups[1].strip()
    ref = store.find(name)
    if ref is None:
      raise ConversationError("missing_file", f"turn {i} ({role}): {kind} {name!r} is in none of {store.describe()}")
    parts.append(media_part(kind, ref, role, label=f"turn {i} {kind} {name}"))
    pos = m.end()
  parts.append(text_part(text[pos:], role))
  return [p for p in parts if p["kind"] != "text" or p["text"]]


def media_store_for(path: str) -> MediaStore:
  """The metadata file's folder and every tar beside it."""
  folder = str(filesystem.resolve(path).parent)
  return MediaStore([folder] + filesystem.glob(os.path.join(folder, "*.tar")))


def read_anyinstruct(path: str, store: MediaStore | None = None) -> Iterator[InputRecord]:
  """The conversations of one metadata file, in file order ('chat' records)."""
  store = store or media_store_for(path)
  for fallback_id, d in _objects(path):
    if not isinstance(d, dict):
      yield rejected(fallback_id, path, "malformed_record",
                     f"{fallback_id}: {d if isinstance(d, Exception) else 'not a JSON object'}")
      continue
    conv_id = str(d.get("id", fallback_id))
    try:
      messages = conversation_messages(d.get("conversation", d.get("chat")))
    except AnyGPTDataError as e:
      yield rejected(conv_id, path, e.reason, f"{conv_id}: {e.detail}")
      continue
    try:
      parts = [p for i, msg in enumerate(messages) for p in _turn_parts(i, msg, store)]
    except ConversationError as e:
      yield rejected(conv_id, path, e.reason, f"{conv_id}: {e.detail}")
      continue
    yield InputRecord(conv_id, "chat", source=f"{path}#{conv_id}", parts=parts)
