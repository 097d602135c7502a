"""The `tasks` package: registration on import, default corpora, the three AnyGPT mixtures, gin."""

import importlib

import gin
import numpy as np
import pytest
import seqio

from anygpt_jax.data import pipeline, synthetic
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

DEFAULTS = {"laion_coco": "image_text", "journeydb": "image_text", "mls": "speech_text",
            "commonvoice": "speech_text", "music": "music_text", "mmc4": "interleaved", "anyinstruct": "chat"}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("defaults")
  spm = train_llama_like_sentencepiece(list(synthetic.TEXT_SAMPLES) + [" ".join(synthetic.WORDS)] * 3,
                                       str(root / "spm" / "m"), 600)
  for i, (name, kind) in enumerate(DEFAULTS.items()):
    synthetic.write_corpus(str(root), name, kind, 8, seed=i)
  return str(root), spm


def test_import_registers_defaults_and_mixtures(default_data, monkeypatch):
  root, spm = default_data
  monkeypatch.setenv("ANYGPT_DATA_DIR", root)
  monkeypatch.setenv("ANYGPT_SPM_PATH", spm)
  monkeypatch.setenv("ANYGPT_CHAT_TOKENS", "1")
  import tasks
  reg = importlib.reload(tasks).REGISTRATION
  assert set(reg.tasks) == set(DEFAULTS) | {"journeydb_t2i", "laion_coco_caption", "music_continue"}
  assert "gigaspeech" not in reg.tasks  # no shards: skipped
  pretrain = reg.mixtures["anygpt_pretrain"]
  assert set(pretrain) == {"laion_coco", "journeydb", "mls", "commonvoice", "music", "mmc4"}
  assert sum(pretrain.values()) == pytest.approx(1.0)
  # Paper shares by group (all five groups present here).
  assert pretrain["laion_coco"] + pretrain["journeydb"] == pytest.approx(0.3)
  assert pretrain["mls"] == pytest.approx(0.13) and pretrain["commonvoice"] == pytest.approx(0.27)
  assert pretrain["music"] == pytest.approx(0.25) and pretrain["mmc4"] == pytest.approx(0.05)
  tokens = {n: pipeline.TASK_INFO[n].tokens() for n in ("laion_coco", "journeydb")}
  assert pretrain["laion_coco"] / pretrain["journeydb"] == pytest.approx(tokens["laion_coco"] / tokens["journeydb"])
  assert set(reg.mixtures["anygpt_continue"]) == {"journeydb_t2i", "laion_coco_caption", "music_continue"}
  assert reg.mixtures["anygpt_sft"] == {"anyinstruct": 1.0}
  for name in ("anygpt_pretrain", "anygpt_continue", "anygpt_sft"):
    assert isinstance(seqio.get_mixture_or_task(name), seqio.Mixture)


def directions(task_name):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      {"targets": 4096}, split="train", shuffle=False, seed=0, use_cached=False, trim_output_features=False)
  return [int(ex["to_text"]) for ex in ds.as_numpy_iterator()]


def test_continue_phase_directions(default_data):
  root, spm = default_data
  pipeline.register_corpora(root, spm, [DEFAULT for DEFAULT in pipeline.DEFAULT_CORPORA if DEFAULT.kind != "chat"])
  assert directions("journeydb_t2i") == [0] * 8  # text-to-image only
  assert directions("laion_coco_caption") == [1] * 8  # captions only
  assert pipeline.TASK_INFO["journeydb_t2i"].spec.shard_corpus == "journeydb"


def test_chat_corpus_needs_chat_tokens(default_data):
  root, spm = default_data
  with pytest.raises(ValueError, match="chat tokens"):
    pipeline.register_corpora(root, spm, [("anyinstruct", "chat")], default_mixtures=False)


def test_register_and_get_dataset_through_gin(default_data):
  root, spm = default_data
  with gin.unlock_config():
    gin.bind_parameter("register_corpora.data_dir", root)
    gin.bind_parameter("register_corpora.spm_path", spm)
    gin.bind_parameter("register_corpora.corpora", [("mls", "speech_text", "{name}/{name}-{split}-*", 1.0)])
    gin.bind_parameter("register_corpora.default_mixtures", False)
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
