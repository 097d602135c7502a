"""`anygpt-train`: t5x-style gin flags, errors naming the bad binding, a short run on real data."""

import json
import re
import pathlib

import gin
import numpy as np
import pytest

from anygpt_jax.cli import gin_config
from tools import train as train_cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def write_run_inputs(directory: pathlib.Path, records: int = 96) -> dict[str, str]:
  """Real pretokenized shards (the `anygpt_jax.data.shards` schema) of an image-text corpus and a SentencePiece model."""
  from anygpt_jax.testing import synthetic_corpus
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

  data_dir = directory / "shards"
  synthetic_corpus.write_corpus(str(data_dir), "pairs", "image_text", records, split="train", seed=1)
  synthetic_corpus.write_corpus(str(data_dir), "pairs", "image_text", 8, split="validation", seed=2)
  rng = np.random.default_rng(0)
  texts = [synthetic_corpus.random_text(rng, 5, 30) for _ in range(300)]
  spm = train_llama_like_sentencepiece(texts, str(directory / "spm" / "test"), vocab_size=400)
  return {"data_dir": str(data_dir), "spm": spm}


def losses_by_step(metrics_jsonl: str) -> dict[int, list[float]]:
  """step -> every training loss `metrics.jsonl` logged for it (several when a step ran before and
  after a stop); lines without one (evaluation only) are skipped."""
  out = {}
  for line in metrics_jsonl.splitlines():
    entry = json.loads(line)
    if "train/loss" in entry:
      out.setdefault(entry["step"], []).append(entry["train/loss"])
  return out


def run_gin_text(inputs: dict[str, str], steps: int, extra: str = "") -> str:
  """A small run configuration on the tiny model, written the way users write run files."""
  return f"""
include 'gin/runs/base.gin'
include 'gin/models/tiny.gin'
include 'gin/mesh/cpu_single.gin'
MIXTURE_OR_TASK_NAME = 'pairs'
TASK_FEATURE_LENGTHS = {{'targets': 128}}
BATCH_SIZE = 8
TRAIN_STEPS = {steps}
SENTENCEPIECE_MODEL = '{inputs["spm"]}'
train.data_registration = @register_corpora
register_corpora.data_dir = '{inputs["data_dir"]}'
register_corpora.spm_path = %SENTENCEPIECE_MODEL
register_corpora.corpora = [('pairs', 'image_text')]
register_corpora.default_mixtures = False
register_corpora.shuffle_buffer_size = 64
learning_rate_schedule.peak_learning_rate = 3e-3
train.log_every_steps = 1
CheckpointConfig.save_every_steps = 2
{extra}
"""


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_gin_flags_become_bindings():
  bindings, rest = gin_config.split_gin_flags(
      ["--gin_file=a.gin", "--gin.MODEL_DIR=/tmp/run x", "--gin.BATCH_SIZE=8", "--gin.train.z_loss=1e-4",
       "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.MODEL_DIR2='/q'", "--gin.train.model=@model_config()"])
  assert rest == ["--gin_file=a.gin"]
  assert bindings == ["MODEL_DIR = '/tmp/run x'", "BATCH_SIZE = 8", "train.z_loss = 1e-4",
                      "TASK_FEATURE_LENGTHS = {'targets': 64}", "MODEL_DIR2 = '/q'", "train.model = @model_config()"]
  with pytest.raises(gin_config.GinConfigError, match="--gin.NAME=VALUE"):
    gin_config.split_gin_flags(["--gin.MODEL_DIR"])


@pytest.mark.parametrize("flag, named", [
    ("--gin.train.no_such_parameter=1", "train.no_such_parameter"),
    ("--gin.no_such_configurable.x=1", "no_such_configurable.x"),
    ("--gin.learning_rate_schedule.peak_learning_rate=(1,", "learning_rate_schedule.peak_learning_rate"),
])
def test_bad_binding_is_named(flag, named, capsys, clean_gin):
  code = train_cli.main(["--gin_file=gin/runs/demo.gin", flag])
  assert code == 2
  err = capsys.readouterr().err
  assert named in err and "gin binding" in err


def test_both_gin_commands_share_the_usage_errors(capsys):
  from tools import compile as compile_cli
  compile_flags = ["--topology=v5p:2x2x1", "--output_dir=unused"]
  for main, prog, flags in ((train_cli.main, "anygpt-train", []), (compile_cli.main, "anygpt-compile", compile_flags)):
    assert main(["--gin.MODEL_DIR='x'", *flags]) == 2
    assert capsys.readouterr().err.startswith(f"{prog}: at least one --gin_file is required")
    assert main(["--gin_file=gin/runs/demo.gin", "--gin.nonsense", *flags]) == 2
    assert capsys.readouterr().err.startswith(f"{prog}: '--gin.nonsense': expected --gin.NAME=VALUE")


def test_bad_gin_file_is_named(tmp_path, capsys, clean_gin):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'gin/runs/base.gin'\ntrain.modle_dir = 'x'\n")
  assert train_cli.main([f"--gin_file={bad}"]) == 2
  err = capsys.readouterr().err
  assert str(bad) in err and "modle_dir" in err


def test_run_files_parse(clean_gin):
  """Every shipped run file, with each mesh file, parses against the real configurables."""
  gin_config.import_configurables()
  required = ["MODEL_DIR = '/r'", "SENTENCEPIECE_MODEL = '/t.model'", "DATA_DIR = '/d'", "LLAMA2_DIR = '/h'",
              "PRETRAIN_DIR = '/p'", "BASE_DIR = '/b'"]
  for run in sorted(p for p in (REPO / "gin" / "runs").glob("*.gin") if p.name != "base.gin"):
    for mesh in [None, *sorted((REPO / "gin" / "mesh").glob("*.gin"))]:
      gin.clear_config()
      text = run.read_text()
      gin_config.parse_gin([str(run)] + ([str(mesh)] if mesh else []),
                          [b for b in required if b.split(" ")[0] in text or b.startswith(("MODEL_DIR", "SENT"))])
  gin.clear_config()
  with pytest.raises(gin_config.GinConfigError, match="LLAMA2_DIR"):
    gin_config.parse_gin([str(REPO / "gin/runs/pretrain_llama2_7b.gin")], required[:2])
  gin.clear_config()
  gin_config.parse_gin([str(REPO / "gin/runs/pretrain_llama2_7b.gin")], required[:4])
  assert gin.query_parameter("%BATCH_SIZE") == 480
  assert gin.query_parameter("%TRAIN_STEPS") == 81000
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"targets": 4500}
  assert gin.query_parameter("learning_rate_schedule.peak_learning_rate") == 6e-5
  assert gin.query_parameter("learning_rate_schedule.warmup_fraction") == 0.03
  assert gin.query_parameter("make_optimizer.clip_global_norm") == 1.0
  gin.clear_config()
  gin_config.parse_gin([str(REPO / "gin/runs/sft_anyinstruct.gin")], required[:2] + ["BASE_DIR = '/b'"])
  assert gin.query_parameter("%BATCH_SIZE") == 64 and gin.query_parameter("%TRAIN_STEPS") == 5000
  assert gin.query_parameter("learning_rate_schedule.peak_learning_rate") == 2e-5


def test_short_run_writes_config_checkpoints_and_logs(tmp_path, capsys, clean_gin):
  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=4, extra="""
train.evaluator = @Evaluator
train.eval_every_steps = 2
Evaluator.tasks = ['pairs']
Evaluator.task_feature_lengths = %TASK_FEATURE_LENGTHS
Evaluator.batch_size = 8
Evaluator.num_batches = 1
"""))
  model_dir = tmp_path / "run"
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={model_dir}", "--gin.train.z_loss=1e-4"]) == 0
  out = capsys.readouterr().out
  assert "step 4 | loss" in out and "image" in out
  assert " | eta 00:" in next(line for line in out.splitlines() if line.startswith("step 4 |"))
  evals = [line for line in out.splitlines() if line.startswith("eval step")]
  assert [line.split(" | ")[:2] for line in evals] == [["eval step 2", "pairs"], ["eval step 4", "pairs"]]
  assert all(" | loss " in line and " | ppl " in line and " | image " in line for line in evals)
  assert list((model_dir / "compilation_cache").iterdir())  # compiled programs kept for a restart

  # gin wraps a long binding onto a continuation line (`MODEL_DIR = \` + the value): read it unwrapped.
  operative = (model_dir / "config.gin").read_text().replace("\\\n", " ")
  operative = "\n".join(" ".join(line.split()) for line in operative.splitlines())
  assert f"MODEL_DIR = '{model_dir}'" in operative
  assert "train.z_loss = 0.0001" in operative
  assert "TrainInput.batch_size = %BATCH_SIZE" in operative
  layout = json.loads((model_dir / "vocabulary_layout.json").read_text())
  assert layout["text_vocab_size"] <= 400  # the test's small SentencePiece model, not LLaMA's

  assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
  assert list((model_dir / "tensorboard").glob("events.out.tfevents.*"))
  entries = [json.loads(l) for l in (model_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  metrics = [m for m in entries if "train/loss" in m]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4]
  assert [m["step"] for m in entries if "eval/pairs/loss" in m] == [2, 4]
  for m in metrics:
    assert np.isfinite(m["train/loss"]) and m["train/image/tokens"] > 0 and m["train/text/tokens"] > 0
  assert metrics[-1]["train/loss"] < metrics[0]["train/loss"]
  assert metrics[0]["train/z_loss"] > 0


def test_records_the_renderer_cannot_take_never_stop_a_run(tmp_path, capsys, clean_gin):
  """A shard written by another tool with a caption holding `<soim>` and a code out of range among
  good records: the run trains on, each bad record is skipped and counted in `data/skipped_records`,
  and the console says so once."""
  from anygpt_jax.data.shards import Part, Sample
  from anygpt_jax.testing import synthetic_corpus
  inputs = write_run_inputs(tmp_path, records=8)
  rng = np.random.default_rng(5)
  good = [synthetic_corpus.make_sample("image_text", i, rng, "pairs") for i in range(40)]
  bad = [Sample("alt-text", [Part("image", codes=[1]), Part("text", "an alt text <soim> of a cat")]),
         Sample("out-of-range", [Part("image", codes=[9000]), Part("text", "fine words")])]
  synthetic_corpus.write_shards(str(tmp_path / "shards" / "pairs"), "pairs", "train", bad + good)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=2))
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={tmp_path / 'run'}"]) == 0
  out = capsys.readouterr().out
  entries = [json.loads(l) for l in (tmp_path / "run" / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  counts = [m["data/skipped_records"] for m in entries if "train/loss" in m]
  # Counted each time they are read: the 42 records repeat many times in the first batches' windows.
  assert len(counts) == 2 and all(c > 0 and c % 2 == 0 for c in counts)
  warning, = re.findall(r"warning: step \d+: (\d+) records skipped so far", out)
  assert int(warning) in counts


@pytest.mark.parametrize("damage", ["cut_short", "random_bytes"])
def test_a_corrupt_shard_is_named(tmp_path, capsys, clean_gin, damage):
  """tf.data's own error names no file: the run's names the shard and the reason, in one line, whether
  registration reads the bad record (random bytes: the first) or the training stream does (a shard
  cut at 90 %: registration's 64 sample records read, the first batches reach the cut)."""
  inputs = write_run_inputs(tmp_path)
  shard, = [p for p in pathlib.Path(inputs["data_dir"]).rglob("pairs-train-*") if not p.name.endswith(".json")]
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) * 9 // 10] if damage == "cut_short"
                    else np.random.default_rng(0).bytes(len(data)))
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=4))
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={tmp_path / 'run'}"]) == 1
  captured = capsys.readouterr()
  error = captured.err.strip().splitlines()[-1]
  assert error.startswith(f"anygpt-train: CorruptShardError: corrupt shard file: {shard}: ")
  assert ("truncated record" in error) if damage == "cut_short" else ("corrupted record" in error)
  assert "[Op:" not in error and "function_node" not in error


def test_resuming_with_changed_settings(tmp_path, capsys, clean_gin):
  """Settings that break exact resume are refused, named with both values, and nothing is written;
  a safe change (the learning rate) is said and kept in config_history/; a breaking change accepted
  on purpose is recorded from the step it applies to."""
  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=6, extra=f"train.compilation_cache_dir = '{tmp_path / 'cache'}'\n"))
  run = tmp_path / "run"

  def train(*flags):
    gin.clear_config()
    return train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={run}", *flags])

  assert train("--gin.train.stop_after_steps=2") == 0
  record = json.loads((run / "run_record.json").read_text())
  assert record["settings"]["data"]["batch_size"] == 8 and record["settings"]["model"]["hidden_size"] == 64
  config = (run / "config.gin").read_text()
  capsys.readouterr()

  assert train("--gin.BATCH_SIZE=16", "--gin.model_config.overrides={'intermediate_size': 96}") == 1
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error.startswith("anygpt-train: RunChangedError: ") and "resuming at step 2" in error
  assert "data.batch_size: recorded 8, now 16" in error and "model.intermediate_size: recorded 128, now 96" in error
  assert (run / "config.gin").read_text() == config and json.loads((run / "run_record.json").read_text()) == record

  assert train("--gin.train.stop_after_steps=4", "--gin.learning_rate_schedule.peak_learning_rate=0.001") == 0
  out = capsys.readouterr().out
  assert "resumed from step 2" in out and "config changed since the last start (from step 2)" in out
  assert "+ learning_rate_schedule.peak_learning_rate = 0.001" in out
  assert sorted(p.name for p in (run / "config_history").iterdir()) == ["step_00000000.gin", "step_00000002.gin"]
  assert "peak_learning_rate = 0.001" in (run / "config.gin").read_text()

  assert train("--gin.BATCH_SIZE=16", "--gin.train.accept_changes=True") == 0
  out = capsys.readouterr().out
  assert "continuing at step 4 with changed settings (accepted): data.batch_size: recorded 8, now 16" in out
  record = json.loads((run / "run_record.json").read_text())
  change, = record["changes"]
  assert change["from_step"] == 4 and (change["setting"], change["was"], change["now"]) == ("data.batch_size", 8, 16)
  assert record["settings"]["data"]["batch_size"] == 16
  assert max(losses_by_step((run / "tensorboard" / "metrics.jsonl").read_text())) == 6


def test_a_macro_of_the_wrong_type_is_named(tmp_path, capsys, clean_gin):
  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=2))
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={tmp_path / 'run'}",
                         "--gin.BATCH_SIZE='eight'"]) == 1
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error == ("anygpt-train: BindingTypeError: TrainInput.batch_size = %BATCH_SIZE is 'eight' (str): expected "
                   "an int (--verbose for the traceback)")
  gin.clear_config()
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={tmp_path / 'run'}",
                         "--gin.TRAIN_STEPS=2.5"]) == 1
  assert "train.train_steps = %TRAIN_STEPS is 2.5 (float): expected an int" in capsys.readouterr().err
