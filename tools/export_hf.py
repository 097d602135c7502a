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
import sys

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.cli.runs import resolve_run


def build_parser() -> argparse.ArgumentParser:
  parser = ArgumentParser(prog="anygpt-export", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model_dir", required=True, help="the run directory (holds config.gin and checkpoints/)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--spm", default=None, help="SentencePiece model (default: the run's SENTENCEPIECE_MODEL)")
  parser.add_argument("--max_shard_gb", type=float, default=5.0)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  import time

  from etils import epath

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
