"""Samples during training: a short `anygpt-train` run whose evaluation generates for AnyGPT task
strings and writes text, image and audio summaries to TensorBoard and `samples.jsonl`."""

import io
import json
import os
import pathlib

import gin
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anygpt_jax.cli import gin_config
from anygpt_jax.testing import tiny_tokenizers as tiny
from anygpt_jax.tokenizers import audio_io
from anygpt_jax.training.samples import SamplesConfigError, TrainingSamples
from anygpt_jax.vocabulary.layout import ROLE_TOKENS
from test_train_cli import run_gin_text, write_run_inputs
from tools import train as train_cli

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def summaries(log_dir) -> dict[str, tuple[str, object]]:
  """{tag: (plugin name, tensor)} of every summary in the run's event files."""
  import tensorflow as tf
  found = {}
  for path in sorted(log_dir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        found[value.tag] = (value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor), event.step)
  return found


def readme_sample_bindings() -> str:
  """The gin block of README's '## Generation' section (samples during training)."""
  text = (REPO / "README.md").read_text()
  section = text.split("## Generation", 1)[1].split("\n## ", 1)[0]
  return section.split("```gin\n", 1)[1].split("```", 1)[0]


def test_a_short_run_writes_text_image_and_audio_samples(tmp_path, clean_gin, monkeypatch):
  """README's bindings, verbatim, from a directory laid out as they assume (relative paths)."""
  inputs = write_run_inputs(tmp_path, records=24)
  # Image and music de-tokenizers; none for speech, whose answer is then shown as tokens.
  tiny.save_tiny_seed(tmp_path / "tokenizers" / "seed_tokenizer")
  tiny.save_tiny_unclip(tmp_path / "tokenizers" / "stable-diffusion-2-1-unclip")
  tiny.save_tiny_encodec(tmp_path / "tokenizers" / "encodec_32khz")
  rng = np.random.default_rng(0)
  (tmp_path / "media").mkdir()
  Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "media" / "photo.png")
  audio_io.write_wav(str(tmp_path / "media" / "music.wav"), 0.3 * rng.standard_normal(16000).astype(np.float32),
                     32000)
  prompts = ["text|image|a dog on a beach", "text|speech|hello", "text|music|calm piano", "image|text|media/photo.png",
             "music|text|media/music.wav"]
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=2, extra=f"""
train.evaluator = @Evaluator
Evaluator.tasks = []  # samples only, no held-out losses
Evaluator.task_feature_lengths = %TASK_FEATURE_LENGTHS
Evaluator.batch_size = 8
{readme_sample_bindings()}
"""))
  monkeypatch.chdir(tmp_path)
  model_dir = tmp_path / "run"
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={model_dir}"]) == 0

  records = [json.loads(l) for l in (model_dir / "samples.jsonl").read_text().splitlines()]
  assert [(r["step"], r["task"]) for r in records] == [(2, p) for p in prompts]
  for r in records:
    assert "error" not in r, r
    assert r["prompt_ids"][0] == 1 and r["output_ids"] and not any(t in r["text"] for t in ROLE_TOKENS)
  image, speech, music = (r["spans"][0] for r in records[:3])
  assert image["modality"] == "image" and image["closed"] and len(image["codes"]) == 32
  assert speech["modality"] == "speech" and speech["closed"] and 1 <= len(speech["codes"]) <= 12 - 3
  assert music["modality"] == "music" and music["closed"] and len(music["codes"]) % 4 == 0 and music["codes"]
  assert all(0 <= c < 2048 * (i % 4 + 1) and c >= 2048 * (i % 4) for i, c in enumerate(music["codes"]))
  assert all(r["prompt"].endswith("[MMGPT]:") for r in records[3:])

  found = summaries(model_dir / "tensorboard")
  kinds = {tag: plugin for tag, (plugin, _, step) in found.items() if tag.startswith("samples/") and step == 2}
  assert kinds == {"samples/00_text_to_image/text": "text", "samples/00_text_to_image/image": "images",
                   "samples/01_text_to_speech/text": "text",
                   "samples/02_text_to_music/text": "text", "samples/02_text_to_music/audio": "audio",
                   "samples/03_image_to_text/text": "text", "samples/04_music_to_text/text": "text"}
  width, height, png = found["samples/00_text_to_image/image"][1][:3]
  assert Image.open(io.BytesIO(png)).size == (int(width), int(height))
  wave, rate = sf.read(io.BytesIO(found["samples/02_text_to_music/audio"][1].reshape(-1)[0]))
  assert rate == 32000 and len(wave) == len(music["codes"]) // 4 * 640  # Encodec 32 kHz: 640 samples a frame
  text = lambda tag: found[f"samples/{tag}/text"][1].reshape(-1)[0].decode()
  assert records[3]["task"] in text("03_image_to_text") and f"answer: {records[3]['text']}" in text("03_image_to_text")
  speech_tokens = "".join(f"<\U0001F5E3\ufe0f{c}>" for c in speech["codes"])
  assert f"<sosp>{speech_tokens}<eosp>" in text("01_text_to_speech") and "tokens only" in text("01_text_to_speech")


def test_bad_bindings_are_named():
  with pytest.raises(SamplesConfigError, match=r"prompts\[1\].*unknown direction text\|video"):
    TrainingSamples(prompts=["text|image|a cat", "text|video|a cat"], sentencepiece_model="x.model")
  with pytest.raises(SamplesConfigError, match="max_new_tokens: unknown modalities"):
    TrainingSamples(prompts=["text|image|a cat"], sentencepiece_model="x.model", max_new_tokens={"video": 3})


@pytest.mark.parametrize("run_file", ["pretrain_llama2_7b.gin", "continue.gin"])
def test_real_run_files_sample_block_works_uncommented(run_file, tmp_path, clean_gin):
  """The real run files ship samples commented out; uncommented, the block parses and configures."""
  text = (REPO / "gin" / "runs" / run_file).read_text()
  head, block = text.split("# Evaluator.samples", 1)
  uncommented = tmp_path / run_file
  uncommented.write_text(head + "\n".join(l[2:] for l in ("# Evaluator.samples" + block).splitlines()) + "\n")
  gin_config.import_configurables()
  gin_config.parse_gin([str(uncommented)], ["MODEL_DIR = '/r'", "SENTENCEPIECE_MODEL = '/t.model'", "DATA_DIR = '/d'",
                                           "LLAMA2_DIR = '/h'", "PRETRAIN_DIR = '/p'"])
  samples = gin.get_bindings("Evaluator")["samples"]  # gin calls @TrainingSamples() here
  assert isinstance(samples, TrainingSamples) and samples.sentencepiece_model == "/t.model"
  assert [t.target for t in samples.tasks] == ["image", "speech", "music"] and samples.every_evals == 5


def test_sample_lines_append_in_a_gs_bucket(gcs, tmp_path):
  """samples.jsonl goes through epath: appended (rewritten whole) in a gs:// run directory."""
  import os
  import subprocess
  import sys
  bucket, env = gcs
  code = f"""
from anygpt_jax import filesystem
from anygpt_jax.filesystem import append_json_lines as _append_lines
path = filesystem.resolve("gs://{bucket.name}/run") / "samples.jsonl"
_append_lines(path, [{{"step": 2, "index": 0}}, {{"step": 2, "index": 1}}])
_append_lines(path, [{{"step": 4, "index": 0}}])
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **env), timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in bucket.read("run/samples.jsonl").decode().splitlines()]
  assert [(l["step"], l["index"]) for l in lines] == [(2, 0), (2, 1), (4, 0)]
  assert not (tmp_path / "gs:").exists()


def test_sample_lines_accumulate_on_a_local_disk(tmp_path):
  """Sampling steps accumulate in a local run directory (created if needed) as on an object store."""
  from anygpt_jax import filesystem
  from anygpt_jax.filesystem import append_json_lines as _append_lines
  path = filesystem.resolve(tmp_path / "run") / "samples.jsonl"
  _append_lines(path, [{"step": 2, "index": 0}])
  _append_lines(path, [{"step": 4, "index": 0}])
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [2, 4]
