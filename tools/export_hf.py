"""`anygpt-export`: a run's checkpoint as a HuggingFace LlamaForCausalLM directory, streamed.

  anygpt-export --model_dir runs/pretrain --output_dir exports/anygpt-7b [--step 81000] [--dtype bfloat16]

The model configuration, vocabulary layout, text mode (`legacy`) and trained length come from the
run's own operative config (`{model_dir}/config.gin`). The weights are read from the orbax
checkpoint one parameter (or block of layers) at a time and written into safetensors shards as
they come: the host holds about one stored parameter, never the model, and no device is used.
`--model_dir` and `--output_dir` may be local, relative or gs://-style. The tokenizer needs the
run's SentencePiece model: `--spm` overrides the path the run used.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from . import child_env, command


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="anygpt-export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model_dir", required=True, help="the run directory (holds config.gin and checkpoints/)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--spm", default=None, help="SentencePiece model (default: the run's SENTENCEPIECE_MODEL)")
  parser.add_argument("--max_shard_gb", type=float, default=5.0)
  parser.add_argument("--resolve_only", action="store_true", help=argparse.SUPPRESS)
  return parser


_RESOLVED = "ANYGPT_EXPORT_RUN "


def _query(name: str, default=None):
  import gin
  try:
    value = gin.query_parameter(name)
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference):  # a macro such as %SENTENCEPIECE_MODEL
    value = value.scoped_configurable_fn()
  return value


def load_run_config(model_dir: str, spm_path: str | None = None) -> dict:
  """What a run's config.gin says about its model: {'config', 'layout', 'spm_path', 'legacy',
  'trained_length'} (legacy: the data pipeline's text mode; trained_length: the packed length)."""
  import gin
  from etils import epath

  from anygpt_jax.data import pipeline
  from anygpt_jax.training import loop
  from .train import import_configurables

  config_path = epath.Path(model_dir) / "config.gin"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {model_dir} a run directory of anygpt-train or "
                            "anygpt-import?")
  import_configurables()
  gin.clear_config()
  gin.parse_config(config_path.read_text(), skip_unknown=True)
  if spm_path:  # overrides the path the run used
    gin.bind_parameter("vocabulary_layout.sentencepiece_model", spm_path)
  layout = loop.vocabulary_layout()
  lengths = _query("TrainInput.task_feature_lengths") or {}
  legacy_default = inspect.signature(pipeline.register_corpora).parameters["legacy"].default
  return {"config": loop.model_config().with_vocabulary(layout), "layout": layout,
          "spm_path": _query("vocabulary_layout.sentencepiece_model"),
          "legacy": bool(_query("register_corpora.legacy", legacy_default)),
          "trained_length": max(lengths.values()) if lengths else None}


def resolve_run(model_dir: str, spm_path: str | None = None) -> dict:
  """`load_run_config` in a child process, as plain values.

  Parsing a run's gin config imports every configurable the run names (the data pipeline, and
  with it TensorFlow: about 0.8 GB resident). A child does it and exits, so the streaming
  export itself holds only the weights it is converting.
  """
  import json
  import subprocess

  argv = [*command("export_hf"), "--model_dir", model_dir, "--output_dir", "-",
          "--resolve_only"] + (["--spm", spm_path] if spm_path else [])
  # Same working directory (relative paths), and this package importable from it.
  out = subprocess.run(argv, capture_output=True, text=True, env=child_env())
  lines = [line for line in out.stdout.splitlines() if line.startswith(_RESOLVED)]
  if out.returncode or not lines:
    raise RuntimeError(f"anygpt-export: reading {model_dir}/config.gin failed:\n{out.stderr[-4000:]}")
  return json.loads(lines[-1][len(_RESOLVED):])


def _print_resolved(model_dir: str, spm_path: str | None) -> None:
  import dataclasses
  import json

  from anygpt_jax.export.hf import token_ids
  run = load_run_config(model_dir, spm_path)
  ids = token_ids(run["layout"])
  print(_RESOLVED + json.dumps({
      "config": dataclasses.asdict(run["config"]), "layout": run["layout"].to_json_dict(),
      "spm_path": run["spm_path"], "legacy": run["legacy"], "trained_length": run["trained_length"],
      "ids": {"bos": ids.bos, "eos": list(ids.eos), "pad": ids.pad}}))


def load_run(model_dir: str, spm_path: str | None = None, step: int | None = None):
  """A run's checkpoint as a `generation.loading.LoadedModel` (params as numpy, the text mode of its
  data), the whole model in host memory (for tests and small models; the export itself streams)."""
  from anygpt_jax.export.orbax_arrays import CheckpointArrays
  from anygpt_jax.generation.loading import LoadedModel

  run = load_run_config(model_dir, spm_path)
  arrays = CheckpointArrays(model_dir, step)
  params = {}
  for leaf in sorted(leaf[1:] for leaf in arrays.leaves if leaf[0] == "params"):
    node = params
    for key in leaf[:-1]:
      node = node.setdefault(key, {})
    node[leaf[-1]] = arrays.read(leaf)
  return LoadedModel(run["config"], params, run["layout"], run["spm_path"], model_dir, run["legacy"])


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  import time

  from etils import epath

  if args.resolve_only:
    _print_resolved(args.model_dir, args.spm)
    return 0
  from anygpt_jax.export.hf import TokenIds, export_checkpoint
  from anygpt_jax.model.config import ModelConfig
  from anygpt_jax.vocabulary.layout import VocabularyLayout

  run = resolve_run(args.model_dir, args.spm)
  config, layout = ModelConfig(**run["config"]), VocabularyLayout.from_json_dict(run["layout"])
  ids = TokenIds(bos=run["ids"]["bos"], eos=tuple(run["ids"]["eos"]), pad=run["ids"]["pad"])
  spm_path = run["spm_path"]
  if spm_path and not epath.Path(spm_path).exists():
    print(f"anygpt-export: the run's SentencePiece model {spm_path} does not exist here; pass --spm",
          file=sys.stderr)
    return 2
  if not spm_path:
    print("anygpt-export: the run names no SentencePiece model: no tokenizer files written (pass --spm)",
          file=sys.stderr)
  started = time.perf_counter()
  step = export_checkpoint(args.model_dir, args.output_dir, config, layout, step=args.step,
                           spm_path=spm_path, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 2**30),
                           legacy=run["legacy"], trained_length=run["trained_length"], ids=ids)
  print(f"exported step {step} of {args.model_dir} ({config.num_params() / 1e6:.1f}M parameters, vocabulary "
        f"{layout.vocab_size}, {args.dtype}, text mode legacy={run['legacy']}) to {args.output_dir} in "
        f"{time.perf_counter() - started:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
