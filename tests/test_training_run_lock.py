"""One trainer per run directory (`anygpt_jax.training.run_lock`): a live lease is refused naming its
holder, a dead holder's lease is taken over, and a second trainer leaves the first one untouched."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import gin
import pytest

from anygpt_jax.training.run_lock import LOCK_FILE, RunDirectoryBusyError, RunLock
from test_train_cli import losses_by_step, run_gin_text, write_run_inputs

REPO = pathlib.Path(__file__).resolve().parent.parent


def _lease(directory, **holder):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "token": "other", "started": time.time(),
            "heartbeat": time.time(), **holder}
  (directory / LOCK_FILE).write_text(json.dumps(record))


def test_a_live_lease_is_refused_and_a_dead_ones_is_taken_over(tmp_path):
  _lease(tmp_path)  # this very process, beating now: alive
  with pytest.raises(RunDirectoryBusyError, match=f"{socket.gethostname()} pid {os.getpid()}"):
    RunLock(tmp_path).acquire()

  gone = subprocess.Popen(["sleep", "60"])
  gone.kill()
  gone.wait()
  _lease(tmp_path, pid=gone.pid)  # a killed trainer of this host: its pid no longer runs
  said = []
  lock = RunLock(tmp_path, report=said.append)
  lock.acquire()
  assert said == [f"[anygpt-train] taking over {tmp_path / LOCK_FILE}: its holder, {socket.gethostname()} pid "
                  f"{gone.pid}, no longer runs"]
  assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.record["token"]
  lock.release()
  assert not (tmp_path / LOCK_FILE).exists()

  _lease(tmp_path, host="another-host", heartbeat=time.time() - 600)  # another host, silent for 10 minutes
  said.clear()
  lock = RunLock(tmp_path, lease_s=120, report=said.append)
  lock.acquire()
  assert "its holder, another-host pid" in said[0] and "last beat 600 s ago (lease 120 s)" in said[0]
  lock.release()


def test_a_second_trainer_is_refused_while_the_first_finishes_untouched(tmp_path, capsys):
  from tools import train as train_cli

  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=10))
  model_dir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2")
  first = subprocess.Popen([sys.executable, "-m", "tools.train", f"--gin_file={run_file}",
                            f"--gin.MODEL_DIR={model_dir}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while not (model_dir / LOCK_FILE).exists() and first.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
  assert (model_dir / LOCK_FILE).exists(), "the first trainer ended before it took the lease"
  gin.clear_config()
  try:
    assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={model_dir}"]) == 1
  finally:
    gin.clear_config()
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error.startswith("anygpt-train: RunDirectoryBusyError: ") and f"pid {first.pid}" in error
  assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
  losses = losses_by_step((model_dir / "tensorboard" / "metrics.jsonl").read_text())
  assert sorted(losses) == list(range(1, 11)) and all(len(v) == 1 for v in losses.values())  # nobody else wrote
  assert not (model_dir / LOCK_FILE).exists()  # released at the end
