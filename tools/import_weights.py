"""`anygpt-import`: weights a user has (HF safetensors or pytorch_model.bin, single or sharded;
Meta's consolidated.NN.pth + params.json) as a run directory of ours.

  anygpt-import --source /models/llama2-7b --model llama2-7b --spm /models/llama2-7b/tokenizer.model \\
      --output_dir runs/llama2-7b-anygpt [--chat_tokens] [--new_rows_init mean]

The source's config.json/params.json is checked against the model configuration (every differing
field is named). A text-only LLaMA-2 grows to AnyGPT's vocabulary and AnyGPT-base to the chat
vocabulary (`--chat_tokens`): new rows are drawn by `--new_rows_init`. The output is a run directory
(config.gin, checkpoints/0) that `anygpt-export` exports and `anygpt-train` warm-starts from:
  --gin.train.warm_start=@warm_start_params --gin.warm_start_params.source=run
  --gin.warm_start_params.path=runs/llama2-7b-anygpt
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

from anygpt_jax.cli.flags import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
  parser = ArgumentParser(prog="anygpt-import", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, help="the checkpoint directory (any layout above)")
  parser.add_argument("--output_dir", required=True, help="the run directory to write (must hold no checkpoint)")
  parser.add_argument("--model", required=True, help="a model config name (anygpt_jax.model.config_names())")
  parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                      help="replace a model config field, e.g. rope_theta=500000.0 (repeatable)")
  vocab = parser.add_mutually_exclusive_group(required=True)
  vocab.add_argument("--spm", help="the SentencePiece model: fixes the vocabulary layout (and is used by export)")
  vocab.add_argument("--text_vocab_size", type=int, help="the text pieces, when no SentencePiece model is at hand")
  parser.add_argument("--chat_tokens", action="store_true", help="the SFT layout (<-Ins-> <-Res-> added)")
  parser.add_argument("--pad_multiple", type=int, default=128)
  parser.add_argument("--new_rows_init", default="normal", choices=("normal", "mean"))
  parser.add_argument("--new_rows_std", type=float, default=None, help="default: the model's initializer_range")
  parser.add_argument("--seed", type=int, default=0)
  return parser


def parse_overrides(items: list[str]) -> dict:
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"anygpt-import: --override {item!r}: expected FIELD=VALUE")
    try:
      out[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[name] = value
  return out


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from anygpt_jax.model import get_config
  from anygpt_jax.training.loop import vocabulary_layout
  from anygpt_jax.weights import open_source
  from anygpt_jax.weights.run_directory import run_gin_text, save_params_as_run
  from anygpt_jax.weights.warm_start import import_params

  overrides = parse_overrides(args.override)
  spm = os.path.abspath(args.spm) if args.spm and "://" not in args.spm else args.spm
  layout = vocabulary_layout(text_vocab_size=args.text_vocab_size, sentencepiece_model=spm,
                             chat_tokens=args.chat_tokens, pad_multiple=args.pad_multiple)
  config = get_config(args.model, **overrides).with_vocabulary(layout)
  source = open_source(args.source)
  params = import_params(args.source, config, layout, args.new_rows_init, args.new_rows_std, args.seed)
  note = f"Written by anygpt-import from {args.source} ({source.kind}, {len(source.files)} file(s))."
  out = save_params_as_run(params, layout, args.output_dir,
                           run_gin_text(args.model, overrides, layout, spm, note))
  print(f"imported {args.source} ({source.kind}) as {args.model} with a vocabulary of {layout.vocab_size} rows "
        f"into {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
