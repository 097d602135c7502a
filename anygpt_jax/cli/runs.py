"""What a run directory says about its model, read from the run's operative gin config.

  {model_dir}/config.gin        written by anygpt-train (its operative config) or anygpt-import

`load_run_config` parses it (importing every configurable the run names, TensorFlow included);
`resolve_run` does that in a child process and returns plain values, so a streaming export holds
only the weights it converts; `load_run` and `load_model` open a run (or an export) whole for
generation and the tests.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys

_RESOLVED = "ANYGPT_RUN_CONFIG "


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
  'trained_length'} (legacy: the data pipeline's text mode; trained_length: the packed length).
  `spm_path` overrides the SentencePiece model the run used."""
  import gin
  from etils import epath

  from anygpt_jax.cli.gin_config import import_configurables
  from anygpt_jax.data import pipeline
  from anygpt_jax.training import loop

  config_path = epath.Path(model_dir) / "config.gin"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {model_dir} a run directory of anygpt-train or "
                            "anygpt-import?")
  import_configurables()
  gin.clear_config()
  gin.parse_config(config_path.read_text(), skip_unknown=True)
  if spm_path:
    gin.bind_parameter("vocabulary_layout.sentencepiece_model", spm_path)
  layout = loop.vocabulary_layout()
  lengths = _query("TrainInput.task_feature_lengths") or {}
  legacy_default = inspect.signature(pipeline.register_corpora).parameters["legacy"].default
  return {"config": loop.model_config().with_vocabulary(layout), "layout": layout,
          "spm_path": _query("vocabulary_layout.sentencepiece_model"),
          "legacy": bool(_query("register_corpora.legacy", legacy_default)),
          "trained_length": max(lengths.values()) if lengths else None}


def _resolved_json(model_dir: str, spm_path: str | None) -> str:
  """`load_run_config` as one JSON object of plain values (with the export's special ids)."""
  from anygpt_jax.export.hf import token_ids

  run = load_run_config(model_dir, spm_path)
  ids = token_ids(run["layout"])
  return json.dumps({
      "config": dataclasses.asdict(run["config"]), "layout": run["layout"].to_json_dict(),
      "spm_path": run["spm_path"], "legacy": run["legacy"], "trained_length": run["trained_length"],
      "ids": {"bos": ids.bos, "eos": list(ids.eos), "pad": ids.pad}})


def resolve_run(model_dir: str, spm_path: str | None = None) -> dict:
  """`load_run_config` in a child process, as plain values: {'config': ModelConfig fields, 'layout':
  VocabularyLayout JSON, 'spm_path', 'legacy', 'trained_length', 'ids': {'bos', 'eos', 'pad'}}.

  Parsing a run's gin config imports every configurable the run names (the data pipeline, and
  with it TensorFlow: about 0.8 GB resident). A child does it and exits.
  """
  argv = [sys.executable, "-m", __name__, model_dir] + (["--spm", spm_path] if spm_path else [])
  out = subprocess.run(argv, capture_output=True, text=True)  # same working directory: relative paths hold
  lines = [line for line in out.stdout.splitlines() if line.startswith(_RESOLVED)]
  if out.returncode or not lines:
    raise RuntimeError(f"reading {model_dir}/config.gin failed:\n{out.stderr[-4000:]}")
  return json.loads(lines[-1][len(_RESOLVED):])


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


class RunDirectoryError(ValueError):
  """A --model path that is neither a run directory nor an export, or the wrong one of the two."""


def load_model(path: str, step: int | None = None, spm_path: str | None = None, weights: bool = True):
  """A run directory (config.gin) or an exported HF directory (config.json) as a `LoadedModel`;
  `weights=False` reads an export's configuration and vocabulary only (its model is decoded
  elsewhere, e.g. by vLLM). Raises RunDirectoryError naming the path."""
  from anygpt_jax.generation.loading import load_hf_directory

  if os.path.exists(os.path.join(path, "config.gin")):
    if not weights:
      raise RunDirectoryError(f"{path} is a run directory; a model decoded elsewhere (vLLM) is an anygpt-export "
                              "directory: pass the one the engine serves")
    return load_run(path, spm_path, step)
  if os.path.exists(os.path.join(path, "config.json")):
    loaded = load_hf_directory(path, weights=weights)
    loaded.spm_path = spm_path or loaded.spm_path
    return loaded
  raise RunDirectoryError(f"{path} is neither a run directory (config.gin) nor an exported HF directory "
                          "(config.json)")


def main(argv: list[str] | None = None) -> int:
  from anygpt_jax.cli.flags import ArgumentParser

  parser = ArgumentParser(prog=f"python -m {__name__}", description="a run's configuration as JSON")
  parser.add_argument("model_dir")
  parser.add_argument("--spm", default=None)
  args = parser.parse_args(argv)
  print(_RESOLVED + _resolved_json(args.model_dir, args.spm))
  return 0


if __name__ == "__main__":
  sys.exit(main())
