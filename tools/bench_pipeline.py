"""Benchmark of the data pipeline: packed tokens/s of a mixture at length 4500, and packing efficiency.

Generates synthetic shards of six of the default corpora (realistic lengths: 32 image codes, 50 Hz
speech of 1-12 s, 2-5 s music at 200 codes/s, web documents with images), registers them, and
measures in one run, one after the other:

  1. raw read: TFRecord read + batched parse of the same shards (records/s, and the tokens those
     records hold: codes + text tokens estimated from the stats) - the reference;
  2. packed: `get_dataset('anygpt_pretrain', length, batch)` non-padding tokens/s, the packing
     efficiency (non-padding fraction) overall and per row modality, and the peak RSS.

  python -m tools.bench_pipeline [--records_scale 1.0] [--batches 400] [--length 4500] [--batch 8]

The packed rate includes rendering (SentencePiece, templates) and packing, measured over
enough batches to pass several packing windows (a window is `--rows_per_window` rows of one
corpus, rendered before its first row comes out: the warm-up time shows that latency).
"""

from __future__ import annotations

import os
import resource
import shutil
import time

import numpy as np
import tensorflow as tf

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.data import pipeline
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.data.preprocessors import parse_batch, read_shard_file
from anygpt_jax.vocabulary.layout import CONTENT_KINDS, target_modality
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

CORPORA = {  # name: (kind, records at scale 1, shards)
    "laion_coco": ("image_text", 12000, 4),
    "journeydb": ("image_text", 6000, 2),
    "mls": ("speech_text", 3000, 4),
    "commonvoice": ("speech_text", 1500, 2),
    "music": ("music_text", 2500, 4),
    "mmc4": ("interleaved", 1500, 2),
}


def write_data(data_dir: str, scale: float) -> str:
  if os.path.exists(os.path.join(data_dir, "DONE")):
    return os.path.join(data_dir, "spm", "m.model")
  shutil.rmtree(data_dir, ignore_errors=True)
  for i, (name, (kind, records, shards)) in enumerate(CORPORA.items()):
    synthetic_corpus.write_corpus(data_dir, name, kind, max(shards, int(records * scale)), num_shards=shards, seed=i)
  texts = list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3
  spm = train_llama_like_sentencepiece(texts, os.path.join(data_dir, "spm", "m"), 600)
  open(os.path.join(data_dir, "DONE"), "w").close()
  return spm


def bench_raw_read(files: list[str], seconds: float) -> tuple[float, float]:
  """Records/s of reading + parsing the shards (repeated, parsed in batches of 256 as the pipeline does)."""
  ds = tf.data.Dataset.from_tensor_slices(files).interleave(read_shard_file, cycle_length=len(files),
                                                            num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.repeat().batch(256).map(parse_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4)
  it = iter(ds)
  next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    n += int(next(it)["id"].shape[0])
  return n / (time.perf_counter() - start), n


def bench_packed(name: str, length: int, batch: int, batches: int, rows_per_window: int, layout) -> dict:
  """Times every batch from the iterator's creation; the packed rate is measured on the second half.

  Windows are rendered before their first row comes out and tf.data works ahead, so the rate of
  the first batches says little: the second half of a run that passes several windows of every
  corpus is the steady state.
  """
  ds = pipeline.get_dataset(name, length, batch, seed=0, with_stats=True, rows_per_window=rows_per_window)
  start = time.perf_counter()
  it = iter(ds)
  tokens, stamps, overlong, by_modality = [], [], 0, {}
  for _ in range(batches):
    b = {k: v.numpy() for k, v in next(it).items()}
    stamps.append(time.perf_counter() - start)
    tokens.append(int((b["decoder_segment_ids"] > 0).sum()))
    overlong += int(b["num_overlong"].sum())
    add_row_fills(by_modality, b, layout, length)
  half = batches // 2
  return {
      "first_batch_s": stamps[0],
      "total_s": stamps[-1],
      "overall_rate": sum(tokens) / stamps[-1],
      "steady_rate": sum(tokens[half:]) / (stamps[-1] - stamps[half - 1]),
      "tokens": sum(tokens),
      "rows": batches * batch,
      "overlong": overlong,
      "by_modality": {k: (float(np.mean(v)), len(v)) for k, v in by_modality.items()},
  }


def add_row_fills(by_modality: dict, b: dict, layout, length: int) -> None:
  """Appends each row's fill to the list of its modality (a row holds one corpus)."""
  modality = target_modality(b["decoder_target_tokens"], layout)
  for r in range(modality.shape[0]):
    present = set(np.unique(modality[r])) - {0}
    key = CONTENT_KINDS[present.pop() if present else 0]
    by_modality.setdefault(key, []).append(int((b["decoder_segment_ids"][r] > 0).sum()) / length)


def main(argv=None) -> int:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="/tmp/anygpt_bench_pipeline")
  parser.add_argument("--records_scale", type=float, default=1.0)
  parser.add_argument("--length", type=int, default=4500)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=400,
                      help="measured batches: enough to pass several packing windows of every corpus")
  parser.add_argument("--rows_per_window", type=int, default=64)
  parser.add_argument("--trainer_tokens_per_s", type=float, default=0.0,
                      help="the trainer's measured tokens/s, to print the pipeline's headroom")
  parser.add_argument("--seconds", type=float, default=10.0, help="duration of the raw-read reference")
  args = parser.parse_args(argv)

  t = time.perf_counter()
  spm = write_data(args.data_dir, args.records_scale)
  # Six of the default corpora are written: the others' shares are renormalised (with a warning).
  reg = pipeline.register_corpora(args.data_dir, spm, mixture_name="anygpt_pretrain", allow_missing_corpora=True)
  print(f"data: {args.data_dir} ({time.perf_counter() - t:.1f} s to write/register); mixture anygpt_pretrain:")
  files, corpus_tokens, corpus_records = [], 0.0, 0
  for task in reg.mixtures["anygpt_pretrain"]:
    info = pipeline.TASK_INFO[task]
    files += info.files["train"]
    corpus_tokens += info.tokens()
    corpus_records += info.stats["train"].records
    print(f"  {task:<12} rate {reg.mixtures['anygpt_pretrain'][task]:.3f}  records {info.stats['train'].records:>6}"
          f"  tokens/record {info.mean_tokens_per_record:7.1f}")
  tokens_per_record = corpus_tokens / corpus_records

  raw_rate, _ = bench_raw_read(files, args.seconds)
  raw_tokens = raw_rate * tokens_per_record
  r = bench_packed("anygpt_pretrain", args.length, args.batch, args.batches, args.rows_per_window,
                   reg.vocabulary.layout)
  efficiency = r["tokens"] / (r["rows"] * args.length)
  rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

  print(f"\nreference  raw read+parse          {raw_rate:>10,.0f} records/s = {raw_tokens:>12,.0f} tokens/s "
        f"(at {tokens_per_record:.0f} tokens/record of these shards)")
  print(f"pipeline   packed, L={args.length}, steady {r['steady_rate']:>12,.0f} tokens/s (non-padding; second half of "
        f"{args.batches} batches of {args.batch} rows)")
  print(f"pipeline   packed, whole run        {r['overall_rate']:>12,.0f} tokens/s ({r['total_s']:.1f} s, first batch "
        f"after {r['first_batch_s']:.1f} s)")
  print(f"ratio      packed steady / raw read {r['steady_rate'] / raw_tokens:10.2f}")
  if args.trainer_tokens_per_s:
    print(f"ratio      packed steady / trainer  {r['steady_rate'] / args.trainer_tokens_per_s:10.1f} "
          f"(trainer {args.trainer_tokens_per_s:,.0f} tokens/s)")
  print(f"packing efficiency (non-padding fraction) {efficiency:.4f} over {r['rows']} rows; overlong samples "
        f"dropped: {r['overlong']}")
  for m, (e, n) in sorted(r["by_modality"].items()):
    print(f"  rows of {m:<7} {e:.4f} ({n} rows)")
  print(f"peak RSS {rss_mb:,.0f} MB")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
