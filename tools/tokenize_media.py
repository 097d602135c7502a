"""`anygpt-tokenize`: raw images / speech / music (or AnyGPT data files) -> pretokenized shards.

  anygpt-tokenize --input 'laion2b/*.tar' --corpus laion2b --output_dir shards/laion2b \
      --image_model models/seed_tokenizer --shard_index 3
  anygpt-tokenize --manifest data.jsonl --corpus demo --output_dir shards/ \
      --image_model models/seed_tokenizer --speech_model models/speechtokenizer \
      --music_model models/encodec_32khz --num_shards 64 --shard_index 3

With `--input`, each input shard (a tar, a JSONL part, a TSV, a transcripts or metadata file;
globs and folders expand to the sorted list) becomes `--shards_per_input` output shards, so a
job splits across machines by `--shard_index` with no manifest. The format is detected from
each file or given with `--format`.

Exit status: 0 all records written, 3 some records rejected (see the `.rejects.jsonl` files),
2 usage error, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from anygpt_jax import filesystem
from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.tokenizers.readers import FORMATS
from anygpt_jax.vocabulary.layout import MODALITY_NAMES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REJECTS = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="anygpt-tokenize", description=__doc__.split("\n\n")[0])
  src = p.add_argument_group("inputs (any number, read in this order)")
  src.add_argument("--manifest", action="append", default=[], help='JSONL of {"id","kind","path","text"}')
  src.add_argument("--folder", action="append", default=[], help="media folder with <stem>.txt sidecar captions")
  src.add_argument("--folder_audio_kind", choices=("speech", "music"), default="speech")
  src.add_argument("--anygpt_data", action="append", default=[], help="AnyGPT pair/chat/interleaved JSONL")
  src.add_argument("--input", action="append", default=[],
                   help="an input shard, a glob of them or a folder (repeatable); one output shard per input")
  src.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                   help="format of the --input files (auto: detected from each file's name and first record)")
  src.add_argument("--media_kind", choices=MODALITY_NAMES, default="image",
                   help="kind of the media in webdataset tars")
  src.add_argument("--images", action="append", default=[],
                   help="MMC4 image folders or plain tars (repeatable); default: beside each JSONL")
  src.add_argument("--shards_per_input", type=int, default=1, help="output shards per --input file")
  out = p.add_argument_group("output")
  out.add_argument("--output_dir", required=True)
  out.add_argument("--corpus", required=True, help="corpus name in the shard file names")
  out.add_argument("--split", default="train")
  out.add_argument("--num_shards", type=int, help="with --manifest/--folder/--anygpt_data (default 1); "
                   "with --input the count is inputs x --shards_per_input")
  out.add_argument("--shard_index", type=int, action="append", help="only these shards (repeatable); default all")
  models = p.add_argument_group("models (local paths in the published layouts)")
  models.add_argument("--speech_model", help="SpeechTokenizer dir: config.json + SpeechTokenizer.pt")
  models.add_argument("--music_model", help="Encodec 32 kHz dir (facebook/encodec_32khz layout)")
  models.add_argument("--image_model", help="SEED dir (seed_quantizer.pt [+ eva_vit_g.pth]) or the .pt")
  run = p.add_argument_group("execution")
  run.add_argument("--engine", choices=("local", "ray"), default="local")
  run.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
  run.add_argument("--batch_size", type=int, default=16)
  run.add_argument("--window", type=int, default=256, help="records read, sorted by length and batched at a time")
  run.add_argument("--workers", type=int, default=2, help="threads decoding and resampling media")
  run.add_argument("--prefetch", type=int, default=1,
                   help="windows decoded ahead of the one being encoded (memory: prefetch + 1 windows)")
  run.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads (0: torch's default; 1 is faster on a busy machine)")
  run.add_argument("--max_speech_seconds", type=float, default=60.0)
  run.add_argument("--max_music_seconds", type=float, default=1800.0)
  run.add_argument("--music_clip_seconds", type=float, default=5.0)
  run.add_argument("--rebuild", action="store_true",
                   help="remake finished shards whose inputs, settings or tokenizer checkpoints changed (without "
                        "it such a rerun stops, naming what changed; unchanged finished shards are always kept)")
  run.add_argument("--drop_duplicate_ids", action="store_true",
                   help="reject a record whose id a shard of this run already holds (duplicates are counted in the stats "
                        "either way)")
  run.add_argument("--strict_formats", action="store_true",
                   help="reject non-RGB images and non-mono audio instead of converting them")
  run.add_argument("--ray_address", help="an existing Ray cluster; default: a local instance")
  run.add_argument("--ray_num_cpus", type=int, default=2)
  run.add_argument("--ray_actors", type=int, default=1)
  run.add_argument("--ray_gpus_per_actor", type=float, default=0.0)
  run.add_argument("--no_progress", action="store_true")
  return p


def _plan_inputs(args) -> tuple[list[str], str]:
  """(sorted input shards, their format) for --input; raises ValueError/FileNotFoundError."""
  from anygpt_jax.tokenizers import readers
  files = readers.expand_inputs(args.input, args.format)
  formats = {f: (args.format if args.format != "auto" else readers.detect_format(f)) for f in files}
  if len(set(formats.values())) > 1:
    raise ValueError(f"inputs of several formats {sorted(set(formats.values()))}; one job reads one format")
  fmt = formats[files[0]]
  if fmt == "webdataset":
    from anygpt_jax.tokenizers.media import MediaError, check_plain_tar
    with filesystem.resolve(files[0]).open("rb") as f:  # a corpus of compressed tars fails here; a stray one is its shard's rejection
      try:
        check_plain_tar(files[0], f.read(3))
      except MediaError as e:
        raise ValueError(e.detail) from None
  for loc in args.images:
    if not filesystem.resolve(loc).exists():
      raise FileNotFoundError(f"--images not found: {loc}")
  return files, fmt


def _usage_errors(args) -> list[str]:
  errors = []
  legacy = args.manifest or args.folder or args.anygpt_data
  if not (legacy or args.input):
    errors.append("no inputs: give --input, --manifest, --folder or --anygpt_data")
  if legacy and args.input:
    errors.append("--input cannot be mixed with --manifest/--folder/--anygpt_data")
  if args.input and args.num_shards is not None:
    errors.append("with --input the shard count is the number of inputs x --shards_per_input; drop --num_shards")
  if args.shards_per_input < 1:
    errors.append("--shards_per_input must be >= 1")
  if args.input:
    try:
      files, _ = _plan_inputs(args)
      args.num_shards = len(files) * args.shards_per_input
    except (ValueError, FileNotFoundError, OSError) as e:
      errors.append(str(e))
      return errors
  elif args.num_shards is None:
    args.num_shards = 1
  for flag, paths in (("--manifest", args.manifest), ("--anygpt_data", args.anygpt_data)):
    for path in paths:
      if filesystem.resolve(path).is_dir():
        errors.append(f"{flag} {path} is a directory; it takes a JSONL file (repeat the flag for several, "
                      "or use --input with a glob)")
      elif not filesystem.resolve(path).is_file():
        errors.append(f"{flag} {path}: input file not found")
  for path in args.folder:
    if filesystem.resolve(path).is_file():
      errors.append(f"--folder {path} is a file; it takes a directory of media")
    elif not filesystem.resolve(path).is_dir():
      errors.append(f"--folder {path}: input folder not found")
  for flag in (f"{kind}_model" for kind in MODALITY_NAMES):
    path = getattr(args, flag)
    if path and not os.path.exists(path):
      errors.append(f"--{flag} not found: {path}")
  if args.num_shards < 1:
    errors.append("--num_shards must be >= 1")
  for i in args.shard_index or ():
    if not 0 <= i < args.num_shards:
      errors.append(f"--shard_index {i} outside [0, {args.num_shards})")
  if args.batch_size < 1 or args.window < 1 or args.prefetch < 0:
    errors.append("--batch_size and --window must be >= 1, --prefetch >= 0")
  return errors


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  errors = _usage_errors(args)
  if errors:
    for e in errors:
      print(f"anygpt-tokenize: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  from anygpt_jax.tokenizers import inputs, job, provenance
  cfg = job.JobConfig(
      output_dir=args.output_dir, corpus=args.corpus, split=args.split, num_shards=args.num_shards,
      shard_indices=tuple(args.shard_index) if args.shard_index else None, speech_model=args.speech_model,
      music_model=args.music_model, image_model=args.image_model, device=args.device, batch_size=args.batch_size,
      window=args.window, workers=args.workers, prefetch=args.prefetch, max_speech_seconds=args.max_speech_seconds,
      max_music_seconds=args.max_music_seconds, music_clip_seconds=args.music_clip_seconds,
      drop_duplicate_ids=args.drop_duplicate_ids, rebuild=args.rebuild,
      strict_formats=args.strict_formats, torch_threads=args.torch_threads)
  if args.input:
    from anygpt_jax.tokenizers import readers
    files, fmt = _plan_inputs(args)
    options = readers.ReaderOptions(media_kind=args.media_kind, images=tuple(args.images))
    plan = job.InputShardPlan(files, lambda path: readers.read_input(fmt, path, options), args.shards_per_input,
                              format=fmt, options=options)
  else:
    given = [*args.manifest, *args.folder, *args.anygpt_data]
    plan = job.ModuloPlan(lambda: inputs.read_inputs(args.manifest, args.folder, args.anygpt_data,
                                                     args.folder_audio_kind), args.num_shards, inputs=given)
  progress = job.Progress(enabled=not args.no_progress)
  start = time.time()
  try:
    if args.engine == "ray":
      from anygpt_jax.tokenizers.ray_engine import run_ray
      all_stats = run_ray(cfg, plan, num_actors=args.ray_actors, num_cpus=args.ray_num_cpus,
                          num_gpus_per_actor=args.ray_gpus_per_actor, address=args.ray_address, on_progress=progress)
    else:
      all_stats = job.run_local(cfg, plan, on_progress=progress)
  except provenance.StaleShardError as e:  # a rerun over shards made from other inputs: the user decides
    progress.close()
    print(f"anygpt-tokenize: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except Exception as e:  # bad input never reaches here (it is a rejection): this is a bug or an unusable model
    progress.close()
    traceback.print_exc()
    print(f"anygpt-tokenize: failed (a bug or an unusable model, not bad data; traceback above): "
          f"{type(e).__name__}: {e}", file=sys.stderr)
    return EXIT_FAILURE
  progress.close()
  summary = job.summarize(all_stats, time.time() - start)
  print(json.dumps(summary, sort_keys=True))
  return EXIT_REJECTS if summary["rejected"] or summary["dropped_media"] else EXIT_OK


if __name__ == "__main__":
  sys.exit(main())
