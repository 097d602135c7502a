"""anygpt-vocab: print AnyGPT's vocabulary layout (each token group with its first and last id) as JSON.

  anygpt-vocab --text_vocab_size 32000            # AnyGPT-base: 49418 rows
  anygpt-vocab --spm tokenizer.model --chat_tokens --pad_multiple 256
"""

from __future__ import annotations

import argparse
import json
import sys

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.vocabulary.layout import VocabularyError, VocabularyLayout


def parse_args(argv=None) -> argparse.Namespace:
  parser = ArgumentParser(prog="anygpt-vocab", description=__doc__.splitlines()[0])
  size = parser.add_mutually_exclusive_group(required=True)
  size.add_argument("--text_vocab_size", type=int, help="SentencePiece pieces (32000 for LLaMA-2)")
  size.add_argument("--spm", help="a SentencePiece model; its piece count is the text vocabulary size")
  parser.add_argument("--chat_tokens", action="store_true", help="add <-Res-> (then) <-Ins->, the chat model's tokens, in AnyGPT's order")
  parser.add_argument("--pad_multiple", type=int, default=128, help="embedding rows padded to a multiple of this")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  text_vocab_size = args.text_vocab_size
  if args.spm:
    import sentencepiece as spm  # only needed for --spm
    text_vocab_size = spm.SentencePieceProcessor(model_file=args.spm).GetPieceSize()
  try:
    layout = VocabularyLayout(text_vocab_size, args.chat_tokens, args.pad_multiple)
  except VocabularyError as e:
    print(f"anygpt-vocab: {e}", file=sys.stderr)
    return 2
  print(json.dumps(layout.to_json_dict(), indent=2, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
