"""AnyGPT's own data files (modality tokens as strings) -> shard samples, no model needed.

Three record shapes are recognised:
  pair:        {"text": "...", "speech": "<sosp><🗣️65>...<eosp>"}  (or "image"/"music")
  chat:        {"id": 1, "conversation": [[{"role": "user", "message": "<sosp>...<eosp> Reply."}, ...]]}
  interleaved: {"text": "words <soim><👀1>...<eoim> more words"}
A pair becomes [modality part, text part]; chats and interleaved documents become their text
and modality parts in order (text kept verbatim, spaces included; empty pieces dropped), with
each message's role on its parts. `<-Ins->`/`<-Res->` stay inside the text.
"""

from __future__ import annotations

from anygpt_jax.data.shards import Part, Sample
from anygpt_jax.vocabulary.layout import (MODALITIES, VocabularyError, VocabularyLayout, modality_codes_from_string,
                                          split_added_tokens)

_LAYOUT = VocabularyLayout(chat_tokens=True)
_START = {m.start_token: m for m in MODALITIES}
_END = {m.end_token: m for m in MODALITIES}
_ROLES = ("user", "assistant", "system")


class AnyGPTDataError(ValueError):
  """A record whose token strings or structure do not parse; `reason` is its stats key."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


def _code(modality_name: str, token: str) -> int:
  token_id = _LAYOUT.special_token_to_id(token)
  r = _LAYOUT.modality(modality_name)
  if not r.contains_code_id(token_id):
    raise VocabularyError(f"token {token!r} is not a {modality_name} code")
  return token_id - r.first_code_id


def message_parts(text: str, role: str = "") -> list[Part]:
  """Splits one message into text and modality parts, in order.

  Raises AnyGPTDataError('bad_token_string') on an out-of-range or malformed code, a code
  outside its start/end tokens, or an unterminated modality span.
  """
  parts, text_buf, open_modality, codes = [], [], None, []

  def flush_text():
    joined = "".join(text_buf)  # verbatim: AnyGPT's template keeps the spaces next to modality spans
    if joined:
      parts.append(Part("text", text=joined, role=role))
    text_buf.clear()

  try:
    for is_token, piece in split_added_tokens(text):
      if open_modality is not None:
        if is_token and piece == open_modality.end_token:
          parts.append(Part(open_modality.name, codes=list(codes), role=role))
          open_modality, codes = None, []
        elif is_token:
          codes.append(_code(open_modality.name, piece))
        elif piece.strip():
          raise VocabularyError(f"text {piece.strip()[:30]!r} inside a {open_modality.name} span")
      elif is_token and piece in _START:
        flush_text()
        open_modality = _START[piece]
      elif is_token and (piece in _END or _LAYOUT.id_to_code(_LAYOUT.special_token_to_id(piece)) is not None):
        raise VocabularyError(f"{piece!r} outside a modality span")
      else:
        text_buf.append(piece)  # plain text, or role/chat markers kept as text
  except VocabularyError as e:
    raise AnyGPTDataError("bad_token_string", str(e)) from None
  if open_modality is not None:
    raise AnyGPTDataError("bad_token_string", f"unterminated {open_modality.name} span")
  flush_text()
  return parts


def _messages(conversation) -> list[dict]:
  """AnyGPT nests messages one level deep ([[{...}, {...}]]); accept flat lists too."""
  out = []
  for item in conversation:
    if isinstance(item, list):
      out.extend(item)
    else:
      out.append(item)
  return out


def record_to_sample(record: dict, default_id: str, source: str) -> Sample:
  """One AnyGPT data record -> a shard Sample. Raises AnyGPTDataError with a stats reason."""
  if not isinstance(record, dict):
    raise AnyGPTDataError("malformed_record", "not a JSON object")
  sample_id = str(record.get("id", default_id))
  if "conversation" in record:
    parts = []
    for msg in _messages(record["conversation"]):
      if not isinstance(msg, dict) or msg.get("role") not in _ROLES or not isinstance(msg.get("message"), str):
        raise AnyGPTDataError("malformed_record", f"bad chat message {str(msg)[:60]!r}")
      parts.extend(message_parts(msg["message"], role=msg["role"]))
    return Sample(sample_id, parts, source=source)
  modality_keys = [m.name for m in MODALITIES if m.name in record]
  text = record.get("text")
  if not isinstance(text, str):
    raise AnyGPTDataError("malformed_record", "no text field")
  if len(modality_keys) > 1:
    raise AnyGPTDataError("malformed_record", f"several modalities {modality_keys}")
  if modality_keys:
    name = modality_keys[0]
    try:
      codes = modality_codes_from_string(_LAYOUT, name, str(record[name]))
    except VocabularyError as e:
      raise AnyGPTDataError("bad_token_string", str(e)) from None
    if not codes:
      raise AnyGPTDataError("bad_token_string", f"no {name} codes")
    return Sample(sample_id, [Part(name, codes=codes), Part("text", text=text)], source=source)
  parts = message_parts(text)
  if not any(p.kind != "text" for p in parts):
    raise AnyGPTDataError("malformed_record", "no modality tokens in a record without a modality field")
  return Sample(sample_id, parts, source=source)
