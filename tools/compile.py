"""`anygpt-compile`: compile a run's train step ahead of time for a TPU topology, on any machine.

  anygpt-compile --gin_file=gin/runs/pretrain_llama2_7b.gin --gin_file=gin/mesh/tpu_v5p_pod.gin \\
      --topology v5p:4x4x2 --output_dir /tmp/compile_7b

Takes anygpt-train's flags (`--gin_file`, `--gin.NAME=VALUE`, `--gin_search_path`) and builds the
run's model, optimizer, mesh and Trainer as anygpt-train does, then compiles `Trainer.train_step`
for the topology's abstract devices (needs libtpu: `pip install -e .[tpu]`). No data, weights,
SentencePiece model or run directory is read: macros left `%gin.REQUIRED` that the step does not
depend on (MODEL_DIR, LLAMA2_DIR, ...) are bound to None, and without a SentencePiece model the
text vocabulary is LLaMA-2's 32000 pieces (`--text_vocab_size`).

Prints per device the state (params + optimizer), temporaries and total against the chip's HBM,
XLA's estimated step time and the estimated MFU; writes `train_step.hlo.txt` (optimised HLO) and
`report.json` into --output_dir. Exits 1 when the step does not fit, naming the levers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from typing import Any

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.cli.gin_config import GinConfigError, import_configurables, parse_command_line, parse_gin

LLAMA2_TEXT_VOCAB_SIZE = 32000
_REQUIRED_MACRO = re.compile(r"(\w+)/macro\.value set to `%gin\.REQUIRED`")


def parse_gin_for_compile(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> list[str]:
  """anygpt-train's parsing, with every still-required macro bound to None.

  Returns the names of the macros so bound (they do not shape the train step; a setting that
  does, such as BATCH_SIZE, then fails with a clear error when it is read).
  """
  import gin

  import_configurables()
  unset: list[str] = []
  while True:
    try:
      parse_gin(gin_files, bindings + [f"{name} = None" for name in unset], search_paths)
      return unset
    except GinConfigError as e:
      match = _REQUIRED_MACRO.search(str(e))
      if match is None or match.group(1) in unset:
        raise
      unset.append(match.group(1))
      gin.clear_config()


def _resolve(value: Any) -> Any:
  """A bound gin value with macros and `@configurable()` references evaluated."""
  import gin

  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  if isinstance(value, dict):
    return {k: _resolve(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_resolve(v) for v in value)
  return value


def _argument(fn, name: str, bindings: dict[str, Any]) -> Any:
  """`fn`'s argument `name` as anygpt-train would get it: the gin binding, else the default."""
  if name in bindings:
    return _resolve(bindings[name])
  return inspect.signature(fn).parameters[name].default


def spec_from_gin(text_vocab_size: int = LLAMA2_TEXT_VOCAB_SIZE):
  """The StepSpec of the parsed run: what `anygpt_jax.training.loop.train` would build from gin."""
  import gin

  from anygpt_jax import partitioning
  from anygpt_jax.training import aot
  from anygpt_jax.training import loop
  from anygpt_jax.training import loss as loss_lib
  from anygpt_jax.training import optimizer as optimizer_lib
  from anygpt_jax.training.input import TrainInput, sequence_length_of

  train = gin.get_bindings(loop.train, resolve_references=False)
  if "model" not in train:
    raise GinConfigError("the run binds no model: set train.model (e.g. include 'gin/models/llama2_7b.gin')")
  model = _resolve(train["model"])
  layout_binding = train.get("layout")
  if layout_binding is None:
    raise GinConfigError("anygpt-compile needs train.layout (e.g. @vocabulary_layout()); the data's registered "
                         "vocabulary is not read")
  layout_bindings = gin.get_bindings(loop.vocabulary_layout, resolve_references=True)
  if not layout_bindings.get("sentencepiece_model") and layout_bindings.get("text_vocab_size") is None:
    with gin.unlock_config():
      gin.bind_parameter("vocabulary_layout.text_vocab_size", text_vocab_size)
  layout = _resolve(layout_binding)
  steps = _argument(loop.train, "train_steps", train)
  if not isinstance(steps, int):
    raise GinConfigError(f"train.train_steps={steps!r}: set TRAIN_STEPS (the schedule's length)")
  learning_rate = optimizer_lib.learning_rate_schedule(total_steps=steps)
  inputs = gin.get_bindings(TrainInput, resolve_references=True)
  batch_size, lengths = inputs.get("batch_size"), inputs.get("task_feature_lengths")
  if not isinstance(batch_size, int) or lengths is None:
    raise GinConfigError(f"TrainInput.batch_size={batch_size!r} and TrainInput.task_feature_lengths={lengths!r}: "
                         "set BATCH_SIZE and TASK_FEATURE_LENGTHS")
  return aot.StepSpec(
      model=model, layout=layout, batch_size=batch_size, sequence_length=sequence_length_of(lengths),
      num_microbatches=_argument(loop.train, "num_microbatches", train),
      z_loss=_argument(loop.train, "z_loss", train), loss_chunk_length=loss_lib.loss_tiling(),
      mesh_axes=_argument(loop.train, "mesh_axes", train), rules=partitioning.logical_axis_rules(),
      optimizer=optimizer_lib.make_optimizer(learning_rate=learning_rate), learning_rate=learning_rate)


def build_parser() -> argparse.ArgumentParser:
  parser = ArgumentParser(prog="anygpt-compile", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_search_path", action="append", default=[])
  parser.add_argument("--topology", required=True, help="TPU topology, e.g. v5p:4x4x2, v5e:4x4, v6e:8x8")
  parser.add_argument("--output_dir", required=True, help="where train_step.hlo.txt and report.json go")
  parser.add_argument("--text_vocab_size", type=int, default=LLAMA2_TEXT_VOCAB_SIZE,
                      help="text pieces when the run names no SentencePiece model (LLaMA-2: 32000)")
  parser.add_argument("--no_cost", action="store_true",
                      help="skip the two extra compiles that estimate the step time and MFU")
  return parser


def compile_run(spec, topology: str, output_dir: str, estimate_cost: bool = True) -> dict[str, Any]:
  """Compiles `spec` for `topology`, writes the HLO and report.json; returns the report."""
  from etils import epath

  from anygpt_jax.training import aot

  _, devices = aot.topology_devices(topology)
  out = epath.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  try:
    step = aot.compile_train_step(spec, devices)
  except aot.DoesNotFit as refused:
    # No executable, so no cost either: the report says what XLA asked for.
    report = aot.report(topology, devices, None, None, spec=spec, refused=refused)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return report
  (out / "train_step.hlo.txt").write_text(step.compiled.as_text())
  # The memory part first: the cost compiles take as long again, and memory is what decides a slice.
  report = aot.report(topology, devices, step, None)
  (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
  if estimate_cost:
    print(aot.format_report(report) + "\n[anygpt-compile] estimating the step time ...", flush=True)
    cost = aot.estimate_step_cost(spec, devices, aot.peak_flops_per_device(topology, devices))
    report = aot.report(topology, devices, step, cost)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
  return report


def main(argv: list[str] | None = None) -> int:
  parsed = parse_command_line(build_parser(), argv)
  if parsed is None:
    return 2
  bindings, args = parsed
  try:
    unset = parse_gin_for_compile(args.gin_file, bindings, args.gin_search_path)
    spec = spec_from_gin(args.text_vocab_size)
  except GinConfigError as e:
    print(f"anygpt-compile: {e}", file=sys.stderr)
    return 2
  if unset:
    print(f"[anygpt-compile] not needed to compile, left unset: {', '.join(unset)}", flush=True)
  from anygpt_jax.training import aot
  try:
    report = compile_run(spec, args.topology, args.output_dir, estimate_cost=not args.no_cost)
  except (aot.TopologyError, ValueError) as e:
    print(f"anygpt-compile: {e}", file=sys.stderr)
    return 2
  print(aot.format_report(report), flush=True)
  written = "report.json" if report["memory"].get("refused_by_xla") else "train_step.hlo.txt and report.json"
  print(f"[anygpt-compile] wrote {written} into {args.output_dir}", flush=True)
  return 0 if report["fits"] else 1


if __name__ == "__main__":
  sys.exit(main())
