"""`anygpt-demo` end to end on a reduced corpus: raw media -> tokenization job -> SentencePiece ->
training -> checkpoints, TensorBoard logs, a per-modality loss plot; a second start resumes."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tools import demo

REPO = pathlib.Path(__file__).resolve().parent.parent


def readme_transformers_block() -> str:
  """The python block of README's "Serving an export" section."""
  section = (REPO / "README.md").read_text().split("### Serving an export", 1)[1].split("\n## ", 1)[0]
  return section.split("```python\n", 1)[1].split("```", 1)[0]


def run_readme_transformers_block(cwd) -> str:
  result = subprocess.run([sys.executable, "-c", readme_transformers_block()], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_readme_transformers_block_on_an_export(tmp_path):
  """The README's block, verbatim, on a tiny export laid out where `make demo` writes its own."""
  from test_vocabulary_chat_format import tiny_export
  from anygpt_jax.testing import synthetic_corpus
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

  texts = list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3
  spm = train_llama_like_sentencepiece(texts, str(tmp_path / "spm"), 600)
  tiny_export(tmp_path / "demo_out" / "export", spm)
  printed = run_readme_transformers_block(tmp_path)
  assert printed.strip(), "the block prints the decoded reply"


def test_loss_summary_and_metrics_reading(tmp_path):
  log = tmp_path / "run" / "tensorboard" / "metrics.jsonl"
  log.parent.mkdir(parents=True)
  rows = [{"step": 1, "train/loss": 9.0, "train/image/loss": 9.5, "train/speech/loss": None},
          {"step": 2, "train/loss": 8.0, "train/image/loss": 8.5, "train/speech/loss": 7.0},
          {"step": 2, "train/loss": 7.5, "train/image/loss": 8.0, "train/speech/loss": 6.0},  # re-run after resume
          {"step": 3, "train/loss": 6.0, "train/image/loss": 7.0, "train/speech/loss": 5.0},
          {"step": 3, "eval/demo_image/loss": 1.0}]
  log.write_text("".join(json.dumps(r) + "\n" for r in rows))
  metrics = demo.read_metrics(tmp_path / "run")
  assert [m["step"] for m in metrics] == [1, 2, 3] and metrics[1]["train/loss"] == 7.5
  summary = demo.loss_summary(metrics, window=2)
  assert summary["loss"] == {"start": pytest.approx(8.25), "end": pytest.approx(6.75)}
  assert summary["speech/loss"]["start"] == 6.0  # the missing value is left out, not counted as 0
  assert summary["music/loss"] == {"start": None, "end": None}
  demo.plot_losses(metrics, tmp_path / "plot.png")
  assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_end_to_end_then_resume(tmp_path):
  out = tmp_path / "demo_out"
  cmd = [sys.executable, "-m", "tools.demo", f"--out_dir={out}", "--items=16", "--validation_items=3"]
  # As a user runs it: one CPU device (not the test session's 8 forced host devices).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(cmd + ["--steps=6"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for kind in ("image", "speech", "music"):
    for split in ("train", "validation"):
      stats = json.loads((out / "shards" / f"demo_{kind}" / f"demo_{kind}-{split}-00000-of-00001.stats.json")
                         .read_text())
      assert stats["records_out"] > 0 and stats["tokens"][kind] > 0
  assert (out / "spm" / "demo.model").exists()
  run = out / "run"
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert (out / "losses_per_modality.png").read_bytes()[:4] == b"\x89PNG"
  summary = json.loads((out / "demo_summary.json").read_text())
  for name in ("image/loss", "speech/loss", "music/loss", "text/loss"):
    assert summary["losses"][name]["start"] is not None, name
  metrics = [json.loads(l) for l in (run / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  assert any(k.startswith("eval/demo_music/") for m in metrics for k in m)  # held-out evaluation ran
  for line in ("checkpoint:", "TensorBoard logs:", "loss plot:", str(out / "losses_per_modality.png"),
               "HuggingFace export:"):
    assert line in result.stdout
  # The demo ends with a servable export: it loads, and the README's transformers block runs on it.
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(out / "export")
  assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                       tokenize=False).endswith("[Human]: hi<eoh>\n[MMGPT]:")
  assert transformers.AutoModelForCausalLM.from_pretrained(out / "export").config.vocab_size == len(tokenizer)
  assert run_readme_transformers_block(tmp_path).strip()
  # The README's anygpt-generate line, verbatim, on what the demo wrote.
  import shlex
  from test_generation_cli import readme_commands
  command, = readme_commands("anygpt-generate")
  generated = subprocess.run([sys.executable, "-m", "tools.generate", *shlex.split(command)[1:]], cwd=tmp_path,
                             env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=1200)
  assert generated.returncode == 0, generated.stdout[-2000:] + generated.stderr[-2000:]
  assert len((out / "readme_samples" / "generations.jsonl").read_text().splitlines()) == 6

  # Same command, more steps: the data is reused and training resumes from step 6.
  result = subprocess.run(cmd + ["--steps=8"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "resumed from step 6" in result.stdout
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 8
