"""anygpt-mixture-report: what a mixture feeds a run, from the tokenization stats.

  anygpt-mixture-report --gin_file=gin/runs/pretrain_llama2_7b.gin --gin.DATA_DIR=/data/shards \
      --gin.SENTENCEPIECE_MODEL=/models/llama2/tokenizer.model
  anygpt-mixture-report anygpt_pretrain --steps 81000 --batch 480 --length 4500 \
      --data_dir /data/shards --spm tokenizer.model

With run files (the first form) the data is registered exactly as `anygpt-train` registers it
(the run's `register_corpora` bindings) and the mixture, steps, batch and length are the run's
MIXTURE_OR_TASK_NAME, TRAIN_STEPS, BATCH_SIZE and TASK_FEATURE_LENGTHS (flags override them).

Per task: examples (records_out of the stats files), tokens of one epoch (modality codes from the
stats, text estimated from text_chars with the chars/token measured on the corpus, plus the
template's tokens per record), the rate, the expected share of tokens per batch, tokens the run
consumes and how many epochs of the corpus that is; then totals per modality.
"""

from __future__ import annotations

import sys

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.data import mixing, pipeline
from anygpt_jax.vocabulary.layout import CONTENT_KINDS

MODALITY_COLUMNS = CONTENT_KINDS


def mixture_rows(name: str, steps: int, batch: int, length: int, packing_efficiency: float = 1.0) -> list[dict]:
  """One dict per task of a registered mixture (or a single task)."""
  import seqio
  provider = pipeline.registered_provider(name, "mixture")
  if isinstance(provider, seqio.Mixture):
    rates = {t.name: provider.get_rate(t) for t in provider.tasks}
  else:
    rates = {provider.name: 1.0}
  total_rate = sum(rates.values())
  run_tokens = steps * batch * length * packing_efficiency
  rows = []
  for task, rate in rates.items():
    info = pipeline.TASK_INFO.get(task)
    if info is None:
      raise SystemExit(f"task {task!r} was not registered by anygpt_jax.data.pipeline.register_corpora")
    share = rate / total_rate
    corpus_tokens = info.tokens("train")
    stats = info.stats.get("train")
    per_modality = info.modality_tokens("train")
    consumed = share * run_tokens
    epochs = mixing.epochs_consumed(share, steps, batch, length, corpus_tokens, packing_efficiency)
    rows.append({
        "task": task, "examples": stats.records if stats else 0, "tokens": corpus_tokens, "rate": rate,
        "share": share, "consumed_tokens": consumed, "epochs": epochs,
        "consumed_by_modality": {m: (per_modality.get(m, 0) / corpus_tokens * consumed if corpus_tokens else 0.0)
                                 for m in MODALITY_COLUMNS},
    })
  return rows


def format_report(name: str, rows: list[dict], steps: int, batch: int, length: int) -> str:
  lines = [f"mixture {name}: {steps} steps x {batch} rows x {length} tokens = {steps * batch * length:,} tokens",
           f"{'task':<24}{'examples':>12}{'tokens':>16}{'rate':>10}{'share':>9}{'consumed':>18}{'epochs':>10}"]
  for r in rows:
    # Columns are separated by a space even when a figure outgrows its width (epochs of a tiny corpus).
    lines.append(f"{r['task']:<24} {r['examples']:>11,} {r['tokens']:>15,.0f} {r['rate']:>9.4f} {r['share']:>8.2%} "
                 f"{r['consumed_tokens']:>17,.0f} {r['epochs']:>9.3f}")
  lines.append("per modality (tokens consumed, share of the run):")
  total = sum(r["consumed_tokens"] for r in rows) or 1.0
  for m in MODALITY_COLUMNS:
    n = sum(r["consumed_by_modality"][m] for r in rows)
    lines.append(f"  {m:<8}{n:>18,.0f}{n / total:>9.2%}")
  return "\n".join(lines)


def parse_args(argv=None):
  from anygpt_jax.cli.gin_config import split_gin_flags
  bindings, rest = split_gin_flags(list(sys.argv[1:] if argv is None else argv))
  parser = ArgumentParser(prog="anygpt-mixture-report", description=__doc__.splitlines()[0])
  parser.add_argument("mixture", nargs="?", help="default: the run files' MIXTURE_OR_TASK_NAME")
  parser.add_argument("--gin_file", action="append", default=[], help="the run's gin files (repeatable)")
  parser.add_argument("--steps", type=int, help="default: the run files' TRAIN_STEPS")
  parser.add_argument("--batch", type=int, help="default: the run files' BATCH_SIZE")
  parser.add_argument("--length", type=int, help="default: the run files' TASK_FEATURE_LENGTHS")
  parser.add_argument("--data_dir", help="root of the shards (without run files)")
  parser.add_argument("--spm", help="the SentencePiece model (without run files)")
  parser.add_argument("--corpus", action="append", default=None,
                      help="NAME:KIND:PATTERN[:P_TO_TEXT[:GROUP]] (repeatable, without run files); default: the "
                           "default corpora")
  parser.add_argument("--chat_tokens", action="store_true")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--packing_efficiency", type=float, default=1.0,
                      help="non-padding fraction of rows (tools/bench_pipeline.py measures it)")
  args = parser.parse_args(rest)
  args.bindings = bindings
  if args.gin_file:
    if args.data_dir or args.spm or args.corpus:
      parser.error("with --gin_file, set the data with --gin.DATA_DIR=... and --gin.SENTENCEPIECE_MODEL=...")
  else:
    if bindings:
      parser.error("--gin.NAME=value flags need the run's --gin_file")
    missing = [f for f, v in (("mixture", args.mixture), ("--steps", args.steps), ("--batch", args.batch),
                              ("--length", args.length), ("--data_dir", args.data_dir), ("--spm", args.spm)) if not v]
    if missing:
      parser.error(f"without --gin_file, {', '.join(missing)} are required (or give the run's --gin_file)")
  return args


def _register_from_run_files(args) -> None:
  """Parses the run's gin files and registers its data as anygpt-train does; fills mixture/steps/batch/length."""
  import gin

  from anygpt_jax.training.input import sequence_length_of
  from anygpt_jax.cli.gin_config import import_configurables, parse_gin
  import_configurables()
  # Parsed as anygpt-train parses them; the report calls no configurable that needs MODEL_DIR.
  parse_gin(args.gin_file, args.bindings, finalize=False)
  args.mixture = args.mixture or gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  args.steps = args.steps or gin.query_parameter("%TRAIN_STEPS")
  args.batch = args.batch or gin.query_parameter("%BATCH_SIZE")
  args.length = args.length or sequence_length_of(gin.query_parameter("%TASK_FEATURE_LENGTHS"))
  pipeline.register_corpora()


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    if args.gin_file:
      _register_from_run_files(args)
    else:
      corpora = None
      if args.corpus:
        corpora = []
        for c in args.corpus:
          fields = c.split(":")
          corpora.append(pipeline.CorpusSpec(fields[0], fields[1], *fields[2:3],
                                             *[float(f) for f in fields[3:4]], *fields[4:5]))
      pipeline.register_corpora(args.data_dir, args.spm, corpora, chat_tokens=args.chat_tokens,
                                temperature=args.temperature,
                                mixture_name=args.mixture if corpora or args.mixture in pipeline.BUILTIN_MIXTURES
                                else None)
  except (pipeline.DataRegistrationError, ValueError) as e:
    print(f"anygpt-mixture-report: {e}", file=sys.stderr)
    return 2
  rows = mixture_rows(args.mixture, args.steps, args.batch, args.length, args.packing_efficiency)
  print(format_report(args.mixture, rows, args.steps, args.batch, args.length))
  return 0


if __name__ == "__main__":
  sys.exit(main())
