"""Rendering of every task kind: graph ids == ids of the AnyGPT string form; loss weights; errors."""

import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from anygpt_jax.data import pipeline, preprocessors, rendering
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.data.shards import Part, Sample, serialize_sample
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary, train_llama_like_sentencepiece


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  texts = list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3
  return train_llama_like_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "m"), 600)


@pytest.fixture(scope="module", params=[True, False], ids=["legacy_default", "non_legacy"])
def vocab(request, spm_path):
  return AnyGPTVocabulary(spm_path, chat_tokens=True, legacy=request.param)


def parsed(sample: Sample, shard: str = "test-shard"):
  return preprocessors.parse_record({"record": tf.constant(serialize_sample(sample)), "shard": tf.constant(shard)})


def graph_render(vocab, sample, kind, to_text=None, instruction=None):
  renderer = rendering.GraphRenderer(vocab)
  out = renderer.render(parsed(sample), kind,
                        None if to_text is None else tf.constant(to_text),
                        None if instruction is None else tf.constant(instruction))
  return out["targets"].numpy().tolist(), out["loss_weights"].numpy().tolist()


@pytest.mark.parametrize("kind", ["image_text", "speech_text", "music_text"])
@pytest.mark.parametrize("to_text", [True, False])
def test_pairs_equal_the_template_string(vocab, kind, to_text):
  rng = np.random.default_rng(1)
  for i in range(3):
    sample = synthetic_corpus.make_sample(kind, i, rng)
    instruction = "Describe what you get, please."
    ids, weights = graph_render(vocab, sample, kind, to_text, instruction)
    assert ids == rendering.reference_ids(vocab, kind, sample.parts, instruction, to_text)
    assert weights == [0] + [1] * (len(ids) - 1)
    text = vocab.decode(ids)
    modality = rendering.PAIR_KINDS[kind]
    item = rendering.modality_string(vocab.layout, modality, sample.parts[0].codes)
    if to_text:
      assert text == f"[Human]: {instruction} {item}<eoh> [MMGPT]: {sample.parts[1].text}<eos>"
    else:
      assert text == f"[Human]: {instruction} This is input: {sample.parts[1].text}<eoh> [MMGPT]: {item}<eos>"
    assert ids[0] == 1 and ids[-1] == 2


def test_interleaved_documents(vocab):
  rng = np.random.default_rng(2)
  for i in range(3):
    sample = synthetic_corpus.make_sample("interleaved", i, rng)
    ids, weights = graph_render(vocab, sample, "interleaved")
    assert ids == rendering.reference_ids(vocab, "interleaved", sample.parts)
    assert sum(weights) == len(ids) - 1
  # A document that opens with an image, and text that touches the tokens.
  sample = Sample("doc", [Part("image", codes=[1, 2]), Part("text", "caption right after"),
                          Part("music", codes=[8191]), Part("text", "end")])
  ids, _ = graph_render(vocab, sample, "interleaved")
  assert ids == rendering.reference_ids(vocab, "interleaved", sample.parts)


CODES = {"image": [0, 17, 8191], "speech": [5, 1023, 7, 9], "music": [0, 2048 + 5, 4096 + 9, 6144 + 2047]}


def chat_sample(user_modality, reply_modality, turns=2):
  parts = [Part("text", "You are MMGPT.", role="system")]
  for t in range(turns):
    parts.append(Part("text", f"question {t} ", role="user"))
    if user_modality != "text":
      parts.append(Part(user_modality, codes=CODES[user_modality], role="user"))
    if reply_modality == "speech":
      parts.append(Part("text", f"<-Ins-> question {t} <-Res-> the answer ", role="assistant"))
      parts.append(Part("speech", codes=CODES["speech"], role="assistant"))
    elif reply_modality == "text":
      parts.append(Part("text", f"answer {t}", role="assistant"))
    else:
      parts.append(Part("text", "here: ", role="assistant"))
      parts.append(Part(reply_modality, codes=CODES[reply_modality], role="assistant"))
  return Sample(f"chat-{user_modality}-{reply_modality}", parts)


@pytest.mark.parametrize("user_modality", ["text", "image", "speech", "music"])
def test_chats_weight_exactly_the_assistant_tokens(vocab, user_modality):
  for reply_modality in ("text", "image", "speech", "music"):
    sample = chat_sample(user_modality, reply_modality)
    ids, weights = graph_render(vocab, sample, "chat")
    assert ids == rendering.reference_ids(vocab, "chat", sample.parts)
    # Expected (AnyGPT's SFT mask): for every assistant turn, the tokens after `[MMGPT]:` through
    # its <eos>, then the final </s>.
    expected = []
    colon = len(vocab.encode_text(":", dummy_prefix=vocab.legacy))
    turns = [p for p in sample.parts if p.role == "assistant"]
    per_turn = len(turns) // 2
    for t in range(2):
      content = "".join(rendering.part_string(vocab.layout, p) for p in turns[t * per_turn:(t + 1) * per_turn])
      expected += vocab.encode(f"[MMGPT]: {content}<eos>")[1 + colon:]
    expected.append(2)
    weighted = [i for i, w in zip(ids, weights) if w]
    assert weighted == expected, (user_modality, reply_modality)
    assert sum(weights) > 0
    # Nothing of the user's (its modality codes included) is weighted.
    if user_modality != "text":
      user_ids = set(vocab.layout.code_to_id(user_modality, CODES[user_modality]))
      reply_ids = set(vocab.layout.code_to_id(reply_modality, CODES[reply_modality])) if reply_modality != "text" else set()
      assert not (set(weighted) & (user_ids - reply_ids))


def test_chat_string_form(vocab):
  sample = chat_sample("image", "speech", turns=1)
  ids, _ = graph_render(vocab, sample, "chat")
  text = vocab.decode(ids)
  assert text.startswith("You are MMGPT.\n[Human]: question 0 <soim><\U0001F4400>")
  assert "<eoim><eoh>\n[MMGPT]: <-Ins-> question 0 <-Res-> the answer <sosp>" in text
  assert text.endswith("<eosp><eos>")


def expect_error(vocab, sample, kind, *patterns, shard="shard-name-00000"):
  renderer = rendering.GraphRenderer(vocab)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    renderer.render(parsed(sample, shard), kind, tf.constant(True), tf.constant("x"))
  for p in patterns:
    assert p in str(e.value)


@pytest.mark.parametrize("kind, codes", [("image", [3, 8192]), ("speech", [1024]), ("music", [-1])])
def test_out_of_range_codes_name_shard_and_record(vocab, kind, codes):
  sample = Sample("record-42", [Part(kind, codes=codes), Part("text", "hi")])
  expect_error(vocab, sample, f"{kind}_text", "out of range", "shard-name-00000", "record-42")


def test_wrong_parts_are_clear_errors(vocab):
  expect_error(vocab, Sample("r1", [Part("text", "hi"), Part("image", codes=[1])]), "image_text",
               "needs parts [image, text]", "r1")
  expect_error(vocab, Sample("r2", [Part("speech", codes=[1]), Part("text", "hi")]), "image_text", "r2")
  expect_error(vocab, Sample("r3", [Part("text", "a literal <soim> inside"), Part("image", codes=[1])]),
               "interleaved", "do not match the modality parts", "r3")
  expect_error(vocab, Sample("r4", [Part("text", "no roles")]), "chat", "roles", "r4")


def test_direction_probability_and_instruction_pools(tmp_path, spm_path):
  synthetic_corpus.write_corpus(str(tmp_path), "dirs", "image_text", 300)
  synthetic_corpus.write_corpus(str(tmp_path), "capts", "image_text", 40, seed=1)
  reg = pipeline.register_corpora(str(tmp_path), spm_path, [("dirs", "image_text", pipeline.DEFAULT_PATTERN, 0.8),
                                                          ("capts", "image_text", pipeline.DEFAULT_PATTERN, 1.0)],
                                  default_mixtures=False)
  vocab = reg.vocabulary
  pools = pipeline.load_instruction_pools(modalities=("image",))
  task = seqio.get_mixture_or_task("dirs")
  ds = task.get_dataset({"targets": 4096}, split="train", shuffle=False, seed=3, use_cached=False,
                        trim_output_features=False)
  to_text = []
  for ex in ds.as_numpy_iterator():
    ids = ex["targets"].tolist()
    text = vocab.decode(ids)
    instruction = re.match(r"\[Human\]: (.*?) (<soim>|This is input: )", text).group(1)
    direction = "to_text" if ex["to_text"] else "from_text"
    assert instruction in pools["image", direction]
    to_text.append(bool(ex["to_text"]))
    assert text.index("<soim>") < text.index("<eoh>") if ex["to_text"] else text.index("<soim>") > text.index("<eoh>")
  assert len(to_text) == 300 and abs(np.mean(to_text) - 0.8) < 0.07
  # Same seed, same draws; another seed, other draws.
  again = [bool(ex["to_text"]) for ex in task.get_dataset({"targets": 4096}, split="train", shuffle=False, seed=3,
                                                          use_cached=False, trim_output_features=False).as_numpy_iterator()]
  other = [bool(ex["to_text"]) for ex in task.get_dataset({"targets": 4096}, split="train", shuffle=False, seed=4,
                                                          use_cached=False, trim_output_features=False).as_numpy_iterator()]
  assert again == to_text and other != to_text
  captions = seqio.get_mixture_or_task("capts").get_dataset(
      {"targets": 4096}, split="train", shuffle=False, seed=3, use_cached=False, trim_output_features=False)
  assert all(ex["to_text"] for ex in captions.as_numpy_iterator())


def test_instruction_pools_are_ours_and_large():
  for modality in ("image", "speech", "music"):
    for direction in rendering.DIRECTIONS:
      pool = rendering.load_instructions(modality, direction)
      assert len(pool) >= 100 and len(set(pool)) == len(pool), (modality, direction)
      assert all("<" not in p and "[" not in p for p in pool)
