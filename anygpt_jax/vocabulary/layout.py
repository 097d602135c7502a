"""The id layout of AnyGPT's expanded vocabulary, computed from the text vocabulary size.

Pure Python on purpose: the PyTorch tokenizer workers, the SeqIO pipeline and the
JAX model all read the same layout, and the workers must not import JAX or TF.

With 32000 SentencePiece pieces the ids are exactly AnyGPT-base's:

  0..31999          text (SentencePiece)
  32000..32003      [Human] [MMGPT] <eoh> <eos>
  32004..40195      image codes <👀0>..<👀8191>, then <soim> <eoim>
  40198..41221      speech codes <🗣️0>..<🗣️1023>, then <sosp> <eosp>
  41224..49415      music codes <🎶0>..<🎶8191>, then <somu> <eomu>
  (49418, 49419     <-Res-> <-Ins-> when the chat tokens are enabled: AnyGPT's SFT code adds
                    them to AnyGPT-base's tokenizer in that order)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

ROLE_TOKENS = ("[Human]", "[MMGPT]", "<eoh>", "<eos>")
CHAT_TOKENS = ("<-Res->", "<-Ins->")  # AnyGPT's SFT adds <-Res-> first (49418), then <-Ins-> (49419)

# SentencePiece's fixed ids at the start of the text vocabulary, and SeqIO's padding id
# (seqio.vocabularies.PAD_ID, which shares id 0 with <unk>: padding never carries loss).
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class Modality:
  """A discrete modality: the one place that says what a modality is.

  Attributes:
    name: its name in shard parts, task kinds, metrics and command lines ('image').
    num_codes: codes in its codebook(s), all codebooks together (music: 4 x 2048 = 8192).
    symbol: the prefix of its code strings (`<👀17>`).
    tag: the two letters of its start/end tokens (`<soim>`, `<eoim>`).
    codes_per_second: codes (all codebooks together) per second of a timed medium; None for
      media without a duration (images).
    codebooks: codes per frame; frame position k takes codes from block k of num_codes / codebooks.
    item_length: codes per item when every item has the same count (SEED: 32 per image), else None.
  """

  name: str
  num_codes: int
  symbol: str
  tag: str
  codes_per_second: float | None = None
  codebooks: int = 1
  item_length: int | None = None

  @property
  def start_token(self) -> str:
    return f"<so{self.tag}>"

  @property
  def end_token(self) -> str:
    return f"<eo{self.tag}>"

  @property
  def codebook_size(self) -> int:
    return self.num_codes // self.codebooks

  def code_string(self, code: int) -> str:
    return f"<{self.symbol}{code}>"


# The modalities in id order (adding one here is what adding a modality to the library takes).
MODALITIES = (
    Modality("image", 8192, "\U0001F440", "im", item_length=32),  # SEED: 32 codes per image
    # The speech symbol is U+1F5E3 followed by the emoji variation selector U+FE0F.
    Modality("speech", 1024, "\U0001F5E3\uFE0F", "sp", codes_per_second=50),  # SpeechTokenizer RVQ-1, 50 Hz
    Modality("music", 8192, "\U0001F3B6", "mu", codes_per_second=200, codebooks=4),  # Encodec: 4 x 2048, 50 Hz
)
MODALITY_NAMES = tuple(m.name for m in MODALITIES)
TEXT = "text"
# Text, then the modalities in id order: the part kinds of a shard record, and the index that
# `target_modality` gives each token (per-modality losses and metrics are in this order).
CONTENT_KINDS = (TEXT,) + MODALITY_NAMES


def modality_named(name: str) -> Modality:
  """The `Modality` called `name`; VocabularyError names the known ones otherwise."""
  for m in MODALITIES:
    if m.name == name:
      return m
  raise VocabularyError(f"unknown modality {name!r}; expected one of {MODALITY_NAMES}")


class VocabularyError(ValueError):
  """An id, code or token string that does not fit the layout."""


@dataclasses.dataclass(frozen=True)
class ModalityRange:
  """Where one modality's codes and its start/end tokens sit in the global id space."""

  modality: Modality
  first_code_id: int

  @property
  def last_code_id(self) -> int:
    return self.first_code_id + self.modality.num_codes - 1

  @property
  def start_id(self) -> int:
    return self.first_code_id + self.modality.num_codes

  @property
  def end_id(self) -> int:
    return self.start_id + 1

  def contains_code_id(self, token_id: int) -> bool:
    return self.first_code_id <= token_id <= self.last_code_id


@dataclasses.dataclass(frozen=True)
class VocabularyLayout:
  """AnyGPT's vocabulary layout on top of a text vocabulary of `text_vocab_size` pieces.

  Attributes:
    text_vocab_size: SentencePiece pieces (32000 for LLaMA-2).
    chat_tokens: whether `<-Res->`/`<-Ins->` (the chat model's extra tokens) follow.
    pad_multiple: embedding rows are padded up to a multiple of this (128 x tensor
      parallelism is the usual choice) so the vocab axis shards evenly.
  """

  text_vocab_size: int = 32000
  chat_tokens: bool = False
  pad_multiple: int = 128

  def __post_init__(self):
    if self.text_vocab_size < 3:
      raise VocabularyError(
          f"text_vocab_size={self.text_vocab_size}: SentencePiece needs at least <unk>, <s>, </s>")
    if self.pad_multiple < 1:
      raise VocabularyError(f"pad_multiple={self.pad_multiple} must be positive")

  # --- groups -------------------------------------------------------------------------------
  @property
  def first_role_id(self) -> int:
    return self.text_vocab_size

  def role_id(self, token: str) -> int:
    if token not in ROLE_TOKENS:
      raise VocabularyError(f"{token!r} is not a role token; expected one of {ROLE_TOKENS}")
    return self.first_role_id + ROLE_TOKENS.index(token)

  @property
  def human_id(self) -> int:
    return self.role_id("[Human]")

  @property
  def mmgpt_id(self) -> int:
    return self.role_id("[MMGPT]")

  @property
  def eos_id(self) -> int:
    return self.role_id("<eos>")

  def modality(self, name: str) -> ModalityRange:
    first = self.first_role_id + len(ROLE_TOKENS)
    for m in MODALITIES:
      if m.name == name:
        return ModalityRange(m, first)
      first += m.num_codes + 2
    raise VocabularyError(f"unknown modality {name!r}; expected one of {MODALITY_NAMES}")

  @property
  def modality_ranges(self) -> tuple[ModalityRange, ...]:
    return tuple(self.modality(name) for name in MODALITY_NAMES)

  @property
  def first_chat_id(self) -> int:
    return self.modality(MODALITY_NAMES[-1]).end_id + 1

  @property
  def vocab_size(self) -> int:
    """Real rows: text, roles, modalities (and chat tokens). 49418 for AnyGPT-base."""
    return self.first_chat_id + (len(CHAT_TOKENS) if self.chat_tokens else 0)

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the embedding and output head: vocab_size rounded up to pad_multiple."""
    return -(-self.vocab_size // self.pad_multiple) * self.pad_multiple

  # --- codes <-> ids ------------------------------------------------------------------------
  def code_to_id(self, modality: str, codes: Sequence[int] | Iterable[int]) -> list[int]:
    """Modality-local codes (e.g. image in [0, 8192)) to global ids. Raises on out-of-range codes."""
    r = self.modality(modality)
    out = []
    for c in codes:
      c = int(c)
      if not 0 <= c < r.modality.num_codes:
        raise VocabularyError(f"{modality} code {c} outside [0, {r.modality.num_codes})")
      out.append(r.first_code_id + c)
    return out

  def id_to_code(self, token_id: int) -> tuple[str, int] | None:
    """(modality, local code) for a modality code id, None for any other id."""
    for r in self.modality_ranges:
      if r.contains_code_id(token_id):
        return r.modality.name, token_id - r.first_code_id
    return None

  def modality_of_id(self, token_id: int) -> str:
    """'text', a modality's name, 'special' (roles, chat) or 'padding'."""
    if 0 <= token_id < self.text_vocab_size:
      return "text"
    for r in self.modality_ranges:
      if r.first_code_id <= token_id <= r.end_id:
        return r.modality.name
    if token_id < self.vocab_size:
      return "special"
    if token_id < self.padded_vocab_size:
      return "padding"
    raise VocabularyError(f"id {token_id} outside the padded vocabulary of {self.padded_vocab_size}")

  # --- token strings ------------------------------------------------------------------------
  def added_tokens(self) -> list[str]:
    """Every added token string in id order, starting at id `text_vocab_size` (AnyGPT's order)."""
    tokens = list(ROLE_TOKENS)
    for m in MODALITIES:
      tokens.extend(m.code_string(i) for i in range(m.num_codes))
      tokens.extend((m.start_token, m.end_token))
    if self.chat_tokens:
      tokens.extend(CHAT_TOKENS)
    return tokens

  def special_token_to_id(self, token: str) -> int:
    """Id of one added token string such as `<soim>`, `<🗣️7>` or `[Human]`."""
    if token in ROLE_TOKENS:
      return self.role_id(token)
    if token in CHAT_TOKENS:
      if not self.chat_tokens:
        raise VocabularyError(f"{token!r} needs a layout with chat_tokens=True")
      return self.first_chat_id + CHAT_TOKENS.index(token)
    for r in self.modality_ranges:
      m = r.modality
      if token == m.start_token:
        return r.start_id
      if token == m.end_token:
        return r.end_id
      prefix = "<" + m.symbol
      if token.startswith(prefix) and token.endswith(">"):
        digits = token[len(prefix):-1]
        if not digits.isdigit():
          raise VocabularyError(f"malformed {m.name} token {token!r}")
        code = int(digits)
        if code >= m.num_codes:
          raise VocabularyError(f"{m.name} token {token!r}: code {code} outside [0, {m.num_codes})")
        return r.first_code_id + code
    raise VocabularyError(f"{token!r} is not an AnyGPT added token")

  def id_to_special_token(self, token_id: int) -> str:
    """Inverse of `special_token_to_id` for any id at or above `text_vocab_size`."""
    if self.first_role_id <= token_id < self.first_role_id + len(ROLE_TOKENS):
      return ROLE_TOKENS[token_id - self.first_role_id]
    for r in self.modality_ranges:
      if r.contains_code_id(token_id):
        return r.modality.code_string(token_id - r.first_code_id)
      if token_id == r.start_id:
        return r.modality.start_token
      if token_id == r.end_id:
        return r.modality.end_token
    if self.chat_tokens and self.first_chat_id <= token_id < self.vocab_size:
      return CHAT_TOKENS[token_id - self.first_chat_id]
    raise VocabularyError(f"id {token_id} is not an added token of this layout")

  def groups(self) -> dict[str, dict[str, int]]:
    """Each token group with its first and last id, plus the sizes (what `anygpt-vocab` prints)."""
    groups = {"text": {"first": 0, "last": self.text_vocab_size - 1}}
    for token in ROLE_TOKENS:
      groups[token] = {"first": self.role_id(token), "last": self.role_id(token)}
    for r in self.modality_ranges:
      name = r.modality.name
      groups[f"{name}_codes"] = {"first": r.first_code_id, "last": r.last_code_id}
      groups[r.modality.start_token] = {"first": r.start_id, "last": r.start_id}
      groups[r.modality.end_token] = {"first": r.end_id, "last": r.end_id}
    if self.chat_tokens:
      for i, token in enumerate(CHAT_TOKENS):
        groups[token] = {"first": self.first_chat_id + i, "last": self.first_chat_id + i}
    if self.padded_vocab_size > self.vocab_size:
      groups["padding"] = {"first": self.vocab_size, "last": self.padded_vocab_size - 1}
    return groups

  def to_json_dict(self) -> dict:
    return {
        "text_vocab_size": self.text_vocab_size,
        "chat_tokens": self.chat_tokens,
        "pad_multiple": self.pad_multiple,
        "vocab_size": self.vocab_size,
        "padded_vocab_size": self.padded_vocab_size,
        "groups": self.groups(),
    }

  @classmethod
  def from_json_dict(cls, d: dict) -> "VocabularyLayout":
    layout = cls(d["text_vocab_size"], d.get("chat_tokens", False), d.get("pad_multiple", 128))
    if "vocab_size" in d and d["vocab_size"] != layout.vocab_size:
      raise VocabularyError(f"layout file says vocab_size={d['vocab_size']}, computed {layout.vocab_size}")
    return layout


def target_modality(ids, layout: VocabularyLayout):
  """Index into `CONTENT_KINDS` per id: 0 text (and roles, chat tokens, padding), k for the k-th modality.

  A modality's start/end tokens count as that modality. Pure arithmetic on the layout's
  ranges, so it works on numpy and jax.numpy arrays alike (same shape as `ids`, int32) and
  needs neither TensorFlow nor JAX.
  """
  out = 0 * ids
  for index, r in enumerate(layout.modality_ranges, start=1):
    inside = (ids >= r.first_code_id) * (ids <= r.end_id)
    out = out + index * inside
  return out.astype("int32") if hasattr(out, "astype") else out


def control_token_pattern(chat: bool = False) -> str:
  """A regular expression (Python's `re` and RE2 alike) of the added-token strings: role markers,
  chat markers (left out with `chat=True`: text of chat messages may hold them), start/end tokens,
  or a modality code (any text between a modality's symbol and `>`, so that a malformed code is
  found and reported)."""
  literals = ROLE_TOKENS + (() if chat else CHAT_TOKENS) + tuple(
      t for m in MODALITIES for t in (m.start_token, m.end_token))
  return "|".join([re.escape(t) for t in literals] +
                  ["<(?:" + "|".join(re.escape(m.symbol) for m in MODALITIES) + ")[^<>]*>"])


ADDED_TOKEN_PATTERN = re.compile(control_token_pattern())
_CHAT_TEXT_FORBIDDEN = re.compile(control_token_pattern(chat=True))


def control_token_in_text(text: str, chat: bool = False) -> tuple[int, str] | None:
  """The first added-token string that raw text may not hold, as (character position, token), or None.

  Text is text: a caption, transcript, document text or chat message that contained `<soim>`,
  `[MMGPT]`, `<eos>` or a code token would be read as that control token when the sample is
  rendered (a span that never closes, a loss mask that trains the user's turn). Such a record is
  rejected (category `special_token_in_text`) by the tokenization job, refused by generation
  requests and skipped (and counted) by the training pipeline, rather than silently re-read. AnyInstruct's `<-Ins->` and `<-Res->` are the one
  exception: AnyGPT writes them inside chat messages (`chat=True`).
  """
  match = (_CHAT_TEXT_FORBIDDEN if chat else ADDED_TOKEN_PATTERN).search(text)
  return (match.start(), match.group()) if match else None


def split_added_tokens(text: str) -> list[tuple[bool, str]]:
  """Splits AnyGPT's string form into (is_added_token, piece) chunks, in order.

  Plain text between added tokens keeps its exact characters (spaces included), so
  `"".join(piece for _, piece in split_added_tokens(s)) == s`.
  """
  chunks, pos = [], 0
  for match in ADDED_TOKEN_PATTERN.finditer(text):
    if match.start() > pos:
      chunks.append((False, text[pos:match.start()]))
    chunks.append((True, match.group()))
    pos = match.end()
  if pos < len(text):
    chunks.append((False, text[pos:]))
  return chunks


def modality_codes_from_string(layout: VocabularyLayout, modality: str, text: str) -> list[int]:
  """Local codes of `<soim><👀1736>...<eoim>`-style strings (start/end tokens optional).

  Raises VocabularyError on any token of another modality, a malformed or out-of-range
  code, or stray text.
  """
  r = layout.modality(modality)
  codes = []
  for is_token, piece in split_added_tokens(text.strip()):
    if not is_token:
      if piece.strip():
        raise VocabularyError(f"unexpected text {piece.strip()[:40]!r} inside {modality} tokens")
      continue
    if piece in (r.modality.start_token, r.modality.end_token):
      continue
    token_id = layout.special_token_to_id(piece)
    if not r.contains_code_id(token_id):
      raise VocabularyError(f"token {piece!r} is not a {modality} code")
    codes.append(token_id - r.first_code_id)
  return codes
