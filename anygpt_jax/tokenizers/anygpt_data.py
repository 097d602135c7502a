"""AnyGPT's own data files (modality tokens as strings) -> shard samples, no model needed.

Three record shapes are recognised:
  pair:        {"text": "...", "speech": "<sosp><🗣️65>...<eosp>"}  (or "image"/"music")
  chat:        {"id": 1, "conversation": [[{"role": "user", "message": "<sosp>...<eosp> Reply."}, ...]]}
  interleaved: {"text": "words <soim><👀1>...<eoim> more words"}
A pair becomes [modality part, text part]; chats and interleaved documents become their text
and modality parts in order (text kept verbatim, spaces included; empty pieces dropped), with
each message's role on its parts. `<-Ins->`/`<-Res->` stay inside a chat message's text; any other
control token inside text rejects the record (`special_token_in_text`).
"""

from __future__ import annotations

from anygpt_jax.data.shards import Part, Sample
from anygpt_jax.vocabulary.layout import (MODALITIES, VocabularyError, VocabularyLayout,
                                          control_token_in_text, split_added_tokens)

_LAYOUT = VocabularyLayout(chat_tokens=True)
_START = {m.start_token: m for m in MODALITIES}
_END = {m.end_token: m for m in MODALITIES}
_ROLES = ("user", "assistant", "system")


class AnyGPTDataError(ValueError):
  """A record whose token strings or structure do not parse.

  `reason` is its stats key; `detail` names the field, the offending token and its position.
  """

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


def _code(modality_name: str, token: str) -> int:
  token_id = _LAYOUT.special_token_to_id(token)
  r = _LAYOUT.modality(modality_name)
  if not r.contains_code_id(token_id):
    raise VocabularyError(f"token {token!r} is not a {modality_name} code")
  return token_id - r.first_code_id


def message_parts(text: str, role: str = "", field: str = "text") -> list[Part]:
  """Splits one message into text and modality parts, in order.

  Raises AnyGPTDataError naming `field`, the token and its character position:
  'bad_token_string' (an out-of-range or malformed code, a code of another modality, text
  inside a span, a code or end token outside any span, an empty span), 'nested_span' (a start token inside
  an open span), 'unclosed_span' (a span never closed), 'special_token_in_text' (a role token
  in the text, or a chat token outside a chat message: `layout.control_token_in_text`).
  """
  parts, text_buf, open_modality, codes = [], [], None, []
  pos = 0

  def flush_text():
    joined = "".join(text_buf)  # verbatim: AnyGPT's template keeps the spaces next to modality spans
    if joined:
      parts.append(Part("text", text=joined, role=role))
    text_buf.clear()

  def fail(reason, what):
    raise AnyGPTDataError(reason, f"field {field!r}, char {pos}: {what}")

  for is_token, piece in split_added_tokens(text):
    if open_modality is not None:
      if is_token and piece == open_modality.end_token:
        if not codes:  # as in a pair's field: a span carries codes
          pos = span_start
          fail("bad_token_string", f"an empty {open_modality.start_token}{open_modality.end_token} span")
        parts.append(Part(open_modality.name, codes=list(codes), role=role))
        open_modality, codes = None, []
      elif is_token and piece in _START:
        fail("nested_span", f"{piece!r} inside an open {open_modality.start_token} span")
      elif is_token:
        try:
          codes.append(_code(open_modality.name, piece))
        except VocabularyError as e:
          fail("bad_token_string", str(e))
      elif piece.strip():
        fail("bad_token_string", f"text {piece.strip()[:30]!r} inside a {open_modality.name} span")
    elif is_token and piece in _START:
      flush_text()
      open_modality, span_start = _START[piece], pos
    elif is_token and piece in _END:
      fail("bad_token_string", f"{piece!r} closes no open span")
    elif is_token and _is_code_token(piece):
      fail("bad_token_string", f"{piece!r} outside a modality span")
    elif is_token and control_token_in_text(piece, chat=bool(role)):
      fail("special_token_in_text", f"{piece!r} is a control token, not text")
    else:
      text_buf.append(piece)  # plain text, or AnyInstruct's <-Ins->/<-Res-> inside a chat message
    pos += len(piece)
  if open_modality is not None:
    pos = span_start
    fail("unclosed_span", f"{open_modality.start_token} with {len(codes)} codes is never closed by "
         f"{open_modality.end_token}")
  flush_text()
  return parts


def _is_code_token(piece: str) -> bool:
  """True for a modality code token (`<👀12>`), also an out-of-range or malformed one."""
  try:
    return _LAYOUT.id_to_code(_LAYOUT.special_token_to_id(piece)) is not None
  except VocabularyError:
    return any(piece.startswith("<" + m.symbol) for m in MODALITIES)


def conversation_messages(conversation) -> list:
  """The messages of a `conversation` field: `[[{...}, ...]]` as AnyGPT's and AnyInstruct's files
  nest them (one inner list per record), or a flat list.

  AnyGPT's SFT preprocessing trains each inner list as a sample of its own, so a record holding
  several inner lists is rejected ('malformed_record') rather than merged into one chat that AnyGPT
  would never train.
  """
  if not isinstance(conversation, list):
    raise AnyGPTDataError("malformed_record", "'conversation' is not a list of messages")
  inner = [item for item in conversation if isinstance(item, list)]
  if not inner:
    return conversation
  if len(conversation) == 1:
    return conversation[0]
  raise AnyGPTDataError("malformed_record", f"'conversation' holds {len(inner)} inner lists among "
                        f"{len(conversation)} items; AnyGPT trains each inner list as a sample of its own: write "
                        "one record per conversation")


def record_to_sample(record: dict, default_id: str, source: str) -> Sample:
  """One AnyGPT data record -> a shard Sample. Raises AnyGPTDataError with a stats reason."""
  if not isinstance(record, dict):
    raise AnyGPTDataError("malformed_record", "not a JSON object")
  sample_id = str(record.get("id", default_id))
  if "conversation" in record:
    parts = []
    for i, msg in enumerate(conversation_messages(record["conversation"])):
      if not isinstance(msg, dict) or msg.get("role") not in _ROLES or not isinstance(msg.get("message"), str):
        raise AnyGPTDataError("malformed_record", f"conversation message {i}: {str(msg)[:60]!r}")
      parts.extend(message_parts(msg["message"], role=msg["role"], field=f"conversation[{i}].message"))
    return Sample(sample_id, parts, source=source)
  modality_keys = [m.name for m in MODALITIES if m.name in record]
  text = record.get("text")
  if not isinstance(text, str):
    raise AnyGPTDataError("malformed_record", "no text field")
  found = control_token_in_text(text) if modality_keys else None
  if found:
    raise AnyGPTDataError("special_token_in_text", f"field 'text', char {found[0]}: {found[1]!r} is a control "
                          "token, not text")
  if len(modality_keys) > 1:
    raise AnyGPTDataError("malformed_record", f"several modalities {modality_keys}")
  if modality_keys:
    name = modality_keys[0]
    value = record[name]
    if not isinstance(value, str):
      raise AnyGPTDataError("malformed_record", f"field {name!r} is not a string")
    spans = [p for p in message_parts(value, field=name) if p.kind != "text" or p.text.strip()]
    if [p.kind for p in spans] != [name] or not spans[0].codes:
      raise AnyGPTDataError("bad_token_string", f"field {name!r} must hold one non-empty {name} span, "
                            f"found {[p.kind for p in spans]}")
    return Sample(sample_id, [spans[0], Part("text", text=text)], source=source)
  parts = message_parts(text)
  if not any(p.kind != "text" for p in parts):
    raise AnyGPTDataError("malformed_record", "no modality tokens in a record without a modality field")
  return Sample(sample_id, parts, source=source)
