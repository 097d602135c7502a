"""Two processes (real jax.distributed on 127.0.0.1) train on the tokenization job's output.

The job always writes `<shard>.rejects.jsonl` beside each shard (here with a rejected record in
it) and a killed job leaves `.tmp` files: neither may be read as a shard. With one shard file per
split and two hosts, each host keeps every second record. A split with fewer records than hosts
stops both processes before the first step with an error naming the corpus, hosts and files.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from test_distributed import _env, _free_port

REPO = pathlib.Path(__file__).resolve().parent.parent


def _tokenize(raw: pathlib.Path, data: pathlib.Path, split: str, records: int, rng) -> None:
  lines = []
  for i in range(records):
    codes = "".join(f"<\U0001F5E3\uFE0F{int(c)}>" for c in rng.integers(0, 1024, 8))
    lines.append({"text": f"the cat number {i} sits", "speech": f"<sosp>{codes}<eosp>"})
  lines.append({"text": "rejected", "speech": "<sosp><\U0001F5E3\uFE0F4096><eosp>"})  # out of range
  path = raw / f"pairs.{split}.jsonl"
  path.write_text("\n".join(json.dumps(l, ensure_ascii=False) for l in lines) + "\n", encoding="utf-8")
  result = subprocess.run([sys.executable, "-m", "tools.tokenize_media", "--anygpt_data", str(path), "--corpus",
                           "pairs", "--split", split, "--output_dir", str(data / "pairs"), "--no_progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 3, result.stderr[-2000:]  # 3: records were rejected


def _run_file(directory: pathlib.Path, data: pathlib.Path, spm: str) -> pathlib.Path:
  run_file = directory / "run.gin"
  run_file.write_text(f"""
include 'gin/runs/base.gin'
include 'gin/models/tiny.gin'
include 'gin/mesh/cpu_single.gin'
DATA_DIR = '{data}'
SENTENCEPIECE_MODEL = '{spm}'
MIXTURE_OR_TASK_NAME = 'pairs'
TASK_FEATURE_LENGTHS = {{'targets': 128}}
BATCH_SIZE = 4
TRAIN_STEPS = 3
register_corpora.corpora = [('pairs', 'speech_text')]
register_corpora.shuffle_buffer_size = 16
train.log_every_steps = 1
train.evaluator = @Evaluator
train.eval_every_steps = 3
Evaluator.tasks = [%MIXTURE_OR_TASK_NAME]
Evaluator.task_feature_lengths = %TASK_FEATURE_LENGTHS
Evaluator.batch_size = %BATCH_SIZE
Evaluator.num_batches = 1
""")
  return run_file


def _start_two(run_file, model_dir):
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", "tools.train", f"--gin_file={run_file}", f"--gin.MODEL_DIR={model_dir}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       "--heartbeat_timeout_s=10"],
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece
  root = tmp_path_factory.mktemp("distributed_data")
  (root / "raw").mkdir()
  rng = np.random.default_rng(0)
  data = root / "shards"
  _tokenize(root / "raw", data, "train", 24, rng)
  _tokenize(root / "raw", data, "validation", 6, rng)
  (data / "pairs" / "pairs-train-00001-of-00002.tmp").write_bytes(b"what a killed job leaves")
  spm = train_llama_like_sentencepiece([f"the cat number {i} sits" for i in range(50)] * 3,
                                       str(root / "spm" / "m"), 400)
  return root, data, spm


@pytest.mark.slow
def test_two_processes_train_on_the_tokenization_jobs_output(tokenized):
  root, data, spm = tokenized
  assert (data / "pairs" / "pairs-train-00000-of-00001.rejects.jsonl").read_text().strip()
  model_dir = root / "run"
  processes = _start_two(_run_file(root, data, spm), model_dir)
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-4000:]
  rows = [json.loads(l) for l in (model_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  assert sorted(r["step"] for r in rows if "train/loss" in r) == [1, 2, 3]
  assert any("eval/pairs/loss" in r for r in rows)


@pytest.mark.slow
def test_a_host_without_records_stops_both_before_training(tokenized, tmp_path):
  root, data, spm = tokenized
  few = tmp_path / "shards"
  (few / "pairs").mkdir(parents=True)
  for f in (data / "pairs").iterdir():
    if "-train-" in f.name:
      (few / "pairs" / f.name).write_bytes(f.read_bytes())
  _tokenize(tmp_path, few, "validation", 1, np.random.default_rng(1))  # 1 held-out record, 2 hosts
  model_dir = tmp_path / "run"
  processes = _start_two(_run_file(tmp_path, few, spm), model_dir)
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode != 0
    assert "corpus 'pairs', split 'validation': input shards (hosts) [1] of 2 would get no record" in err, err[-3000:]
    assert "pairs-validation-00000-of-00001 (1 records)" in err
  assert not (model_dir / "tensorboard" / "metrics.jsonl").exists()
