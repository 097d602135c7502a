"""The training loop's hooks (`training/hooks.py`): their schedule and order, a Stop ending the run, and
hooks that a run file adds without editing the loop (the short run of test_train_cli adds one)."""

import json
import math
import pathlib
import re
import shlex

import gin
import pytest

from anygpt_jax.training import hooks as hooks_lib
from test_train_cli import run_gin_text, write_run_inputs
from tools import train as train_cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def _info(step, last_step=10):
  return hooks_lib.StepInfo(step=step, last_step=last_step, state=None, run=None, writer=None)


def test_hooks_run_in_order_when_due_and_at_the_last_step_when_asked():
  calls = []
  scheduled = hooks_lib.Hooks()
  scheduled.add_hook(lambda info: calls.append(("every step", info.step)))
  scheduled.add_hook(lambda info: calls.append(("every 4", info.step)), every=4)
  scheduled.add_hook(lambda info: calls.append(("every 4 and last", info.step)), every=4, at_last=True)
  for step in range(1, 11):
    assert scheduled.after_step(_info(step)) is None
  assert [s for name, s in calls if name == "every step"] == list(range(1, 11))
  assert [s for name, s in calls if name == "every 4"] == [4, 8]
  assert [s for name, s in calls if name == "every 4 and last"] == [4, 8, 10]
  assert calls[:3] == [("every step", 1), ("every step", 2), ("every step", 3)]
  assert calls[3:6] == [("every step", 4), ("every 4", 4), ("every 4 and last", 4)]


def test_a_hooks_own_every_and_at_last_attributes_schedule_it():
  norms = hooks_lib.ParameterNorms(every=3, at_last=True)
  scheduled = hooks_lib.Hooks()
  scheduled.add_hook(norms)
  (hook,) = scheduled.scheduled
  assert (hook.every, hook.at_last) == (3, True)
  assert [s for s in range(1, 11) if hook.due(s, 10)] == [3, 6, 9, 10]


def test_a_stop_skips_the_later_hooks_of_that_step():
  calls = []
  scheduled = hooks_lib.Hooks()
  scheduled.add_hook(lambda info: hooks_lib.Stop("by the test") if info.step == 2 else None)
  scheduled.add_hook(lambda info: calls.append(info.step))
  assert scheduled.after_step(_info(1)) is None
  assert scheduled.after_step(_info(2)) == hooks_lib.Stop("by the test")
  assert calls == [1]


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "2"])
def test_a_bad_period_is_named(every):
  with pytest.raises(ValueError, match="every="):
    hooks_lib.Hooks().add_hook(lambda info: None, every=every)


def test_a_hook_that_is_not_callable_is_named():
  with pytest.raises(TypeError, match="not callable"):
    hooks_lib.Hooks().add_hook("ParameterNorms")


def test_before_step_and_close_reach_the_hooks_that_have_them_and_close_runs_once():
  class Traced:
    def __init__(self):
      self.before, self.closed = [], 0

    def __call__(self, info):
      return None

    def before_step(self, step):
      self.before.append(step)

    def close(self):
      self.closed += 1

  traced = Traced()
  scheduled = hooks_lib.Hooks()
  scheduled.add_hook(lambda info: None)  # has neither
  scheduled.add_hook(traced)
  scheduled.before_step(1)
  scheduled.before_step(2)
  scheduled.close()
  scheduled.close()
  assert traced.before == [1, 2] and traced.closed == 1


@gin.configurable
class StopAtStep:
  """A run file's own hook, written outside the library: ends the run after `step`."""

  def __init__(self, step: int = gin.REQUIRED):
    self.step = step

  def __call__(self, info):
    return hooks_lib.Stop("by StopAtStep") if info.step == self.step else None


def readme_during_training() -> tuple[list[list[str]], str]:
  """README's '### Benchmarks during training': its `anygpt-eval` lines (split as a shell would) and
  its gin block."""
  section = (REPO / "README.md").read_text().split("### Benchmarks during training", 1)[1].split("\n## ", 1)[0]
  commands = [shlex.split(line)[1:] for line in section.splitlines() if line.startswith("anygpt-eval ")]
  gin_block = re.search(r"```\n(train\.hooks.*?)```", section, re.S).group(1)
  return commands, gin_block


def test_a_run_file_adds_hooks_and_one_of_them_stops_the_run(tmp_path, monkeypatch, capsys):
  """ParameterNorms, BenchmarkGenerations (README's lines: the paper's ASR and text-to-image requests,
  their media tokenized beforehand by `anygpt-eval prompts`) and a stopping hook written here, all
  from the run file; `anygpt-eval score --watch` scores the answers into the run's TensorBoard.
  README's lines run as written but for 2 items, this run's step and the period."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  from anygpt_jax.testing import benchmark_data
  from anygpt_jax.testing import tiny_tokenizers as tiny
  from tools import eval as eval_cli

  inputs = write_run_inputs(tmp_path, records=48)
  monkeypatch.chdir(tmp_path)  # README's relative layout: data/, tokenizers/, eval_prompts/
  benchmark_data.write_librispeech(tmp_path / "data" / "LibriSpeech")
  benchmark_data.write_coco_captions(tmp_path / "data" / "coco")
  tiny.save_tiny_speech_tokenizer(tmp_path / "tokenizers" / "speechtokenizer")
  commands, gin_block = readme_during_training()
  assert [c[0] for c in commands] == ["prompts", "prompts", "score"]
  for argv in commands[:2]:
    argv[argv.index("--limit") + 1] = "2"
    assert eval_cli.main(argv) == 0
  run_file = tmp_path / "hooks.gin"
  run_file.write_text(run_gin_text(inputs, steps=4, extra=gin_block + """
train.hooks = [@ParameterNorms(), @BenchmarkGenerations(), @StopAtStep()]
ParameterNorms.every = 1
BenchmarkGenerations.every = 2
BenchmarkGenerations.settings = {'text': {'max_new_tokens': 6, 'num_beams': 1}, 'image': {'max_new_tokens': 40}}
StopAtStep.step = 2
CheckpointConfig.save_every_steps = 10
"""))
  model_dir = tmp_path / "run"
  gin.clear_config()
  try:
    assert train_cli.main([f"--gin_file={run_file}", "--gin.MODEL_DIR=run"]) == 0
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "stopped at step 2 by StopAtStep after saving it" in out
  assert "benchmark answers at step 2: librispeech_asr, coco_t2i" in out
  assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2]
  entries = [json.loads(line) for line in (model_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  norms = {e["step"]: e for e in entries if "params/norm" in e}
  assert sorted(norms) == [1, 2] and max(e["step"] for e in entries) == 2
  for entry in norms.values():
    parts = [v for k, v in entry.items() if k.startswith("params/norm/")]
    assert len(parts) >= 3 and entry["params/norm"] == pytest.approx(math.sqrt(sum(v * v for v in parts)))
  assert norms[1]["params/norm"] != norms[2]["params/norm"]  # a step changed the parameters

  step_dir = model_dir / "benchmarks" / "step_00000002"
  assert sorted(p.name for p in step_dir.parent.iterdir()) == ["step_00000002"]  # only the due step
  assert sorted(p.name for p in step_dir.iterdir()) == ["coco_t2i", "complete.json", "librispeech_asr"]
  for benchmark in ("librispeech_asr", "coco_t2i"):
    run = json.loads((step_dir / benchmark / "run.json").read_text())
    assert (run["model"], run["step"], run["limit"]) == (str(model_dir), 2, 2)
    records = [json.loads(l) for l in (step_dir / benchmark / "generations-00000-of-00001.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["prompt_ids"] and r["output_ids"] for r in records), records
  images = [json.loads(l) for l in (step_dir / "coco_t2i" / "generations-00000-of-00001.jsonl").read_text().splitlines()]
  assert all(len(r["spans"][0]["codes"]) == 32 for r in images if "error" not in r)
  score = commands[2]
  score[score.index("--watch") + 1] = "run"  # the trainer has ended: one pass
  assert eval_cli.main(score) == 0
  assert "the trainer has ended; scored steps [2]" in capsys.readouterr().out
  (entry,) = json.loads((step_dir / "report.json").read_text())["benchmarks"]
  assert entry["step"] == 2 and entry["scored"] == 2 and entry["scores"]["WER"] >= 0
  events = EventAccumulator(str(model_dir / "tensorboard"))
  events.Reload()
  scalar, = events.Scalars("benchmarks/librispeech_asr/WER")
  assert scalar.step == 2 and scalar.value == pytest.approx(entry["scores"]["WER"])
