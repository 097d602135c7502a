"""Run directories anywhere: a relative `MODEL_DIR`, and a `gs://` one on a local GCS emulator.

Both are subprocesses of the real `anygpt-train`. The `gs://` run talks to fake-gcs-server on
127.0.0.1 (`tests/gcs_emulator.py`): orbax's array writes go through tensorstore's GCS driver,
every other file through `etils.epath`'s fsspec backend (gcsfs).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from anygpt_jax import filesystem
from test_train_cli import losses_by_step, run_gin_text, write_run_inputs

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_resolve_makes_local_paths_absolute_and_keeps_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(filesystem.resolve("runs/a")) == str(tmp_path / "runs" / "a")
  assert os.fspath(filesystem.resolve("~/x")) == os.path.expanduser("~/x")
  assert os.fspath(filesystem.resolve("gs://bucket/run")) == "gs://bucket/run"
  assert filesystem.is_local("runs/gs:/x") and not filesystem.is_local("gs://b/x")
  with pytest.raises(ValueError, match="empty path"):
    filesystem.resolve("")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  directory = tmp_path_factory.mktemp("paths")
  inputs = write_run_inputs(directory, records=48)
  run_file = directory / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=4))
  inputs["run_file"] = str(run_file)
  inputs["dir"] = directory
  return inputs


def _train(inputs, model_dir, cwd, env=None, *extra):
  command = [sys.executable, "-m", "tools.train", f"--gin_file={inputs['run_file']}", f"--gin.MODEL_DIR={model_dir}",
             *extra]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=str(REPO), **(env or {}))
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.fixture(scope="module")
def local_run(inputs):
  """A relative MODEL_DIR, from a working directory outside the repository."""
  cwd = inputs["dir"] / "work"
  cwd.mkdir()
  result = _train(inputs, "runs/rel", cwd)
  return cwd / "runs" / "rel", result


def test_relative_model_dir_trains_saves_and_logs(local_run):
  model_dir, result = local_run
  assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
  assert "MODEL_DIR = 'runs/rel'" in (model_dir / "config.gin").read_text()
  assert (model_dir / "vocabulary_layout.json").exists()
  assert sorted(losses_by_step((model_dir / "tensorboard" / "metrics.jsonl").read_text())) == [1, 2, 3, 4]
  # Gin's package-resource lookups of included files no longer print Python ERROR lines.
  assert "ERROR:root" not in result.stderr and "Path not found" not in result.stderr, result.stderr[-2000:]


def test_trees_go_to_the_bucket_and_back(gcs, tmp_path):
  """Staged files (iterator states, events, traces) up to gs:// and back, nested directories too."""
  bucket, env = gcs
  code = f"""
import os, sys
from anygpt_jax import filesystem
up, down = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(up, "x", "y"))
open(os.path.join(up, "a.txt"), "w").write("A")
open(os.path.join(up, "x", "y", "b.bin"), "wb").write(bytes(range(256)))
print(sorted(filesystem.upload_tree(up, "gs://{bucket.name}/tree")))
print(sorted(filesystem.download_tree("gs://{bucket.name}/tree", down)))
"""
  up, down = tmp_path / "up", tmp_path / "down"
  result = subprocess.run([sys.executable, "-c", code, str(up), str(down)], cwd=tmp_path, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO), **env), timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == ["['a.txt', 'x/y/b.bin']"] * 2
  assert sorted(n for n in bucket.names() if n.startswith("tree/")) == ["tree/a.txt", "tree/x/y/b.bin"]
  assert (down / "x" / "y" / "b.bin").read_bytes() == bytes(range(256))


# Slow (three training processes).
@pytest.mark.slow
def test_gs_model_dir_writes_everything_to_the_bucket_and_resumes_exactly(inputs, local_run, gcs):
  bucket, env = gcs
  cwd = inputs["dir"] / "gs_work"
  cwd.mkdir()
  model_dir = f"gs://{bucket.name}/runs/a"
  cache = inputs["dir"] / "gs_cache"
  flags = [f"--gin.train.compilation_cache_dir={cache}"]
  first = _train(inputs, model_dir, cwd, env, *flags, "--gin.train.stop_after_steps=2",
                 "--gin.train.profile_steps=(1, 1)")
  second = _train(inputs, model_dir, cwd, env, *flags)
  assert "resumed from step 2" in second.stdout and "resumed" not in first.stdout

  names = bucket.names()
  run = [n[len("runs/a/"):] for n in names if n.startswith("runs/a/")]
  assert "config.gin" in run and "vocabulary_layout.json" in run
  assert "MODEL_DIR = 'gs://anygpt-test/runs/a'" in bucket.read("runs/a/config.gin").decode()
  for step in (2, 4):  # orbax's arrays (tensorstore), its metadata (epath) and the data iterator state
    assert f"checkpoints/{step}/commit_success.txt" in run
    assert any(n.startswith(f"checkpoints/{step}/state/") for n in run)
    assert f"checkpoints/{step}/data/shard_00000.index" in run
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in run)
  assert list(cache.iterdir())  # compiled programs kept for the next start
  assert any(n.startswith("profile/plugins/profile/") and n.endswith(".xplane.pb") for n in run)
  # Metrics of both sessions in one file, equal to the uninterrupted local run's: the data
  # iterator came back from the bucket at the right position.
  losses = losses_by_step(bucket.read("runs/a/tensorboard/metrics.jsonl").decode())
  local_model_dir, _ = local_run
  reference = losses_by_step((local_model_dir / "tensorboard" / "metrics.jsonl").read_text())
  assert losses == reference
  # Nothing landed in a local folder named after the URL.
  for root in (cwd, REPO):
    assert not list(pathlib.Path(root).glob("gs:*")), list(pathlib.Path(root).glob("gs:*"))
  assert not list(cwd.rglob("*")), list(cwd.rglob("*"))
