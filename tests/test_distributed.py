"""Multi-host: jax.distributed from flags/env, 2 processes x 4 CPU devices == 1 process x 8,
multi-process save and resume, and a dead process stopping the others in bounded time."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from anygpt_jax import distributed

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 6


def test_single_process_needs_no_initialisation(monkeypatch):
  for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize() is False
  assert distributed.initialize(num_processes=1) is False


@pytest.mark.parametrize("kwargs, message", [
    ({"num_processes": 2}, "coordinator address"),
    ({"coordinator_address": "127.0.0.1:1", "num_processes": 2}, "process_id"),
    ({"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 2}, "outside"),
])
def test_inconsistent_settings_are_clear_errors(kwargs, message, monkeypatch):
  for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(distributed.DistributedError, match=message):
    distributed.initialize(**kwargs)


def test_environment_settings_are_read(monkeypatch):
  monkeypatch.setenv(distributed.ENV_COORDINATOR, "127.0.0.1:1")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "5")
  with pytest.raises(distributed.DistributedError, match="process_id=5 outside"):
    distributed.initialize()


def test_watchdog_ends_a_stuck_process_with_a_clear_error():
  code = ("import time\nfrom anygpt_jax.distributed import StepWatchdog\n"
          "w = StepWatchdog(1.0)\nw.kick()\ntime.sleep(600)\n")
  # Without the watchdog the child sleeps 600 s and the timeout fails the test; no timing is asserted.
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == distributed.WATCHDOG_EXIT_CODE
  assert "no training step completed in 1 s" in result.stderr and "another process" in result.stderr


# --- multi-process runs of the real trainer ------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  from test_train_cli import run_gin_text, write_run_inputs
  directory = tmp_path_factory.mktemp("distributed")
  inputs = write_run_inputs(directory)
  run_file = directory / "run.gin"
  # Two input shards in every configuration: the global batch is then the same whatever the
  # process count. An fsdp axis spanning the processes shards parameters across hosts too.
  run_file.write_text(run_gin_text(inputs, steps=STEPS, extra="""
TrainInput.num_input_shards = 2
train.mesh_axes = {'data': -1, 'fsdp': 2, 'tensor': 1}
CheckpointConfig.save_every_steps = 3
"""))
  inputs["run_file"] = str(run_file)
  inputs["dir"] = directory
  return inputs


def _command(inputs, model_dir, *extra):
  return [sys.executable, "-m", "tools.train", f"--gin_file={inputs['run_file']}", f"--gin.MODEL_DIR={model_dir}",
          *extra]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", TF_CPP_MIN_LOG_LEVEL="2")


def _start_two(inputs, model_dir, *extra, heartbeat=10):
  port = _free_port()
  return [subprocess.Popen(
      _command(inputs, model_dir, *extra, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}", f"--heartbeat_timeout_s={heartbeat}"),
      cwd=REPO, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _losses(model_dir):
  out = {}
  for line in (pathlib.Path(model_dir) / "tensorboard" / "metrics.jsonl").read_text().splitlines():
    entry = json.loads(line)
    out[entry["step"]] = entry["train/loss"]
  return out


@pytest.mark.slow
def test_two_processes_train_save_resume_and_equal_one_process(inputs):
  single_dir = inputs["dir"] / "single"
  result = subprocess.run(_command(inputs, single_dir), cwd=REPO, env=_env(8), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  multi_dir = inputs["dir"] / "multi"
  for extra in (["--gin.train.stop_after_steps=3"], []):  # stop after the step-3 save, then resume
    processes = _start_two(inputs, multi_dir, *extra)
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (out, err) in zip(processes, outputs):
      assert p.returncode == 0, err[-3000:]
  assert "resumed from step 3" in outputs[0][0]
  assert sorted(int(p.name) for p in (multi_dir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
  # Each process wrote the iterator state of its own input shard.
  data_dir = multi_dir / "checkpoints" / "6" / "data"
  assert (data_dir / "shard_00000.index").exists() and (data_dir / "shard_00001.index").exists()

  single, multi = _losses(single_dir), _losses(multi_dir)
  assert sorted(single) == sorted(multi) == list(range(1, STEPS + 1))
  for step in single:
    assert multi[step] == pytest.approx(single[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_a_dead_process_stops_the_other_in_bounded_time(inputs):
  model_dir = inputs["dir"] / "dead"
  processes = _start_two(inputs, model_dir, "--gin.TRAIN_STEPS=100000", "--gin.train.step_timeout_s=60",
                         heartbeat=10)
  survivor, victim = processes
  log = model_dir / "tensorboard" / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while not (log.exists() and len(log.read_text().splitlines()) >= 3):
    assert time.monotonic() < deadline and survivor.poll() is None, "the run did not start"
    time.sleep(0.5)
  victim.send_signal(signal.SIGKILL)
  # The bound is the communicate timeout (TimeoutExpired fails the test): the survivor's own
  # detection (heartbeat 10 s, step timeout 60 s) ends it well before; no duration is asserted.
  out, err = survivor.communicate(timeout=300)
  victim.wait()
  assert survivor.returncode != 0
  assert ("another task died" in err or "another process has probably died" in err), err[-2000:]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(inputs):
  """A preempted VM: JAX's preemption service tells every process, and all save the same step."""
  model_dir = inputs["dir"] / "preempted"
  processes = _start_two(inputs, model_dir, "--gin.TRAIN_STEPS=100000")
  log = model_dir / "tensorboard" / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while not (log.exists() and len(log.read_text().splitlines()) >= 3):
    assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "the run did not start"
    time.sleep(0.5)
  processes[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  # Process 0 prints; both processes reached the same step (one checkpoint, both data shards).
  stopped = int(outputs[0][0].split("stopped at step ")[1].split()[0])
  assert stopped in [int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()]
  data_dir = model_dir / "checkpoints" / str(stopped) / "data"
  assert (data_dir / "shard_00000.index").exists() and (data_dir / "shard_00001.index").exists()
  processes = _start_two(inputs, model_dir, "--gin.TRAIN_STEPS=100000", f"--gin.train.stop_after_steps={stopped + 1}")
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  assert f"resumed from step {stopped}" in outputs[0][0]
