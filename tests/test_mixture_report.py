"""anygpt-mixture-report: the arithmetic of shares, consumed tokens and epochs."""

import re

import pytest

from anygpt_jax.data import pipeline
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece
from tools import mixture_report


def test_report_arithmetic(tmp_path, capsys):
  spm = train_llama_like_sentencepiece(list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3,
                                       str(tmp_path / "spm" / "m"), 600)
  synthetic_corpus.write_corpus(str(tmp_path), "rep_image", "image_text", 20, seed=1)
  synthetic_corpus.write_corpus(str(tmp_path), "rep_music", "music_text", 10, seed=2)
  args = ["custom_mixture", "--steps", "100", "--batch", "4", "--length", "2048", "--data_dir", str(tmp_path),
          "--spm", spm, "--corpus", "rep_image:image_text:{name}/{name}-{split}-*:0.5",
          "--corpus", "rep_music:music_text:{name}/{name}-{split}-*"]
  assert mixture_report.main(args) == 0
  out = capsys.readouterr().out
  assert "rep_image" in out and "rep_music" in out and "per modality" in out
  rows = {r["task"]: r for r in mixture_report.mixture_rows("custom_mixture", 100, 4, 2048)}
  total = sum(pipeline.TASK_INFO[t].tokens() for t in rows)
  for task, r in rows.items():
    tokens = pipeline.TASK_INFO[task].tokens()
    assert r["examples"] == {"rep_image": 20, "rep_music": 10}[task]
    assert r["tokens"] == pytest.approx(tokens)
    assert r["share"] == pytest.approx(tokens / total)  # token-count rates
    assert r["consumed_tokens"] == pytest.approx(r["share"] * 100 * 4 * 2048)
    assert r["epochs"] == pytest.approx(r["consumed_tokens"] / tokens)
    line = next(l for l in out.splitlines() if l.startswith(task))
    assert f"{r['epochs']:.3f}" in line and f"{r['examples']:,}" in line
  music = rows["rep_music"]["consumed_by_modality"]
  assert music["image"] == 0 and music["music"] > music["text"] > 0
  assert sum(music.values()) == pytest.approx(rows["rep_music"]["consumed_tokens"])
  per_modality = {m: float(n.replace(",", "")) for m, n in re.findall(r"^  (\w+)\s+([\d,]+)", out, re.M)}
  assert sum(per_modality.values()) == pytest.approx(100 * 4 * 2048, abs=len(per_modality))  # printed rounded
