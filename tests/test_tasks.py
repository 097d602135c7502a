"""Registration of the default corpora and AnyGPT's three mixtures; what is wrong, said precisely."""

import logging

import gin
import pytest
import seqio

from anygpt_jax.data import pipeline
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

PRETRAIN = {"laion_2b": "image_text", "laion_coco": "image_text", "journeydb": "image_text",
            "laion_aesthetics": "image_text", "mls": "speech_text", "commonvoice": "speech_text",
            "gigaspeech": "speech_text", "music": "music_text", "mmc4": "interleaved"}


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
  root = tmp_path_factory.mktemp("spm")
  return train_llama_like_sentencepiece(list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3,
                                        str(root / "m"), 600)


@pytest.fixture(scope="module")
def default_data(tmp_path_factory, spm):
  root = tmp_path_factory.mktemp("defaults")
  for i, (name, kind) in enumerate({**PRETRAIN, "anyinstruct": "chat"}.items()):
    synthetic_corpus.write_corpus(str(root), name, kind, 8, seed=i)
  return str(root), spm


def test_default_corpora_are_the_papers():
  kinds = {c.name: c.kind for c in pipeline.DEFAULT_CORPORA}
  assert kinds == {**PRETRAIN, "anyinstruct": "chat"}
  groups = {c.name: c.group for c in pipeline.DEFAULT_CORPORA}
  # Table 7's image-text pair group: LAION-2B, LAION-COCO, JourneyDB, LAION-Aesthetics.
  assert [n for n, g in groups.items() if g == "image_text"] == ["laion_2b", "laion_coco", "journeydb",
                                                                  "laion_aesthetics"]


def test_pretrain_mixture_has_the_paper_shares(default_data):
  root, spm = default_data
  reg = pipeline.register_corpora(root, spm, mixture_name="anygpt_pretrain")
  assert set(reg.tasks) == set(PRETRAIN)
  pretrain = reg.mixtures["anygpt_pretrain"]
  assert set(pretrain) == set(PRETRAIN) and sum(pretrain.values()) == pytest.approx(1.0)
  image = ("laion_2b", "laion_coco", "journeydb", "laion_aesthetics")
  assert sum(pretrain[n] for n in image) == pytest.approx(0.3)
  assert pretrain["mls"] == pytest.approx(0.13)
  assert pretrain["commonvoice"] + pretrain["gigaspeech"] == pytest.approx(0.27)
  assert pretrain["music"] == pytest.approx(0.25) and pretrain["mmc4"] == pytest.approx(0.05)
  tokens = {n: pipeline.TASK_INFO[n].tokens() for n in ("laion_coco", "journeydb")}
  assert pretrain["laion_coco"] / pretrain["journeydb"] == pytest.approx(tokens["laion_coco"] / tokens["journeydb"])
  assert isinstance(seqio.get_mixture_or_task("anygpt_pretrain"), seqio.Mixture)


def test_a_missing_corpus_is_an_error_naming_it(tmp_path, default_data, caplog):
  root, spm = default_data
  for i, (name, kind) in enumerate(PRETRAIN.items()):
    if name not in ("gigaspeech", "mmc4"):
      synthetic_corpus.write_corpus(str(tmp_path), name, kind, 8, seed=i)
  with pytest.raises(pipeline.MissingCorpusError) as e:
    pipeline.register_corpora(str(tmp_path), spm, mixture_name="anygpt_pretrain")
  message = str(e.value)
  assert "gigaspeech" in message and "mmc4" in message and "allow_missing_corpora" in message
  assert str(tmp_path / "mmc4") in message and "laion_coco:" not in message
  with caplog.at_level(logging.WARNING):
    reg = pipeline.register_corpora(str(tmp_path), spm, mixture_name="anygpt_pretrain", allow_missing_corpora=True)
  shares = reg.mixtures["anygpt_pretrain"]
  assert "mmc4" not in shares and shares["commonvoice"] == pytest.approx(0.27 / 0.95)
  warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "['gigaspeech', 'mmc4']" in warning and f"commonvoice {shares['commonvoice']:.2%}" in warning


def test_continue_phase(default_data):
  root, spm = default_data
  reg = pipeline.register_corpora(root, spm, mixture_name="anygpt_continue")
  assert set(reg.mixtures["anygpt_continue"]) == {"journeydb_t2i", "laion_aesthetics_t2i", "laion_coco_caption",
                                                  "music_continue"}
  assert directions("journeydb_t2i") == [0] * 8  # text-to-image only
  assert directions("laion_aesthetics_t2i") == [0] * 8
  assert directions("laion_coco_caption") == [1] * 8  # captions only
  assert pipeline.TASK_INFO["journeydb_t2i"].spec.shard_corpus == "journeydb"


def directions(task_name):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      {"targets": 4096}, split="train", shuffle=False, seed=0, use_cached=False, trim_output_features=False)
  return [int(ex["to_text"]) for ex in ds.as_numpy_iterator()]


def test_sft_mixture_and_chat_tokens(default_data):
  root, spm = default_data
  with pytest.raises(pipeline.DataRegistrationError, match="chat tokens"):
    pipeline.register_corpora(root, spm, mixture_name="anygpt_sft")
  reg = pipeline.register_corpora(root, spm, mixture_name="anygpt_sft", chat_tokens=True)
  assert reg.tasks == ["anyinstruct"] and reg.mixtures == {"anygpt_sft": {"anyinstruct": 1.0}}


def test_custom_corpus_list_keeps_its_groups(tmp_path, spm):
  synthetic_corpus.write_corpus(str(tmp_path), "pics", "image_text", 8, seed=1)
  synthetic_corpus.write_corpus(str(tmp_path), "tunes", "music_text", 8, seed=2)
  corpora = [("pics", "image_text", pipeline.DEFAULT_PATTERN, 0.5, "image_text"),
             ("tunes", "music_text", pipeline.DEFAULT_PATTERN, 0.5, "music")]
  reg = pipeline.register_corpora(str(tmp_path), spm, corpora, mixture_name="anygpt_pretrain")
  assert reg.mixtures["anygpt_pretrain"] == pytest.approx({"pics": 0.3 / 0.55, "tunes": 0.25 / 0.55})


def test_mistakes_are_said_precisely(tmp_path, default_data):
  root, spm = default_data
  with pytest.raises(pipeline.DataRegistrationError, match="'anygpt_pretrian' is not a built-in mixture"):
    pipeline.register_corpora(root, spm, mixture_name="anygpt_pretrian")
  with pytest.raises(pipeline.DataRegistrationError, match="SentencePiece model .*nope.model does not exist"):
    pipeline.register_corpora(root, str(tmp_path / "nope.model"), mixture_name="anygpt_pretrain")
  with pytest.raises(pipeline.MissingCorpusError, match="does not exist"):
    pipeline.register_corpora(str(tmp_path / "no_such_dir"), spm, mixture_name="anygpt_pretrain")
  with pytest.raises(pipeline.DataRegistrationError, match="'no_such_mixture' is not a registered task or mixture"):
    pipeline.get_dataset("no_such_mixture", 128, 1)


def test_register_and_get_dataset_through_gin(default_data):
  root, spm = default_data
  with gin.unlock_config():
    gin.bind_parameter("register_corpora.data_dir", root)
    gin.bind_parameter("register_corpora.spm_path", spm)
    gin.bind_parameter("register_corpora.corpora", [("mls", "speech_text", "{name}/{name}-{split}-*", 1.0)])
    gin.bind_parameter("get_dataset.sequence_length", 1024)
    gin.bind_parameter("get_dataset.batch_size", 1)
  try:
    reg = pipeline.register_corpora()
    assert reg.tasks == ["mls"]
    batch = next(iter(pipeline.get_dataset("mls", rows_per_window=2)))
    assert batch["decoder_target_tokens"].shape == (1, 1024)
  finally:
    gin.clear_config()


def test_unknown_kind_is_a_clear_error():
  with pytest.raises(ValueError, match="kind 'video'"):
    pipeline.CorpusSpec("x", "video")
  with pytest.raises(ValueError, match="to_text_probability"):
    pipeline.CorpusSpec("x", "image_text", to_text_probability=1.5)
