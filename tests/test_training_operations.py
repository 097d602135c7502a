"""Pod operations of the trainer, in-process: SIGTERM as a stop request, profile steps, the console's
evaluation lines and ETA. (A subprocess stopped by SIGTERM and resumed: test_training_resume.py.)"""

import os
import signal

import gin
import pytest

from anygpt_jax.training import loop, metrics
from anygpt_jax.vocabulary.layout import VocabularyLayout


def test_sigterm_becomes_a_stop_request_and_the_old_handler_comes_back():
  previous = signal.getsignal(signal.SIGTERM)
  preemption = loop.Preemption(enabled=True)
  try:
    assert not preemption.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # the process survives: the handler only sets a flag
    assert preemption.should_stop(2)
  finally:
    preemption.close()
  assert signal.getsignal(signal.SIGTERM) is previous


def test_disabled_preemption_leaves_sigterm_alone():
  previous = signal.getsignal(signal.SIGTERM)
  preemption = loop.Preemption(enabled=False)
  assert signal.getsignal(signal.SIGTERM) is previous
  preemption.request_stop()
  assert preemption.should_stop(1)
  preemption.close()


@pytest.mark.parametrize("steps", [(0, 2), (3, 2), (1, 2, 3)])
def test_bad_profile_steps_are_named(tmp_path, steps):
  with pytest.raises(ValueError, match="profile_steps"):
    loop.Profile(tmp_path, steps)


@pytest.mark.parametrize("binding", ["learning_rate_schedule.total_steps = 500",
                                     "STEPS = 500\nlearning_rate_schedule.total_steps = %STEPS"])
def test_a_schedule_length_other_than_train_steps_is_an_error(tmp_path, binding):
  """train() passes train_steps to the schedule; a gin binding that says otherwise is named, not ignored."""
  gin.clear_config()
  try:
    gin.parse_config(binding)
    with pytest.raises(ValueError, match="learning_rate_schedule.total_steps = 500 .* train.train_steps = 20"):
      loop.train(model_dir=str(tmp_path / "run"), train_steps=20, model=loop.get_config("tiny"),
                 layout=VocabularyLayout(text_vocab_size=100), compilation_cache=False)
    gin.clear_config()
    gin.parse_config("learning_rate_schedule.total_steps = 20")  # the same length: allowed
    assert loop._schedule_steps(20) == 20
  finally:
    gin.clear_config()


def test_eval_lines_one_per_task_with_modalities():
  scalars = {"eval/pairs/loss": 2.5, "eval/pairs/perplexity": 12.18, "eval/pairs/accuracy": 0.25,
             "eval/pairs/text/loss": 3.0, "eval/pairs/image/loss": 2.0,
             "eval/text/loss": 1.5, "eval/text/perplexity": 4.48, "eval/text/accuracy": 0.5}
  lines = metrics.eval_console_lines(7, scalars)
  assert lines == ["eval step 7 | pairs | loss 2.5000 | ppl 12.2 | acc 0.250 | text 3.000 | image 2.000",
                   "eval step 7 | text | loss 1.5000 | ppl 4.48 | acc 0.500"]


def test_eta_in_the_console_line():
  assert metrics.format_duration(59.6) == "01:00"
  assert metrics.format_duration(3 * 3600 + 62) == "03:01:02"
  assert metrics.format_duration(2 * 86400 + 5) == "2d 00:00:05"
  eta = metrics.Eta(last_step=10)
  assert eta.update(1) is None
  left = eta.update(2)
  assert left is not None and left >= 0
  line = metrics.console_line(2, {"train/loss": 1.0, "perf/eta_s": 3725.0})
  assert line.endswith("eta 01:02:05")


@pytest.mark.slow
def test_bench_restart_times_four_starts(tmp_path):
  """tools/bench_restart.py, the README's compilation-cache figure, on the tiny model."""
  import pathlib
  import subprocess
  import sys

  from test_train_cli import run_gin_text, write_run_inputs

  repo = pathlib.Path(__file__).resolve().parent.parent
  inputs = write_run_inputs(tmp_path, records=48)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=4))
  result = subprocess.run([sys.executable, "-m", "tools.bench_restart", f"--gin_file={run_file}",
                           f"--work_dir={tmp_path / 'bench'}"], cwd=repo, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith(("fresh run", "restart"))]
  assert len(rows) == 4 and all(float(row.split()[-2]) > 0 for row in rows), result.stdout
  assert list((tmp_path / "bench" / "compilation_cache").iterdir())
