"""AnyGPTVocabulary against transformers' tokenizers, on a small LLaMA-like SentencePiece model.

Also shows exactly where the two dummy-prefix modes (and so the transformers tokenizers) differ.
"""

import json
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf

from anygpt_jax.testing.synthetic_corpus import TEXT_SAMPLES, WORDS
from anygpt_jax.vocabulary import layout
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary, train_llama_like_sentencepiece
from tools import vocab as vocab_tool

SPEECH = "\U0001F5E3\uFE0F"
TEMPLATES = [
    "[Human]: Describe the image. <soim><\U0001F4401><\U0001F4408191><eoim><eoh> [MMGPT]: A cat sits.<eos>",
    "[Human]: Draw it. This is input: a dog runs<eoh> [MMGPT]: <soim><\U0001F4405><eoim><eos>",
    f"[Human]: Transcribe this speech. <sosp><{SPEECH}3><{SPEECH}1023><eosp><eoh> [MMGPT]: hello there<eos>",
    "[Human]: Play music. This is input: calm piano 120 bpm<eoh> [MMGPT]: <somu><\U0001F3B64095><eomu><eos>",
    "Text at the start <soim><\U0001F4400><eoim> and text after the image.",
    "You are MMGPT.\n[Human]: hi<eoh>\n[MMGPT]: <-Ins-> hi <-Res-> hello <sosp><%s9><eosp><eos>" % SPEECH,
]


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  d = tmp_path_factory.mktemp("spm")
  texts = list(TEXT_SAMPLES) + [" ".join(WORDS)] * 3
  return train_llama_like_sentencepiece(texts, str(d / "m"), 500)


@pytest.fixture(scope="module")
def hf_dir(spm_path, tmp_path_factory):
  d = tmp_path_factory.mktemp("hf")
  shutil.copy(spm_path, d / "tokenizer.model")
  return str(d)


@pytest.fixture(scope="module")
def added_tokens(spm_path):
  return AnyGPTVocabulary(spm_path, chat_tokens=True).layout.added_tokens()


def test_trained_model_is_llama_like(spm_path):
  sp = AnyGPTVocabulary(spm_path).sp
  assert [sp.IdToPiece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
  assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
  # byte fallback: characters never seen still encode without <unk> (0), and decode back.
  ids = sp.EncodeAsIds("Zürich ☃ 東京")
  assert 0 not in ids and sp.DecodeIds(ids) == "Zürich ☃ 東京"


def test_is_a_seqio_vocabulary_with_layout_ids(spm_path):
  v = AnyGPTVocabulary(spm_path, chat_tokens=True)
  assert isinstance(v, seqio.Vocabulary)
  n = v.sp.GetPieceSize()
  assert v.layout.text_vocab_size == n and v.vocab_size == n + 17418 + 2
  assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 0)
  # The layout's pure-Python copies (what the TF-free export and rendering read) are SeqIO's.
  assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (layout.PAD_ID, layout.BOS_ID, layout.EOS_ID, layout.UNK_ID)
  ids = v.encode(TEMPLATES[0])
  assert ids[0] == v.layout.human_id and ids[-1] == v.layout.eos_id
  assert v.layout.modality("image").first_code_id + 8191 in ids


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip_and_decode_stops_at_eos(spm_path, legacy):
  v = AnyGPTVocabulary(spm_path, chat_tokens=True, legacy=legacy)
  for s in TEMPLATES:
    assert v.decode(v.encode(s)) == s
  ids = [1] + v.encode(TEMPLATES[0]) + [2] + v.encode("ignored")
  assert v.decode(ids) == TEMPLATES[0]
  decoded = v.decode_tf(tf.constant([v.encode(TEMPLATES[1]), v.encode(TEMPLATES[1])]))
  assert [d.decode() for d in decoded.numpy()] == [TEMPLATES[1]] * 2
  assert v.encode_tf(tf.constant("a dog runs")).numpy().tolist() == v.encode("a dog runs")


def test_matches_transformers_llama_tokenizer(hf_dir, spm_path, added_tokens):
  """transformers 5's LlamaTokenizer (tokenizers-backed, converted offline from tokenizer.model)."""
  from transformers import LlamaTokenizer
  tok = LlamaTokenizer.from_pretrained(hf_dir)
  tok.add_tokens(added_tokens)
  v = AnyGPTVocabulary(spm_path, chat_tokens=True, legacy=False)
  assert len(tok) == v.vocab_size
  for s in TEMPLATES:
    assert tok.encode(s, add_special_tokens=False) == v.encode(s), s
  # From a bare tokenizer.model, transformers 5 adds no <s> unless asked (an export must say so).
  assert tok.encode("hello")[0] != 1
  with_bos = LlamaTokenizer.from_pretrained(hf_dir, add_bos_token=True)
  assert with_bos.encode("hello") == [1] + v.encode("hello")
  legacy = AnyGPTVocabulary(spm_path, chat_tokens=True, legacy=True)
  assert tok.encode(TEMPLATES[0], add_special_tokens=False) != legacy.encode(TEMPLATES[0])


@pytest.fixture(scope="module")
def slow_tokenizers(spm_path, added_tokens):
  from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
  out = {}
  for legacy in (False, True):
    tok = SentencePieceBackend(vocab_file=spm_path, legacy=legacy, unk_token="<unk>", bos_token="<s>",
                               eos_token="</s>")
    tok.add_tokens(added_tokens)
    out[legacy] = tok
  return out


@pytest.mark.parametrize("legacy", [False, True])
def test_matches_slow_sentencepiece_tokenizer(spm_path, slow_tokenizers, legacy):
  tok = slow_tokenizers[legacy]
  v = AnyGPTVocabulary(spm_path, chat_tokens=True, legacy=legacy)
  for s in TEMPLATES:
    if not legacy and not s.startswith(("[Human]", "<")):
      continue  # see test_slow_non_legacy_drops_the_prefix_at_the_start
    assert tok.encode(s, add_special_tokens=False) == v.encode(s), (legacy, s)


def test_slow_non_legacy_drops_the_prefix_at_the_start(spm_path, slow_tokenizers):
  """transformers 5's slow backend with legacy=False gives text at the very start no `▁`.

  Its fast LlamaTokenizer (and our legacy=False) does; AnyGPT's templates start with `[Human]`
  so they are unaffected, only a string that opens with text differs, in its first piece(s).
  """
  tok = slow_tokenizers[False]
  v = AnyGPTVocabulary(spm_path, chat_tokens=True, legacy=False)
  s = "Text at the start <soim><\U0001F4400><eoim> and text after the image."
  ours = v.encode(s)
  theirs = tok.encode(s, add_special_tokens=False)
  assert ours != theirs
  assert v.encode_text("Text at the start ", dummy_prefix=False) + ours[len(v.encode("Text at the start ")):] == theirs


def test_where_the_modes_differ(spm_path):
  """The dummy prefix after an added token: `:` vs `▁:`, and `▁` vs `▁▁` between two added tokens."""
  new, old = AnyGPTVocabulary(spm_path, legacy=False), AnyGPTVocabulary(spm_path)
  assert old.legacy  # the default is AnyGPT's mode
  sp = new.sp

  def pieces(v, s):
    return [sp.IdToPiece(i) if i < sp.GetPieceSize() else v.layout.id_to_special_token(i) for i in v.encode(s)]

  assert "".join(pieces(new, "[Human]: hi")[1:]) == ":\u2581hi"
  assert "".join(pieces(old, "[Human]: hi")[1:]) == "\u2581:\u2581hi"
  between_new = pieces(new, "<eoh> [MMGPT]")[1:-1]
  between_old = pieces(old, "<eoh> [MMGPT]")[1:-1]
  assert "".join(between_new) == "\u2581" and "".join(between_old) == "\u2581\u2581"
  # Text at the very start of a string gets the dummy prefix in both modes.
  assert pieces(new, "hello")[0].startswith("\u2581") and pieces(new, "hello") == pieces(old, "hello")
  # A chunk that starts with a space agrees too.
  assert new.encode("<eoh> hello") == old.encode("<eoh>hello")


def test_anygpt_vocab_reads_the_size_from_a_model(spm_path, capsys):
  assert vocab_tool.main(["--spm", spm_path]) == 0
  printed = json.loads(capsys.readouterr().out)
  n = AnyGPTVocabulary(spm_path).sp.GetPieceSize()
  assert printed["text_vocab_size"] == n and printed["groups"]["[Human]"]["first"] == n
