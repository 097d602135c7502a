"""The raw demo corpus: real media where available, a manifest the job reads, built in seconds."""

import json

import soundfile as sf
from PIL import Image

from anygpt_jax.tokenizers import inputs
from anygpt_jax.testing.demo_corpus import build_demo_corpus


def test_demo_corpus_manifest_and_media(tmp_path):
  manifest = build_demo_corpus(tmp_path / "demo", num_images=6, num_speech=5, num_music=4, seed=3)
  rows = [json.loads(l) for l in manifest.read_text().splitlines()]
  assert [r["kind"] for r in rows] == ["image"] * 6 + ["speech"] * 5 + ["music"] * 4
  assert len({r["id"] for r in rows}) == 15 and all(r["text"] for r in rows)
  records = list(inputs.read_manifest(str(manifest)))
  assert all(not r.reject for r in records)
  for r in records:
    if r.kind == "image":
      with Image.open(r.path) as img:
        assert img.size == (256, 256)
    else:
      info = sf.info(r.path)
      assert info.channels == 1 and info.frames > info.samplerate * 0.3
      if r.kind == "music":
        assert (info.samplerate, info.frames) == (32000, 160000)
  assert {p.suffix for p in (tmp_path / "demo" / "images").iterdir()} == {".jpg", ".png"}


def test_demo_corpus_is_a_function_of_the_seed(tmp_path):
  a = build_demo_corpus(tmp_path / "a", 3, 2, 2, seed=5, use_espeak=False)
  b = build_demo_corpus(tmp_path / "b", 3, 2, 2, seed=5, use_espeak=False)
  assert a.read_text() == b.read_text()
  for sub in ("images/img_0001.png", "speech/utt_0001.wav", "music/clip_0001.wav"):
    assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
