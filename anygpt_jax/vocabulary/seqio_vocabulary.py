"""A `seqio.Vocabulary` for AnyGPT's expanded vocabulary, and a LLaMA-like SentencePiece trainer.

`AnyGPTVocabulary` encodes AnyGPT's string form (text with added tokens such as
`[Human]`, `<soim>`, `<👀12>`, `<eos>` inside it) to global ids and decodes mixed id
sequences back to that string form. Ids follow `VocabularyLayout` computed from the
SentencePiece model's size, so a small test model shifts every added id by the same offset.

How strings become ids (the rule the data pipeline's renderer follows too):
  1. The string is split at added tokens (`layout.split_added_tokens`); the text between two
     added tokens keeps every character, spaces included.
  2. Each added token becomes its layout id.
  3. Each text chunk is encoded by SentencePiece on its own. SentencePiece's dummy prefix (a
     `▁` in front, LLaMA's model has `add_dummy_prefix` on) is given
       - with `legacy=True` (the default, AnyGPT's mode): to every chunk, so `[MMGPT]: A cat`
         encodes `▁:` `▁A` `▁cat` and `<eoh> [MMGPT]` puts `▁▁` (or two `▁`) between;
       - with `legacy=False`: only to a chunk at the very start of the string, so the same
         text encodes `:` `▁A` `▁cat` and `<eoh> [MMGPT]` puts one `▁` between.
     Both are implemented as "SentencePiece without dummy prefix on the chunk, with one space
     prepended where the dummy prefix applies", which is exactly what the dummy prefix does.

Why legacy=True is the default: AnyGPT pins transformers 4.34.1 and builds its tokenizer with
`LlamaTokenizer.from_pretrained(...)` (the slow, sentencepiece-based class) whose `legacy`
defaults to True when the tokenizer config sets none; its added tokens are plain
`add_tokens` entries. `tests/test_data_chat.py` pins ids that transformers 4.34.1 itself
produced for AnyGPT's templates and chats (run in a scratch environment, see that test), and
`tests/test_seqio_vocabulary.py` checks both modes against transformers 5.23:
  * `legacy=True` == the slow sentencepiece-based tokenizer with `legacy=True`.
  * `legacy=False` == transformers 5's `LlamaTokenizer` (tokenizers-backed, Metaspace
    `prepend_scheme="first"`). The slow backend with `legacy=False` agrees on every string
    that starts with an added token; on a string that starts with text it gives that first
    chunk no `▁` at all.
  * Loaded from a bare `tokenizer.model`, transformers 5's `LlamaTokenizer` adds no `<s>`
    unless `add_bos_token=True` is given (an export's tokenizer config must set it).
  * The two modes differ after every added token that is followed by text which does not
    start with a space: `[Human]: x` gives `▁:` in one and `:` in the other, and a lone space
    between two added tokens gives `▁▁` against `▁`.
Every place that writes a tokenizer states its mode (`legacy=` here, in `register_corpora`, and
`"legacy": true` in an export's `tokenizer_config.json`).
The pipeline's own rendering never goes through strings for modality codes: it maps codes to
ids through the layout (see `anygpt_jax.data.rendering`), and this vocabulary is the reference
for the string form in tests, in decoding and for AnyGPT's JSONL data.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath
from sentencepiece import sentencepiece_model_pb2
import seqio
import tensorflow as tf
import tensorflow_text as tf_text

from anygpt_jax.vocabulary.layout import BOS_ID, EOS_ID, UNK_ID, VocabularyLayout, split_added_tokens


class AnyGPTVocabulary(seqio.Vocabulary):
  """SentencePiece text plus AnyGPT's added tokens, as one `seqio.Vocabulary`.

  `vocab_size` is the layout's real row count (49418 for LLaMA-2's 32000 pieces); padded rows
  are the model's business. `eos_id` is SentencePiece's `</s>` (2), which `decode` stops at;
  AnyGPT's literal `<eos>` added token is a different id. SeqIO pads with 0, LLaMA's `<unk>`,
  which a byte-fallback model never emits for real text.
  """

  def __init__(self, spm_path: str, chat_tokens: bool = False, pad_multiple: int = 128,
               legacy: bool = True):
    self._spm_path = os.fspath(spm_path)
    self._chat_tokens = chat_tokens
    self._pad_multiple = pad_multiple
    self._legacy = legacy
    self._sp = None
    self._sp_no_prefix = None
    self._layout = None
    super().__init__(extra_ids=0)

  @classmethod
  def for_layout(cls, spm_path: str, layout, legacy: bool = True) -> "AnyGPTVocabulary":
    """The vocabulary of `spm_path` with `layout`'s chat tokens and padding; raises ValueError when the
    SentencePiece model gives another layout than `layout` (a run's, which prompts must match)."""
    vocabulary = cls(spm_path, chat_tokens=layout.chat_tokens, pad_multiple=layout.pad_multiple, legacy=legacy)
    if vocabulary.layout != layout:
      raise ValueError(f"the SentencePiece model {spm_path!r} gives the layout {vocabulary.layout}, the run "
                       f"trains {layout}")
    return vocabulary

  def __getstate__(self):
    # Gin deep-copies configurable arguments: keep the processors out of pickles.
    state = self.__dict__.copy()
    state["_sp"] = state["_sp_no_prefix"] = None
    return state

  # --- identity -----------------------------------------------------------------------------
  @property
  def spm_path(self) -> str:
    return self._spm_path

  @property
  def legacy(self) -> bool:
    return self._legacy

  @property
  def sp(self) -> spm.SentencePieceProcessor:
    """The SentencePiece model as trained (with its dummy prefix)."""
    if self._sp is None:
      # Read through epath so a gs:// or relative model path works like a local one.
      self._sp = spm.SentencePieceProcessor(model_proto=epath.Path(self._spm_path).read_bytes())
    return self._sp

  @property
  def sp_no_prefix(self) -> spm.SentencePieceProcessor:
    """The same model with `add_dummy_prefix` off (chunks after added tokens)."""
    if self._sp_no_prefix is None:
      self._sp_no_prefix = spm.SentencePieceProcessor(model_proto=self.no_prefix_model_proto())
    return self._sp_no_prefix

  def no_prefix_model_proto(self) -> bytes:
    """Serialized model proto without the dummy prefix (for tf_text tokenizers too)."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(self.sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    proto.denormalizer_spec.add_dummy_prefix = False
    return proto.SerializeToString()

  @property
  def layout(self) -> VocabularyLayout:
    if self._layout is None:
      self._layout = VocabularyLayout(self.sp.GetPieceSize(), self._chat_tokens, self._pad_multiple)
    return self._layout

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def _base_vocab_size(self) -> int:
    return self.layout.vocab_size

  def takes_dummy_prefix(self, chunk_index: int) -> bool:
    """Whether the text chunk at `chunk_index` of a split string gets SentencePiece's `▁`."""
    return self._legacy or chunk_index == 0

  # --- Python -------------------------------------------------------------------------------
  def _encode(self, s: str) -> list[int]:
    """AnyGPT string form -> ids (no `<s>`/`</s>`), per the module docstring's rule."""
    ids = []
    for index, (is_token, piece) in enumerate(split_added_tokens(s)):
      if is_token:
        ids.append(self.layout.special_token_to_id(piece))
      else:
        ids.extend(self.encode_text(piece, self.takes_dummy_prefix(index)))
    return ids

  def encode_text(self, text: str, dummy_prefix: bool = True) -> list[int]:
    """Plain SentencePiece encoding of `text`; added-token strings are not recognised."""
    if dummy_prefix and text:
      text = " " + text
    return self.sp_no_prefix.EncodeAsIds(text)

  def _decode(self, ids: Iterable[int]) -> str:
    """Ids -> AnyGPT string form; runs of text ids decode through SentencePiece together.

    `<s>`/`</s>`/`<unk>` (and SeqIO's padding 0) decode to nothing, as in SentencePiece.
    """
    out, run = [], []

    def flush():
      if run:
        sp = self.sp if self.takes_dummy_prefix(len(out)) else self.sp_no_prefix
        out.append(sp.DecodeIds(run))
        run.clear()

    for i in ids:
      i = int(i)
      if i < self.layout.text_vocab_size:
        run.append(i)
        continue
      flush()
      out.append(self.layout.id_to_special_token(i))
    flush()
    return "".join(out)

  # --- TensorFlow ---------------------------------------------------------------------------
  def tf_tokenizer(self) -> tf_text.SentencepieceTokenizer:
    """A tf_text tokenizer of the model without dummy prefix (prepend a space for one)."""
    return tf_text.SentencepieceTokenizer(model=self.no_prefix_model_proto())

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Plain text -> ids in a graph, with the dummy prefix (like `encode_text`).

    Added-token strings inside `s` are NOT recognised here (they become SentencePiece pieces):
    the data pipeline's renderer (`anygpt_jax.data.rendering`) splits them out itself.
    """
    s = tf.where(tf.strings.length(s) > 0, tf.strings.join([" ", s]), s)
    return self.tf_tokenizer().tokenize(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Ids (1-D or 2-D) -> AnyGPT string form, through the Python decoder."""

    def decode_rows(array):
      rows = array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array[None]
      strings = [self._decode(r).encode() for r in rows]
      return np.array(strings, dtype=object).reshape(array.shape[:-1])

    out = tf.numpy_function(decode_rows, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other):
    return (isinstance(other, AnyGPTVocabulary) and self._spm_path == other._spm_path
            and self.layout == other.layout and self._legacy == other._legacy)

  def __hash__(self):
    return hash((self._spm_path, self._chat_tokens, self._pad_multiple, self._legacy))

  def __str__(self) -> str:
    return (f"AnyGPTVocabulary(spm={self._spm_path}, vocab_size={self.layout.vocab_size}, "
            f"legacy={self._legacy})")


def train_llama_like_sentencepiece(texts: Sequence[str], model_prefix: str, vocab_size: int = 512,
                                   model_type: str = "bpe") -> str:
  """Trains a small SentencePiece model shaped like LLaMA-2's; returns the `.model` path.

  Like LLaMA-2: BPE, byte_fallback on (no text ever maps to `<unk>`), `<unk>`=0, `<s>`=1,
  `</s>`=2, no pad piece, identity normalisation with whitespace kept as is, a dummy prefix,
  digits split. For tests and the demo; `vocab_size` is an upper bound (a small corpus caps it).
  """
  if not texts:
    raise ValueError("train_llama_like_sentencepiece needs at least one text")
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.Train(
      sentence_iterator=iter(list(texts)),
      model_prefix=model_prefix,
      model_type=model_type,
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      byte_fallback=True,
      unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=True,
      split_digits=True,
      allow_whitespace_only_pieces=True,
      character_coverage=1.0,
      num_threads=1,
      minloglevel=2,
  )
  return model_prefix + ".model"
