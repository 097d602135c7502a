"""Exact resume: a run killed with SIGKILL (mid-run, or during a save) and started again with the
same command reaches the same losses, bit for bit, as a run never interrupted; non-finite streaks
stop the run with the last good checkpoint intact. Subprocesses of the real `anygpt-train`."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from test_train_cli import losses_by_step, run_gin_text, write_run_inputs

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  directory = tmp_path_factory.mktemp("resume")
  inputs = write_run_inputs(directory)
  run_file = directory / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=STEPS, extra="CheckpointConfig.save_every_steps = 4\n"
                                   "CheckpointConfig.keep_last = 5\n"))
  inputs["run_file"] = str(run_file)
  inputs["dir"] = directory
  return inputs


def _command(inputs, model_dir, *extra):
  return [sys.executable, "-m", "tools.train", f"--gin_file={inputs['run_file']}", f"--gin.MODEL_DIR={model_dir}",
          *extra]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2")


def _run(cmd, timeout=600):
  result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
  return result


def _losses(model_dir) -> dict[int, list[float]]:
  """step -> every loss logged for it (several when a step ran before and after a kill)."""
  return losses_by_step((pathlib.Path(model_dir) / "tensorboard" / "metrics.jsonl").read_text())


@pytest.fixture(scope="module")
def reference(inputs):
  model_dir = inputs["dir"] / "reference"
  result = _run(_command(inputs, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  losses = _losses(model_dir)
  assert sorted(losses) == list(range(1, STEPS + 1))
  return {step: values[0] for step, values in losses.items()}


def _start(inputs, model_dir):
  return subprocess.Popen(_command(inputs, model_dir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def _wait_for(predicate, process, timeout=300, poll=0.2):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      return False
    time.sleep(poll)
  return False


def _logged_steps(model_dir):
  path = pathlib.Path(model_dir) / "tensorboard" / "metrics.jsonl"
  if not path.exists():
    return 0
  lines = [l for l in path.read_text().splitlines() if l.endswith("}")]
  return json.loads(lines[-1])["step"] if lines else 0


def _assert_same_losses(model_dir, reference):
  losses = _losses(model_dir)
  assert sorted(losses) == sorted(reference)
  for step, values in losses.items():
    for value in values:  # bit for bit, including steps run twice around the kill
      assert value == reference[step], (step, values, reference[step])


@pytest.mark.slow
def test_sigkill_mid_run_then_same_command_gives_identical_losses(inputs, reference):
  model_dir = inputs["dir"] / "killed"
  process = _start(inputs, model_dir)
  assert _wait_for(lambda: _logged_steps(model_dir) >= 6, process), "the run ended before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = _logged_steps(model_dir)
  assert killed_at < STEPS
  result = _run(_command(inputs, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 4" in result.stdout or "resumed from step 8" in result.stdout
  _assert_same_losses(model_dir, reference)
  assert any(len(v) > 1 for v in _losses(model_dir).values())  # some steps really ran twice


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_usable(inputs, reference):
  model_dir = inputs["dir"] / "killed_in_save"
  checkpoints = model_dir / "checkpoints"

  def saving():
    try:
      return any("tmp" in name for name in os.listdir(checkpoints))
    except FileNotFoundError:
      return False

  process = _start(inputs, model_dir)
  # Step 4's save finished (logging runs a step behind the device, and a loaded machine may
  # take longer than a step to write a save), then the next save in progress.
  assert _wait_for(lambda: _logged_steps(model_dir) >= 5 and (checkpoints / "4").exists(), process)
  # The save of step 8 or 12, whichever the poll sees first: a save's temporary directory may
  # live only briefly, so this poll is finer (10 ms) than the others.
  caught = _wait_for(saving, process, poll=0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert caught, "no save was in progress when the process was killed"
  finished = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  partial = [p.name for p in checkpoints.iterdir() if "tmp" in p.name]
  assert len(partial) == 1, partial
  killed_step = int(partial[0].split(".")[0])
  assert finished and max(finished) < killed_step, (finished, partial)
  result = _run(_command(inputs, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from step {max(finished)}" in result.stdout
  _assert_same_losses(model_dir, reference)


@pytest.mark.slow
def test_non_finite_streak_stops_with_a_clear_error_and_keeps_the_good_checkpoint(inputs):
  model_dir = inputs["dir"] / "diverging"
  result = _run(_command(inputs, model_dir, "--gin.train.stop_after_steps=4"))
  assert result.returncode == 0, result.stderr[-3000:]
  # An absurd learning rate: the next update overflows the parameters, every later step is non-finite.
  result = _run(_command(inputs, model_dir, "--gin.learning_rate_schedule.peak_learning_rate=1e30",
                         "--gin.train.max_nonfinite_streak=3"))
  assert result.returncode != 0
  assert "NonFiniteError" in result.stderr and "3 steps in a row" in result.stderr
  assert "last good checkpoint is step 4" in result.stderr
  metrics = [json.loads(l) for l in (model_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["train/skipped_steps"] == 3 and metrics[-1]["train/nonfinite_streak"] == 3
  assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [4]
  # The good checkpoint restores and training goes on with a sane learning rate.
  result = _run(_command(inputs, model_dir, "--gin.train.stop_after_steps=6"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 4" in result.stdout


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_cleanly_and_the_same_command_resumes(inputs, reference):
  model_dir = inputs["dir"] / "terminated"
  log = inputs["dir"] / "terminated.out"
  with open(log, "w") as out:
    process = subprocess.Popen(_command(inputs, model_dir), cwd=REPO, env=_env(), stdout=out,
                               stderr=subprocess.STDOUT)
    assert _wait_for(lambda: _logged_steps(model_dir) >= 5, process), "the run ended before SIGTERM"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
  output = log.read_text()
  assert "on SIGTERM after saving it" in output, output[-3000:]
  stopped = int(output.split("stopped at step ")[1].split()[0])
  assert 5 <= stopped < STEPS
  assert stopped in [int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()]
  assert _logged_steps(model_dir) == stopped  # every step run was logged, none after the save
  result = _run(_command(inputs, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from step {stopped}" in result.stdout
  _assert_same_losses(model_dir, reference)
  assert all(len(v) == 1 for v in _losses(model_dir).values())  # nothing ran twice: no work lost

