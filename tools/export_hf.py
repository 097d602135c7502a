"""`anygpt-export`: a training run's checkpoint as a HuggingFace LlamaForCausalLM directory.

  anygpt-export --model_dir runs/pretrain --output_dir exports/anygpt-7b [--step 81000] [--dtype bfloat16]

The model configuration and vocabulary layout come from the run's own operative config
(`{model_dir}/config.gin`); the parameters are restored from the orbax checkpoint onto this host
and written as safetensors shards with config.json, generation_config.json and tokenizer files
(the tokenizer needs the run's SentencePiece model: `--spm` overrides the path the run used).
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="anygpt-export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model_dir", required=True, help="the run directory (holds config.gin and checkpoints/)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--spm", default=None, help="SentencePiece model (default: the run's SENTENCEPIECE_MODEL)")
  parser.add_argument("--max_shard_gb", type=float, default=5.0)
  return parser


def load_run(model_dir: str, spm_path: str | None = None, step: int | None = None):
  """(ModelConfig, params as numpy, VocabularyLayout, spm path) of a run's checkpoint."""
  import gin
  import jax
  import numpy as np

  from anygpt_jax import partitioning
  from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
  from anygpt_jax.model import Transformer
  from anygpt_jax.training import loop
  from tools.train import import_configurables

  config_path = os.path.join(model_dir, "config.gin")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {model_dir} a run directory of anygpt-train?")
  import_configurables()
  gin.clear_config()
  with open(config_path) as f:
    gin.parse_config(f.read(), skip_unknown=True)
  if spm_path:  # overrides the path the run used
    gin.bind_parameter("vocabulary_layout.sentencepiece_model", spm_path)
  layout = loop.vocabulary_layout()
  spm_path = gin.query_parameter("vocabulary_layout.sentencepiece_model")
  if isinstance(spm_path, gin.config.ConfigurableReference):  # a macro such as %SENTENCEPIECE_MODEL
    spm_path = spm_path.scoped_configurable_fn()
  config = loop.model_config().with_vocabulary(layout)

  device = jax.devices()[0]
  abstract = partitioning.strip_boxes(partitioning.abstract_params(Transformer(config)))
  single = jax.sharding.SingleDeviceSharding(device)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single), abstract)
  checkpoints = Checkpoints(model_dir, CheckpointConfig(async_save=False))
  try:
    params = checkpoints.restore_params(abstract, step)
  finally:
    checkpoints.close()
  return config, jax.tree.map(np.asarray, params), layout, spm_path


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from anygpt_jax.export import save_hf_checkpoint

  config, params, layout, spm_path = load_run(args.model_dir, args.spm, args.step)
  if spm_path and not os.path.exists(spm_path):
    print(f"anygpt-export: the run's SentencePiece model {spm_path} does not exist here; pass --spm",
          file=sys.stderr)
    return 2
  out = save_hf_checkpoint(params, config, layout, args.output_dir, spm_path=spm_path, dtype=args.dtype,
                           max_shard_bytes=int(args.max_shard_gb * 2**30))
  print(f"exported {args.model_dir} ({config.num_params() / 1e6:.1f}M parameters, vocabulary "
        f"{layout.vocab_size}) to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
