"""Generation items/s of `anygpt-eval generate` batched against one item at a time, and scoring items/s.

  python -m tools.bench_eval --benchmark librispeech_asr --items 32 --batch 16

Builds, in a scratch directory, a random-weight model of `--config` exported as anygpt-export writes
it, the tiny tokenizers and the benchmark's tiny data set (`anygpt_jax.testing.benchmark_data`), then
runs the eval job's generation stage twice in this process on the same items: `--batch_size B` and
`--batch_size 1` (each request decoded alone, as a loop of `anygpt-generate` calls decodes it, without
the loop's per-call start-up), and the scoring stage: after one untimed warm-up run, `--repeats` timed
runs of each, alternating, and the median of each side. Both runs load the model once and share the
per-item costs (reading and encoding the medium); the ratio is what batching the decoder buys.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import statistics
import sys
import tempfile
import time

from anygpt_jax.cli.flags import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="bench_eval", description=__doc__.split("\n\n")[0])
  p.add_argument("--benchmark", default="librispeech_asr", choices=("coco_caption", "librispeech_asr"))
  p.add_argument("--config", default="tiny", help="model configuration (random weights)")
  p.add_argument("--items", type=int, default=32)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--max_new_tokens", type=int, default=16)
  p.add_argument("--num_beams", type=int, default=1, help="Table 9 decodes text with 5; 1 is greedy")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is printed")
  return p


def scratch_setup(root: pathlib.Path, config_name: str, benchmark: str, items: int) -> dict[str, str]:
  """The export, the tokenizers and the data set of the benchmark, under `root`."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from anygpt_jax.export import save_hf_checkpoint
  from anygpt_jax.model import Transformer, get_config
  from anygpt_jax.testing import benchmark_data, synthetic_corpus
  from anygpt_jax.testing import tiny_tokenizers as tiny
  from anygpt_jax.vocabulary import VocabularyLayout
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

  texts = list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3
  spm = train_llama_like_sentencepiece(texts, str(root / "spm"), 300)
  layout = VocabularyLayout(text_vocab_size=300)
  config = get_config(config_name, max_position_embeddings=2048).with_vocabulary(layout)
  params = nn.unbox(Transformer(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  save_hf_checkpoint(jax.tree.map(np.asarray, params), config, layout, str(root / "export"), spm_path=spm)
  if benchmark == "coco_caption":
    data = benchmark_data.write_coco_karpathy(root / "coco", num_test=items)
    model_flag = f"--image_model={tiny.save_tiny_seed(root / 'seed')}"
  else:
    data = benchmark_data.write_librispeech(root / "LibriSpeech", utterances_per_chapter=(items + 1) // 2)
    model_flag = f"--speech_model={tiny.save_tiny_speech_tokenizer(root / 'speechtokenizer')}"
  return {"export": str(root / "export"), "data": str(data), "model_flag": model_flag}


def timed(argv: list[str]) -> float:
  from tools import eval as eval_cli

  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()):
    code = eval_cli.main(argv)
  if code != 0:
    raise RuntimeError(f"anygpt-eval {' '.join(argv)} exited {code}")
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
    root = pathlib.Path(tmp)
    setup = scratch_setup(root, args.config, args.benchmark, args.items)
    common = ["generate", f"--benchmark={args.benchmark}", f"--data={setup['data']}", f"--model={setup['export']}",
              setup["model_flag"], f"--limit={args.items}", f"--max_new_tokens={args.max_new_tokens}",
              "--min_new_tokens=0", f"--num_beams={args.num_beams}"]
    timed(common + [f"--output_dir={root / 'warm'}", "--batch_size=1", "--limit=1"])  # first imports and loads
    batched, single, scoring = [], [], []
    for r in range(args.repeats):  # the two sides alternate, each into a fresh directory
      batched.append(timed(common + [f"--output_dir={root / f'batched{r}'}", f"--batch_size={args.batch}"]))
      single.append(timed(common + [f"--output_dir={root / f'single{r}'}", "--batch_size=1"]))
      scoring.append(timed(["score", f"--output_dir={root / f'batched{r}'}"]))
    batched, single, scoring = (statistics.median(t) for t in (batched, single, scoring))
  n = args.items
  print(f"{args.benchmark}: {n} items, model {args.config} (random weights), {args.max_new_tokens} new tokens, "
        f"{args.num_beams} beam(s); median of {args.repeats} runs per side, each loading the model and compiling once")
  print("| generation | items/s | x one at a time |")
  print("|---|---|---|")
  print(f"| anygpt-eval generate, batch {args.batch} | {n / batched:.2f} | **{single / batched:.2f}x** |")
  print(f"| one item at a time (batch 1) | {n / single:.2f} | 1.00x |")
  print(f"scoring ({'CIDEr-D, BLEU-4' if args.benchmark == 'coco_caption' else 'WER'}): {n / scoring:.1f} items/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
