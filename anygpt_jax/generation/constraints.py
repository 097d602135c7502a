"""Modality-constrained decoding: one state machine for the JAX decoder and for transformers.

Inside `<soim>` only image codes, exactly `image_length` of them, then `<eoim>`; inside `<sosp>`
only speech codes until `<eosp>`; inside `<somu>` only music codes in codebook order (code t of
a frame from codebook t % codebooks, i.e. from its block of num_codes / codebooks ids) and only
whole frames before `<eomu>`. Outside a span no code and no end token can be drawn; padded
vocabulary rows never. A request that asks for a modality starts in the OPEN state, which allows
only that modality's start token, and after its span closes only the stop ids remain.
Open-ended spans (speech, music) are closed when the token budget would otherwise run out, and
outside a span a start token is drawn only while its shortest span still fits the budget (a chat
answer near its end cannot open an image it has no room to finish).

Everything is written against an array namespace `xp` (jax.numpy or torch) with elementwise
ops and table lookups only, so the JAX decoder (`decoding.py`) and the transformers
`LogitsProcessor` (`hf.py`) run the same definition. All ids come from `VocabularyLayout`.

State per row (int arrays [B]): mode (FREE, OPEN, SPAN, CLOSE), modality index (into
`layout.modality_ranges`), count (codes generated in the current span), close_after (1 when the
span is the whole answer: CLOSE follows it, else FREE).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from anygpt_jax.vocabulary.layout import MODALITIES, MODALITY_NAMES, VocabularyLayout, modality_named

FREE, OPEN, SPAN, CLOSE = 0, 1, 2, 3
# Token kinds of the lookup table.
_OTHER, _CODE, _START, _END = 0, 1, 2, 3
# AnyGPT's span shapes (the modality table's): SEED gives 32 codes per image; Encodec 32 kHz has 4 codebooks.
DEFAULT_IMAGE_LENGTH = modality_named("image").item_length
DEFAULT_MUSIC_CODEBOOKS = modality_named("music").codebooks


class ConstraintError(ValueError):
  """A constraint request that does not fit the layout (unknown modality, bad span shape)."""


@dataclasses.dataclass(frozen=True)
class ConstraintTables:
  """Lookup tables of the state machine, numpy, built once per layout.

  Attributes:
    allowed: bool [num_classes, padded_vocab]: which ids each state class may draw.
    token_kind: int32 [padded_vocab]: _OTHER, _CODE, _START or _END.
    token_modality: int32 [padded_vocab]: modality index of codes, start and end tokens (0 else).
    start_needs: int32 [padded_vocab]: at a start token, the fewest tokens its span takes
      (`min_span_tokens`); 0 elsewhere.
    lengths: int32 [num_modalities]: exact code count of a span (0: open-ended).
    frames: int32 [num_modalities]: codes per frame (codebooks) of each modality.
    block_class: int32 [num_modalities, max_frame]: class of "code of codebook l".
    block0_or_end_class, end_class, open_class: int32 [num_modalities].
  """

  allowed: np.ndarray
  token_kind: np.ndarray
  token_modality: np.ndarray
  start_needs: np.ndarray
  lengths: np.ndarray
  frames: np.ndarray
  block_class: np.ndarray
  block0_or_end_class: np.ndarray
  end_class: np.ndarray
  open_class: np.ndarray
  free_class: int
  close_class: int
  layout: VocabularyLayout
  stop_ids: tuple[int, ...]

  @property
  def modality_names(self) -> tuple[str, ...]:
    return MODALITY_NAMES

  def modality_index(self, name: str) -> int:
    if name not in MODALITY_NAMES:
      raise ConstraintError(f"unknown modality {name!r}; expected one of {MODALITY_NAMES}")
    return MODALITY_NAMES.index(name)

  def min_span_tokens(self, name: str) -> int:
    """Fewest tokens a span of `name` takes: start, the shortest legal code run, end."""
    return int(self.start_needs[self.layout.modality(name).start_id])


def build_tables(layout: VocabularyLayout, stop_ids: Sequence[int],
                 image_length: int = DEFAULT_IMAGE_LENGTH,
                 music_codebooks: int = DEFAULT_MUSIC_CODEBOOKS) -> ConstraintTables:
  """The state machine's tables for `layout`; `stop_ids` are what CLOSE allows (e.g. </s>, <eos>)."""
  vocab = layout.padded_vocab_size
  ranges = layout.modality_ranges
  # (codes per span or 0 for open-ended, codes per frame), from the modality table; the image
  # length and music codebooks are the loaded tokenizers' (callers pass them).
  shapes = {m.name: (m.item_length or 0, m.codebooks) for m in MODALITIES}
  shapes["image"] = (image_length, shapes["image"][1])
  shapes["music"] = (shapes["music"][0], music_codebooks)
  kind = np.zeros(vocab, np.int32)
  modality = np.zeros(vocab, np.int32)
  real = np.arange(vocab) < layout.vocab_size
  classes: list[np.ndarray] = []

  def add(mask: np.ndarray) -> int:
    classes.append(mask & real)
    return len(classes) - 1

  free = real.copy()
  for i, r in enumerate(ranges):
    kind[r.first_code_id:r.last_code_id + 1] = _CODE
    kind[r.start_id], kind[r.end_id] = _START, _END
    modality[r.first_code_id:r.end_id + 1] = i
    free[r.first_code_id:r.last_code_id + 1] = False
    free[r.end_id] = False
  stop = np.zeros(vocab, bool)
  for s in stop_ids:
    if not 0 <= s < layout.vocab_size:
      raise ConstraintError(f"stop id {s} outside the vocabulary of {layout.vocab_size}")
    stop[s] = True
  free_class, close_class = add(free), add(stop)

  lengths, frames = [], []
  max_frame = max(f for _, f in shapes.values())
  block_class = np.zeros((len(ranges), max_frame), np.int32)
  block0_or_end, end_class, open_class = [], [], []
  for i, r in enumerate(ranges):
    length, frame = shapes[r.modality.name]
    if frame < 1 or r.modality.num_codes % frame:
      raise ConstraintError(f"{r.modality.name}: {frame} codebooks do not split {r.modality.num_codes} codes")
    lengths.append(length)
    frames.append(frame)
    block = r.modality.num_codes // frame
    for level in range(max_frame):
      mask = np.zeros(vocab, bool)
      if level < frame:
        first = r.first_code_id + level * block
        mask[first:first + block] = True
      block_class[i, level] = add(mask)
    end = np.zeros(vocab, bool)
    end[r.end_id] = True
    first_block = np.zeros(vocab, bool)
    first_block[r.first_code_id:r.first_code_id + block] = True
    block0_or_end.append(add(first_block | end))
    end_class.append(add(end))
    start = np.zeros(vocab, bool)
    start[r.start_id] = True
    open_class.append(add(start))
  i32 = lambda x: np.asarray(x, np.int32)
  start_needs = np.zeros(vocab, np.int32)
  for r, length, frame in zip(ranges, lengths, frames):
    start_needs[r.start_id] = 2 + (length or frame)  # start, the shortest code run, end
  return ConstraintTables(np.stack(classes), kind, modality, start_needs, i32(lengths), i32(frames), block_class,
                          i32(block0_or_end), i32(end_class), i32(open_class), free_class, close_class, layout,
                          tuple(int(s) for s in stop_ids))


def initial_state(tables: ConstraintTables, requested: Sequence[str | None], xp, like=None) -> dict[str, Any]:
  """State arrays [B] for requests that ask for a modality (a name) or not (None)."""
  mode = [OPEN if m else FREE for m in requested]
  index = [tables.modality_index(m) if m else 0 for m in requested]
  close_after = [1 if m else 0 for m in requested]
  zeros = [0] * len(requested)
  return {k: _array(xp, v, like) for k, v in
          (("mode", mode), ("modality", index), ("count", zeros), ("close_after", close_after))}


def _array(xp, values, like):
  if like is not None:  # torch: keep the device of the scores
    return xp.tensor(values, dtype=xp.int32, device=like.device) if hasattr(xp, "tensor") else \
        xp.asarray(values, xp.int32)
  return xp.asarray(values, dtype=xp.int32)


def table(tables: ConstraintTables, name: str, xp, like=None):
  """One of the numpy tables as an `xp` array (on `like`'s device for torch)."""
  value = getattr(tables, name)
  if hasattr(xp, "from_numpy"):
    out = xp.from_numpy(np.ascontiguousarray(value))
    return out.to(like.device) if like is not None else out
  return xp.asarray(value)


def state_class(tables: ConstraintTables, state: dict[str, Any], remaining, xp):
  """int [B]: the class (row of `tables.allowed`) of each row's next token.

  remaining: int [B], tokens the row may still generate, this one included.
  """
  t = lambda name: table(tables, name, xp, state["mode"])
  mode, m, count = state["mode"], state["modality"], state["count"]
  frame = t("frames")[m]
  level = count % frame
  fixed = t("lengths")[m]
  # An open-ended span must end once another whole frame, its end token and the stop after it
  # would not fit in the budget.
  must_end = remaining < frame + 1 + state["close_after"]
  at_boundary = (level == 0) & (count > 0)
  open_ended = xp.where(at_boundary & must_end, t("end_class")[m],
                        xp.where(at_boundary, t("block0_or_end_class")[m], t("block_class")[m, level]))
  in_span = xp.where(fixed > 0, xp.where(count >= fixed, t("end_class")[m], t("block_class")[m, 0]), open_ended)
  free = xp.zeros_like(mode) + tables.free_class
  return xp.where(mode == SPAN, in_span,
                  xp.where(mode == OPEN, t("open_class")[m],
                           xp.where(mode == CLOSE, free * 0 + tables.close_class, free)))


def allowed_mask(tables: ConstraintTables, state: dict[str, Any], remaining, xp, vocab: int | None = None):
  """bool [B, vocab]: the ids each row may draw next (vocab: the logits' width, <= padded)."""
  allowed = table(tables, "allowed", xp, state["mode"])
  needs = table(tables, "start_needs", xp, state["mode"])
  if vocab is not None:
    allowed, needs = allowed[:, :vocab], needs[:vocab]
  # Outside a span, a start token only while its shortest span fits in what is left of the budget.
  fits = (needs[None, :] <= remaining[:, None]) | (state["mode"] != FREE)[:, None]
  return allowed[state_class(tables, state, remaining, xp)] & fits


def advance(tables: ConstraintTables, state: dict[str, Any], tokens, xp) -> dict[str, Any]:
  """The state after each row drew `tokens` (int [B])."""
  kind = table(tables, "token_kind", xp, state["mode"])[tokens]
  token_modality = table(tables, "token_modality", xp, state["mode"])[tokens]
  mode, m, count = state["mode"], state["modality"], state["count"]
  opens = (kind == _START) & ((mode == FREE) | (mode == OPEN))
  closes = (kind == _END) & (mode == SPAN)
  after_span = xp.where(state["close_after"] > 0, xp.zeros_like(mode) + CLOSE, xp.zeros_like(mode) + FREE)
  new_mode = xp.where(opens, xp.zeros_like(mode) + SPAN, xp.where(closes, after_span, mode))
  new_count = xp.where(opens, xp.zeros_like(count), xp.where((kind == _CODE) & (mode == SPAN), count + 1, count))
  return {"mode": new_mode, "modality": xp.where(opens, token_modality, m), "count": new_count,
          "close_after": state["close_after"]}


def apply(tables: ConstraintTables, state: dict[str, Any], logits, remaining, xp):
  """logits [B, V] with every id the state forbids set to the dtype's lowest value."""
  mask = allowed_mask(tables, state, remaining, xp, logits.shape[-1])
  low = xp.finfo(logits.dtype).min
  return xp.where(mask, logits, xp.zeros_like(logits) + low)


# --- checking finished outputs --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Span:
  """One modality span of an output: its local codes and whether its end token came."""

  modality: str
  codes: tuple[int, ...]
  closed: bool


def find_spans(layout: VocabularyLayout, ids: Sequence[int]) -> list[Span]:
  """The modality spans of generated ids, in order (codes as modality-local numbers)."""
  spans, current, codes = [], None, []
  for token in ids:
    kind = layout.modality_of_id(int(token))
    if current is None:
      for r in layout.modality_ranges:
        if token == r.start_id:
          current, codes = r, []
      continue
    if token == current.end_id:
      spans.append(Span(current.modality.name, tuple(codes), True))
      current = None
    elif current.contains_code_id(int(token)):
      codes.append(int(token) - current.first_code_id)
    else:
      raise ConstraintError(f"id {token} ({kind}) inside a {current.modality.name} span")
  if current is not None:
    spans.append(Span(current.modality.name, tuple(codes), False))
  return spans
