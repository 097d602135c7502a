"""Rate functions from token counts, group shares, epochs, and the stats files they read."""

import json

import pytest

from anygpt_jax.data import mixing


def test_temperature_rates():
  tokens = {"a": 900.0, "b": 100.0}
  assert mixing.temperature_rates(tokens) == pytest.approx({"a": 0.9, "b": 0.1})
  # T=2: proportional to sqrt(tokens) -> 30:10.
  assert mixing.temperature_rates(tokens, temperature=2.0) == pytest.approx({"a": 0.75, "b": 0.25})
  # A cap limits the big corpus: min(900, 300)=300 vs 100.
  assert mixing.temperature_rates(tokens, cap=300) == pytest.approx({"a": 0.75, "b": 0.25})
  # Oversampling b by 9 makes them equal.
  assert mixing.temperature_rates(tokens, oversample={"b": 9.0}) == pytest.approx({"a": 0.5, "b": 0.5})
  with pytest.raises(ValueError, match="unknown corpora"):
    mixing.temperature_rates(tokens, oversample={"c": 2.0})
  with pytest.raises(ValueError, match="positive"):
    mixing.temperature_rates(tokens, temperature=0)
  with pytest.raises(ValueError, match="zero"):
    mixing.temperature_rates({"a": 0.0})


def test_group_rates_follow_the_paper_shares():
  shares = {"interleaved": 0.05, "image_text": 0.3, "speech_mls": 0.13, "speech_cv_gs": 0.27, "music": 0.25}
  members = {"image_text": ["laion_coco", "journeydb"], "speech_mls": ["mls"], "speech_cv_gs": ["cv", "gs"],
             "music": ["music"], "interleaved": ["mmc4"]}
  tokens = {"laion_coco": 300.0, "journeydb": 100.0, "mls": 5.0, "cv": 1.0, "gs": 3.0, "music": 7.0, "mmc4": 1.0}
  rates = mixing.group_rates(shares, members, tokens)
  assert sum(rates.values()) == pytest.approx(1.0)
  assert rates["laion_coco"] == pytest.approx(0.3 * 0.75) and rates["journeydb"] == pytest.approx(0.3 * 0.25)
  assert rates["cv"] == pytest.approx(0.27 * 0.25) and rates["mls"] == pytest.approx(0.13)
  # Missing groups are left out and the others renormalised.
  partial = mixing.group_rates(shares, members, {"mls": 1.0, "music": 1.0})
  assert partial == pytest.approx({"mls": 0.13 / 0.38, "music": 0.25 / 0.38})


def test_stats_files_and_epochs(tmp_path):
  shard = tmp_path / "c-train-00000-of-00001"
  shard.write_bytes(b"")
  (tmp_path / "c-train-00000-of-00001.stats.json").write_text(json.dumps({
      "corpus": "c", "split": "train", "records_in": 12, "records_out": 10, "rejected": {"too_long": 2},
      "tokens": {"image": 320, "speech": 0, "music": 0}, "text_chars": 400, "audio_seconds": 0.0}))
  assert mixing.shard_files(str(tmp_path / "c-train-*")) == [str(shard)]
  stats = mixing.read_corpus_stats([str(shard)])
  assert stats.records == 10 and stats.modality_tokens["image"] == 320 and stats.text_chars == 400
  # 400 chars at 4 chars/token = 100 text tokens, plus 10 records x 12 template tokens.
  assert stats.total_tokens(4.0, 12.0) == 320 + 100 + 120
  assert mixing.read_corpus_stats([str(tmp_path / "nothing")]) is None
  assert mixing.epochs_consumed(0.5, steps=10, batch=2, length=54, corpus_tokens=540) == pytest.approx(1.0)
  assert mixing.measure_chars_per_token(["abcd", "ef"], lambda t: list(t[::2])) == pytest.approx(2.0)
