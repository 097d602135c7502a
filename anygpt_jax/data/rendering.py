"""AnyGPT's templates and chat format, rendered to ids inside a tf.data graph.

A sample (parsed from a shard, see `anygpt_jax.data.shards`) is rendered in two steps:

1. Its *string form* is built in TF, with every modality item written as its empty pair of
   start/end tokens (`<soim><eoim>`): the codes never become strings.
     - X->text pair:  `[Human]: {instruction} <soim><eoim><eoh> [MMGPT]: {text}<eos>`
     - text->X pair:  `[Human]: {instruction} This is input: {text}<eoh> [MMGPT]: <soim><eoim><eos>`
     - interleaved:   the parts concatenated as they are (text keeps its own spaces).
     - chat:          `{system}\n[Human]: {user parts}<eoh>\n[MMGPT]: {assistant parts}<eos>\n...`,
                      AnyGPT's "MMGPT" conversation template (`vocabulary.chat_format`, which the
                      export's chat template is written from); `{system}` is the chat's system
                      part or AnyGPT's system line. Consecutive parts of
                      one role form one turn, concatenated as they are (spaces next to modality
                      spans kept); an assistant speech reply is e.g. a text part
                      `<-Ins-> {transcript}\n <-Res-> {reply}` then a speech part.
2. The string is split at added tokens exactly as `AnyGPTVocabulary.encode` splits it; text
   chunks go through SentencePiece (dummy prefix as that vocabulary's `legacy` mode says),
   added tokens map to their ids, and right after the k-th start token the k-th modality
   part's codes are inserted as global ids (`layout.modality(kind).first_code_id + code`).
   `<s>` goes before and `</s>` after.

So the ids equal `vocabulary.encode(reference string)` where the reference string writes the
codes as `<👀12>`-style tokens (`render_reference_string`, used by the tests).

Loss weights: pairs and interleaved documents train on every token but `<s>` (nothing
predicts it). Chats train as AnyGPT's SFT code masks them: each assistant reply from after
`[MMGPT]:` through the `<eos>` that closes it, and the final `</s>`; nothing else.

Modality code strings (`<👀12>`) written inside text parts are not recognised by the graph
renderer (shards carry codes as codes); role, chat and start/end token strings are.
"""

from __future__ import annotations

import importlib.resources
import pathlib
import re
from typing import Mapping, Sequence

import tensorflow as tf
import tensorflow_text as tf_text

from anygpt_jax.data.shards import PART_KINDS, Part
from anygpt_jax.vocabulary import chat_format
from anygpt_jax.vocabulary.layout import (BOS_ID, CHAT_TOKENS, EOS_ID, MODALITIES, MODALITY_NAMES, ROLE_TOKENS,
                                          control_token_pattern)
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary

PAIR_KINDS = {f"{m}_text": m for m in MODALITY_NAMES}  # image_text -> image, ...
TASK_KINDS = tuple(PAIR_KINDS) + ("interleaved", "chat")
DIRECTIONS = ("to_text", "from_text")  # X->text, text->X
# The instruction pools are package data of anygpt_jax.tasks (the repository's tasks/, mapped by setup.py):
# the same lookup finds them in an editable install and in a wheel.
INSTRUCTIONS_DIR = pathlib.Path(str(importlib.resources.files("anygpt_jax.tasks").joinpath("instructions")))


class RenderError(ValueError):
  """A sample that cannot be rendered (wrong parts for its task kind)."""


# --- instruction pools ----------------------------------------------------------------------
def instruction_file(modality: str, direction: str, directory=None) -> pathlib.Path:
  return pathlib.Path(directory or INSTRUCTIONS_DIR) / f"{modality}_{direction}.txt"


def load_instructions(modality: str, direction: str, directory=None) -> list[str]:
  """One instruction per non-empty line of `tasks/instructions/{modality}_{direction}.txt`."""
  path = instruction_file(modality, direction, directory)
  lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines()]
  lines = [l for l in lines if l and not l.startswith("#")]
  if not lines:
    raise RenderError(f"no instructions in {path}")
  return lines


# --- the reference (Python) string form -----------------------------------------------------
def modality_string(layout, kind: str, codes: Sequence[int]) -> str:
  m = layout.modality(kind).modality
  return m.start_token + "".join(m.code_string(int(c)) for c in codes) + m.end_token


def pair_string(instruction: str, modality_item: str, text: str, to_text: bool) -> str:
  if to_text:
    return f"[Human]: {instruction} {modality_item}<eoh> [MMGPT]: {text}<eos>"
  return f"[Human]: {instruction} This is input: {text}<eoh> [MMGPT]: {modality_item}<eos>"


def part_string(layout, part: Part) -> str:
  return part.text if part.kind == "text" else modality_string(layout, part.kind, part.codes)


def chat_string(layout, parts: Sequence[Part]) -> str:
  """AnyGPT's conversation format (`vocabulary.chat_format`) of a chat's parts, codes as tokens."""
  return chat_format.render_turns(chat_format.merge_turns([(p.role, part_string(layout, p)) for p in parts]))


def render_reference_string(layout, kind: str, parts: Sequence[Part], instruction: str = "",
                            to_text: bool = True) -> str:
  """The AnyGPT string form of a sample with codes written as tokens (no `<s>`/`</s>`)."""
  if kind in PAIR_KINDS:
    return pair_string(instruction, part_string(layout, parts[0]), parts[1].text, to_text)
  if kind == "interleaved":
    return "".join(part_string(layout, p) for p in parts)
  if kind == "chat":
    return chat_string(layout, parts)
  raise RenderError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")


def reference_ids(vocabulary: AnyGPTVocabulary, kind: str, parts: Sequence[Part], instruction: str = "",
                   to_text: bool = True) -> list[int]:
  """`<s>` + vocabulary.encode(reference string) + `</s>`: what the graph renderer must give."""
  text = render_reference_string(vocabulary.layout, kind, parts, instruction, to_text)
  return [BOS_ID] + list(vocabulary.encode(text)) + [EOS_ID]


# --- the graph renderer ---------------------------------------------------------------------
class GraphRenderer:
  """Renders parsed shard records to `targets` and `loss_weights` (int32 [n]) in tf.data.

  Built once per task from the vocabulary; its methods are pure TF functions of a batch of
  examples (`render_batch`) or of one (`render`).
  """

  def __init__(self, vocabulary: AnyGPTVocabulary):
    self.vocabulary = vocabulary
    self.layout = layout = vocabulary.layout
    self.tokenizer = vocabulary.tf_tokenizer()
    special = list(ROLE_TOKENS) + (list(CHAT_TOKENS) if layout.chat_tokens else [])
    for m in MODALITIES:
      special += [m.start_token, m.end_token]
    self.pattern = "|".join(re.escape(t) for t in special)
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(special), tf.constant([layout.special_token_to_id(t) for t in special], tf.int32)),
        default_value=-1)
    ranges = [layout.modality(m) for m in MODALITY_NAMES]
    # Per part kind (index in PART_KINDS, i.e. layout.CONTENT_KINDS): text first, then the modalities.
    self.first_code_id = tf.constant([0] + [r.first_code_id for r in ranges], tf.int64)
    self.num_codes = tf.constant([0] + [r.modality.num_codes for r in ranges], tf.int64)
    self.start_ids = tf.constant([r.start_id for r in ranges], tf.int32)
    self.end_ids = tf.constant([r.end_id for r in ranges], tf.int32)
    self.item_strings = tf.constant([""] + [r.modality.start_token + r.modality.end_token for r in ranges])
    self.kind_names = tf.constant(list(PART_KINDS))
    self.roles = tf.constant(chat_format.ROLES)
    self.turn_open = tf.constant([chat_format.TURN_OPEN[r] for r in chat_format.ROLES])
    self.turn_close = tf.constant([chat_format.TURN_CLOSE[r] for r in chat_format.ROLES])
    # Tokens of the `:` that follows `[MMGPT]` in the chat template (its chunk gets the dummy
    # prefix in legacy mode); whitespace splits SentencePiece words, so they are the same in context.
    self.colon_tokens = len(vocabulary.encode_text(":", dummy_prefix=vocabulary.legacy))

  # -- parts ---------------------------------------------------------------------------------
  # A batch holds B parsed examples: `part_*` ragged [B, None] (parts), `part_codes` ragged
  # [B, None] (codes), `id` and `shard` [B]. Working on batches keeps the per-op overhead of TF
  # off the per-sample cost.
  def kind_index(self, kinds: tf.Tensor) -> tf.Tensor:
    """Part kind strings [P] -> indices into PART_KINDS [P] int32 (-1 for unknown)."""
    matches = tf.equal(kinds[:, None], self.kind_names[None, :])
    return tf.where(tf.reduce_any(matches, 1), tf.argmax(tf.cast(matches, tf.int32), 1, output_type=tf.int32), -1)

  @staticmethod
  def _record(batch, row):
    """Diagnostics naming one example: shard file and record id."""
    return ["shard", tf.gather(batch["shard"], row), "record", tf.gather(batch["id"], row)]

  def global_code_rows(self, batch, kinds: tf.Tensor) -> tf.RaggedTensor:
    """The modality parts' codes as global ids, ragged [M, None] int32 (all examples, in order).

    Fails (InvalidArgumentError) naming the shard file and record id on an unknown kind or a
    code outside its modality's range.
    """
    lengths = batch["part_code_len"].flat_values
    codes = batch["part_codes"].flat_values
    code_kind = tf.repeat(kinds, tf.cast(lengths, tf.int32))
    num = tf.gather(self.num_codes, tf.maximum(code_kind, 0))
    bad = tf.logical_not(tf.logical_and(tf.logical_and(codes >= 0, codes < num), code_kind > 0))
    # The first bad code (index == number of codes when none; padded copies keep it valid).
    first_bad = tf.argmax(tf.cast(tf.concat([bad, [True]], 0), tf.int32), output_type=tf.int32)
    row_of_code = tf.searchsorted(tf.cast(batch["part_codes"].row_splits[1:], tf.int32), [first_bad],
                                  side="right")[0]
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        ["modality code out of range in"] + self._record(batch, tf.minimum(row_of_code, tf.size(batch["id"]) - 1)) +
        ["code", tf.gather(tf.concat([codes, [0]], 0), first_bad),
         "allowed [0, n) with n =", tf.gather(tf.concat([num, [0]], 0), first_bad)], summarize=8)
    part_row = batch["part_kind"].value_rowids()
    first_unknown = tf.argmax(tf.cast(tf.concat([kinds < 0, [True]], 0), tf.int32), output_type=tf.int32)
    check_kinds = tf.debugging.Assert(
        tf.reduce_all(kinds >= 0),
        ["unknown part_kind in"] + self._record(batch, tf.gather(tf.concat([part_row, [0]], 0), first_unknown)),
        summarize=8)
    with tf.control_dependencies([check, check_kinds]):
      ids = tf.cast(codes + tf.gather(self.first_code_id, tf.maximum(code_kind, 0)), tf.int32)
    rows = tf.RaggedTensor.from_row_lengths(ids, lengths)
    return tf.ragged.boolean_mask(rows, kinds > 0)

  def item_strings_of(self, batch, kinds: tf.Tensor) -> tf.Tensor:
    """Each part's string form without codes: its text, or `<soim><eoim>`-style pairs. [P] flat."""
    items = tf.gather(self.item_strings, tf.maximum(kinds, 0))
    return tf.where(kinds == 0, batch["part_text"].flat_values, items)

  # -- string forms ----------------------------------------------------------------------------
  def pair_strings(self, batch, kinds, modality: str, to_text: tf.Tensor, instruction: tf.Tensor) -> tf.Tensor:
    """[B] string forms of pairs; `to_text` bool [B], `instruction` string [B]."""
    signature = tf.strings.reduce_join(batch["part_kind"], axis=1, separator=",")
    ok = tf.equal(signature, f"{modality},text")
    first_bad = tf.argmax(tf.cast(tf.concat([tf.logical_not(ok), [True]], 0), tf.int32), output_type=tf.int32)
    check = tf.debugging.Assert(
        tf.reduce_all(ok),
        [f"a {modality}_text pair needs parts [{modality}, text];"] +
        self._record(batch, tf.minimum(first_bad, tf.size(ok) - 1)) +
        ["has", tf.gather(tf.concat([signature, [""]], 0), first_bad)], summarize=8)
    with tf.control_dependencies([check]):
      starts = batch["part_kind"].row_starts()
    items = self.item_strings_of(batch, kinds)
    item = tf.gather(items, starts)
    text = tf.gather(batch["part_text"].flat_values, starts + 1)
    x_to_text = tf.strings.join(["[Human]: ", instruction, " ", item, "<eoh> [MMGPT]: ", text, "<eos>"])
    text_to_x = tf.strings.join(["[Human]: ", instruction, " This is input: ", text, "<eoh> [MMGPT]: ", item,
                                 "<eos>"])
    return tf.where(to_text, x_to_text, text_to_x)

  def interleaved_strings(self, batch, kinds) -> tf.Tensor:
    parts = batch["part_kind"].with_flat_values(self.item_strings_of(batch, kinds))
    return tf.strings.reduce_join(parts, axis=1)

  def chat_strings(self, batch, kinds) -> tf.Tensor:
    roles_rt = batch["part_role"]
    roles = roles_rt.flat_values
    known = tf.reduce_any(tf.equal(roles[:, None], self.roles[None, :]), 1)
    part_row = roles_rt.value_rowids()
    bad_parts = tf.math.unsorted_segment_sum(tf.cast(tf.logical_not(known), tf.int32), part_row, roles_rt.nrows())
    assistant = tf.math.unsorted_segment_sum(tf.cast(tf.equal(roles, "assistant"), tf.int32), part_row,
                                             roles_rt.nrows())
    ok = tf.logical_and(bad_parts == 0, assistant > 0)
    first_bad = tf.argmax(tf.cast(tf.concat([tf.logical_not(ok), [True]], 0), tf.int32), output_type=tf.int32)
    check = tf.debugging.Assert(
        tf.reduce_all(ok),
        ["a chat needs roles system/user/assistant on every part and an assistant turn;"] +
        self._record(batch, tf.minimum(first_bad, tf.size(ok) - 1)), summarize=8)
    with tf.control_dependencies([check]):
      body = self.item_strings_of(batch, kinds)
    n = tf.size(roles)
    index = tf.range(n, dtype=part_row.dtype)
    row_start = tf.equal(index, tf.gather(roles_rt.row_starts(), part_row))
    row_end = tf.equal(index + 1, tf.gather(roles_rt.row_limits(), part_row))
    previous = tf.concat([[""], roles[:-1]], 0)
    following = tf.concat([roles[1:], [""]], 0)
    opens = tf.logical_or(row_start, tf.not_equal(roles, previous))
    closes = tf.logical_or(row_end, tf.not_equal(roles, following))
    role_index = tf.argmax(tf.cast(tf.equal(roles[:, None], self.roles[None, :]), tf.int32), 1)
    open_text = tf.gather(self.turn_open, role_index)
    close_text = tf.gather(self.turn_close, role_index)
    separator = tf.where(tf.logical_and(opens, tf.logical_not(row_start)), chat_format.TURN_SEPARATOR, "")
    pieces = tf.strings.join([separator, tf.where(opens, open_text, ""), body, tf.where(closes, close_text, "")])
    joined = tf.strings.reduce_join(roles_rt.with_flat_values(pieces), axis=1)
    first_role = tf.gather(roles, roles_rt.row_starts())
    return tf.where(tf.equal(first_role, "system"), joined,
                    tf.strings.join([chat_format.SYSTEM_PROMPT + chat_format.TURN_SEPARATOR, joined]))

  # -- ids -------------------------------------------------------------------------------------
  def strings_to_ids(self, strings: tf.Tensor, code_rows: tf.RaggedTensor, kinds: tf.Tensor, batch) -> tf.RaggedTensor:
    """String forms [B] + modality rows [M, None] -> `<s>` ids `</s>`, ragged [B, None] int32."""
    split = tf_text.regex_split(strings, self.pattern, self.pattern)  # [B, Q]
    pieces = split.flat_values
    piece_row = split.value_rowids()
    token = self.table.lookup(pieces)
    is_text = token < 0
    prefix = tf.logical_and(is_text, tf.strings.length(pieces) > 0)
    if not self.vocabulary.legacy:  # only text at the very start of a sample gets the dummy prefix
      prefix = tf.logical_and(prefix, tf.equal(tf.range(tf.size(pieces), dtype=piece_row.dtype),
                                               tf.gather(split.row_starts(), piece_row)))
    text = tf.where(prefix, tf.strings.join([" ", pieces]), tf.where(is_text, pieces, ""))
    text_ids = tf.cast(self.tokenizer.tokenize(text), tf.int32)
    token_ids = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(token, ~is_text), tf.cast(~is_text, tf.int64))
    # The k-th start token of a sample must open its k-th modality part, of the same kind, and be
    # closed by the next piece (a literal start token inside a text part breaks that).
    is_start = tf.reduce_any(tf.equal(token[:, None], self.start_ids[None, :]), 1)
    starts = tf.cast(tf.where(is_start)[:, 0], tf.int32)
    nrows = split.nrows()
    starts_per_row = tf.math.unsorted_segment_sum(tf.cast(is_start, tf.int32), piece_row, nrows)
    modality_part = kinds > 0
    items_per_row = tf.math.unsorted_segment_sum(tf.cast(modality_part, tf.int32),
                                                 batch["part_kind"].value_rowids(), nrows)
    kinds_in_string = tf.argmax(tf.cast(tf.equal(tf.gather(token, starts)[:, None], self.start_ids[None, :]),
                                        tf.int32), 1, output_type=tf.int32) + 1
    next_token = tf.gather(tf.concat([token, [-1]], 0), starts + 1)
    same_row = tf.equal(tf.gather(tf.concat([piece_row, [-1]], 0), starts + 1), tf.gather(piece_row, starts))
    closed = tf.logical_and(same_row, tf.equal(next_token, tf.gather(self.end_ids, kinds_in_string - 1)))
    row_counts_match = tf.equal(starts_per_row, items_per_row)
    aligned = tf.cond(
        tf.reduce_all(row_counts_match),
        lambda: tf.logical_and(tf.reduce_all(tf.equal(kinds_in_string, tf.boolean_mask(kinds, modality_part))),
                               tf.reduce_all(closed)),
        lambda: tf.constant(False))
    first_bad = tf.argmax(tf.cast(tf.concat([tf.logical_not(row_counts_match), [True]], 0), tf.int32),
                          output_type=tf.int32)
    check = tf.debugging.Assert(
        aligned, ["start/end tokens in the text do not match the modality parts;"] +
        self._record(batch, tf.minimum(first_bad, tf.cast(nrows, tf.int32) - 1)), summarize=8)
    with tf.control_dependencies([check]):
      item_index = tf.cumsum(tf.cast(is_start, tf.int32)) - 1
    num_items = code_rows.nrows(out_type=tf.int32)
    item_lengths = tf.concat([tf.cast(code_rows.row_lengths(), tf.int32), [0]], 0)  # [0]: batches without items
    lengths = tf.where(is_start, tf.gather(item_lengths, tf.clip_by_value(item_index, 0, num_items)), 0)
    code_ids = tf.RaggedTensor.from_row_lengths(code_rows.flat_values, tf.cast(lengths, tf.int64))
    piece_ids = tf.concat([text_ids, token_ids, code_ids], axis=1)  # [pieces, None]
    ids = tf.RaggedTensor.from_row_splits(piece_ids, split.row_splits).merge_dims(1, 2)  # [B, None]
    column = tf.ones([nrows, 1], tf.int32)
    return tf.concat([column * BOS_ID, ids, column * EOS_ID], axis=1)

  def loss_weights(self, ids: tf.RaggedTensor, assistant_only: bool) -> tf.RaggedTensor:
    """int32 ragged [B, None]: 0 on `<s>`; chats as AnyGPT's SFT masks them.

    A chat trains each assistant reply from after `[MMGPT]` and the `:` that follows it (the
    `colon_tokens` of `": "`, e.g. `▁` `:` or `▁:` in legacy mode) through its `<eos>`, and the
    final `</s>`; the system line, user turns and the newlines between turns get weight 0.
    """
    first = tf.equal(tf.range(tf.size(ids.flat_values), dtype=ids.row_splits.dtype),
                     tf.gather(ids.row_starts(), ids.value_rowids()))
    if not assistant_only:
      return ids.with_flat_values(tf.cast(tf.logical_not(first), tf.int32))
    flat = ids.flat_values
    is_open = tf.cast(tf.equal(flat, self.layout.mmgpt_id), tf.int32)
    is_close = tf.cast(tf.equal(flat, self.layout.eos_id), tf.int32)
    # Counts within each sample: cumulative sums minus their value at the sample's start.
    opened = tf.cumsum(is_open)
    closed = tf.cumsum(is_close, exclusive=True)
    rows = ids.value_rowids()
    opened -= tf.gather(tf.concat([[0], opened], 0), tf.gather(ids.row_starts(), rows))
    closed -= tf.gather(closed, tf.gather(ids.row_starts(), rows))
    # The `:` after `[MMGPT]` stays untrained: the colon_tokens positions after each marker.
    after_marker = tf.zeros_like(is_open)
    for shift in range(1, self.colon_tokens + 1):
      after_marker += tf.concat([tf.zeros([shift], tf.int32), is_open[:-shift]], 0)[:tf.size(is_open)]
    inside = tf.logical_and(opened > closed, tf.logical_and(is_open == 0, after_marker == 0))
    last = tf.equal(tf.range(tf.size(flat), dtype=ids.row_splits.dtype) + 1,
                    tf.gather(ids.row_limits(), rows))
    return ids.with_flat_values(tf.cast(tf.logical_or(inside, last), tf.int32))

  def valid_rows(self, batch, kind: str) -> tf.Tensor:
    """bool [B]: the records rendering takes as `kind`: known part kinds, codes inside their
    modality's range, the parts a pair needs or the roles a chat needs, and no control token inside
    text (`layout.control_token_in_text`'s rule). Each failed check is an error of `render_batch`."""
    kinds = self.kind_index(batch["part_kind"].flat_values)
    part_row = batch["part_kind"].value_rowids()
    nrows = batch["part_kind"].nrows()
    lengths = tf.cast(batch["part_code_len"].flat_values, tf.int32)
    codes = batch["part_codes"].flat_values
    code_kind = tf.repeat(kinds, lengths)
    bad_code = tf.logical_or(code_kind <= 0, tf.logical_or(codes < 0, codes >= tf.gather(self.num_codes,
                                                                                         tf.maximum(code_kind, 0))))
    part_of_code = tf.repeat(tf.range(tf.size(kinds)), lengths)
    bad_part = tf.logical_or(kinds < 0, tf.math.unsorted_segment_max(tf.cast(bad_code, tf.int32), part_of_code,
                                                                      tf.size(kinds)) > 0)
    forbidden = "(?s).*(?:" + control_token_pattern(chat=kind == "chat") + ").*"
    bad_part = tf.logical_or(bad_part, tf.logical_and(kinds == 0, tf.strings.regex_full_match(
        batch["part_text"].flat_values, forbidden)))
    if kind == "chat":
      roles = batch["part_role"].flat_values
      known = tf.reduce_any(tf.equal(roles[:, None], self.roles[None, :]), 1)
      bad_part = tf.logical_or(bad_part, tf.logical_not(known))
    ok = tf.math.unsorted_segment_max(tf.cast(bad_part, tf.int32), part_row, nrows) <= 0  # a row without parts: 0
    if kind in PAIR_KINDS:
      ok = tf.logical_and(ok, tf.equal(tf.strings.reduce_join(batch["part_kind"], axis=1, separator=","),
                                       f"{PAIR_KINDS[kind]},text"))
    elif kind == "chat":
      assistant = tf.math.unsorted_segment_sum(tf.cast(tf.equal(batch["part_role"].flat_values, "assistant"),
                                                       tf.int32), part_row, nrows)
      ok = tf.logical_and(ok, assistant > 0)
    return ok

  @tf.autograph.experimental.do_not_convert  # no tensor-dependent Python control flow: skip autograph
  def render_batch(self, batch, kind: str, to_text=None, instruction=None, skip_invalid: bool = False) -> dict:
    """B parsed examples (ragged-batched) -> {'targets', 'loss_weights': int32 ragged [B, None], 'id', 'shard'},
    and 'to_text' (int32 [B]) when directions are given.

    A record rendering cannot take fails the batch (InvalidArgumentError naming its shard file and
    record id); with `skip_invalid` such records (`valid_rows`) are left out instead, and
    'num_skipped' (int32 scalar) counts them: one bad record never stops a training run.
    """
    if skip_invalid:
      valid = self.valid_rows(batch, kind)
      batch = {k: tf.ragged.boolean_mask(v, valid) if isinstance(v, tf.RaggedTensor) else tf.boolean_mask(v, valid)
               for k, v in batch.items()}
      to_text = None if to_text is None else tf.boolean_mask(to_text, valid)
      instruction = None if instruction is None else tf.boolean_mask(instruction, valid)
      out = self.render_batch(batch, kind, to_text, instruction)
      out["num_skipped"] = tf.size(valid) - tf.reduce_sum(tf.cast(valid, tf.int32))
      return out
    kinds = self.kind_index(batch["part_kind"].flat_values)
    if kind in PAIR_KINDS:
      strings = self.pair_strings(batch, kinds, PAIR_KINDS[kind], to_text, instruction)
    elif kind == "interleaved":
      strings = self.interleaved_strings(batch, kinds)
    elif kind == "chat":
      strings = self.chat_strings(batch, kinds)
    else:
      raise RenderError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")
    ids = self.strings_to_ids(strings, self.global_code_rows(batch, kinds), kinds, batch)
    out = {"targets": ids, "loss_weights": self.loss_weights(ids, kind == "chat"), "id": batch["id"],
           "shard": batch["shard"]}
    if to_text is not None:  # a pair's drawn direction, int32 [B]
      out["to_text"] = tf.cast(to_text, tf.int32)
    return out

  def render(self, ex, kind: str, to_text=None, instruction=None) -> dict:
    """One parsed example -> {'targets': int32 [n], 'loss_weights': int32 [n], 'id', 'shard'}."""
    batch = {}
    for key, value in ex.items():
      batch[key] = (tf.RaggedTensor.from_tensor(value[None]) if value.shape.rank == 1 else value[None])
    out = self.render_batch(batch, kind, None if to_text is None else to_text[None],
                            None if instruction is None else instruction[None])
    return {"targets": out["targets"][0], "loss_weights": out["loss_weights"][0], "id": ex["id"], "shard": ex["shard"]}
