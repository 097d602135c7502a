"""`anygpt-eval`: the paper's benchmarks in two stages, each on its own hardware.

  anygpt-eval generate --benchmark coco_caption --data /data/coco --model runs/pretrain \\
      --output_dir eval/step_81000 --image_model seed/ [--limit 500] [--num_processes 4 --process_index 0]
  anygpt-eval score --output_dir eval/step_81000
  anygpt-eval score --watch runs/pretrain      # a run's answers during training (BenchmarkGenerations)

`prompts` (no JAX) writes a subset's requests with their input media as token strings, which the
trainer reads to generate benchmark answers during training without torch (`BenchmarkGenerations`).

`ceiling` (no JAX) writes, for a benchmark whose answers are media, each item's own reference medium
through the tokenizer as its answer; scored as usual, that is the best score the tokenizers allow, and
`score --ceiling_dir` prints it beside the model's.

`generate` (JAX; the model's machine) reads the benchmark's items from its published layout
(`anygpt_jax.evaluation.benchmarks`), makes each item's request of the model with the paper's
decoding settings (Table 9, as anygpt-generate; flags override them) and appends one JSON line per
item to `{output_dir}/{benchmark}/generations-{i}-of-{n}.jsonl`. Process i of n takes items i, i+n,
...; a rerun skips the items already written, and regenerates the rest in the same batches with the
same seeds, so a killed run resumed gives what an uninterrupted one gives. `score` (no JAX) scores
every benchmark generated there and writes `report.json` and `report.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from anygpt_jax import filesystem
from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.cli.generation_flags import add_model_flags
from anygpt_jax.evaluation import benchmarks, report, scoring


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="anygpt-eval", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  stages = p.add_subparsers(dest="stage", required=True)
  gen = stages.add_parser("generate", help="generate the answers of a benchmark's items (JAX)")
  gen.add_argument("--benchmark", required=True, choices=sorted(benchmarks.BENCHMARKS))
  gen.add_argument("--data", required=True, help="the data set's directory, in its publisher's layout")
  gen.add_argument("--limit", type=int, default=None, help="a seeded random subset of this many items")
  gen.add_argument("--num_processes", type=int, default=1, help="processes sharing the items")
  gen.add_argument("--process_index", type=int, default=0, help="this process's index among them")
  add_model_flags(gen)
  _add_tokenizing_stage(stages, "ceiling", "the benchmark's own media through the tokenizer, as answers (no JAX)",
                        CEILING_BENCHMARKS, "where the ceiling's answers go (score it there)",
                        ("coco_t2i", "vctk_tts", "musiccaps_t2m"))
  _add_tokenizing_stage(stages, "prompts", "a subset's requests with their media tokenized, for generation during "
                        "training (no JAX)", benchmarks.BENCHMARKS, "writes {output_dir}/{benchmark}/prompts.json",
                        ("coco_caption", "librispeech_asr", "musiccaps_caption"))
  score = stages.add_parser("score", help="score what was generated and write report.json and report.md (no JAX)")
  where = score.add_mutually_exclusive_group(required=True)
  where.add_argument("--output_dir", help="an output directory of `generate`")
  where.add_argument("--watch", metavar="MODEL_DIR",
                     help="a training run's benchmark answers (BenchmarkGenerations): each step scored as it "
                          "completes, into the run's TensorBoard, until the trainer has ended")
  score.add_argument("--poll_s", type=float, default=60, help="--watch: seconds between looks while the run trains")
  score.add_argument("--benchmark", action="append", default=None, choices=sorted(benchmarks.BENCHMARKS),
                     help="only these (default: every benchmark generated in --output_dir)")
  score.add_argument("--tensorboard_dir", default=None,
                     help="where the scores go as TensorBoard scalars (default: the run directory's tensorboard/ "
                          "when the model was a run directory; none for an export unless given)")
  score.add_argument("--step", type=int, default=None, help="the scalars' step (default: the checkpoint's)")
  score.add_argument("--image_model", help="SEED tokenizer directory (coco_t2i: image codes -> images)")
  score.add_argument("--unclip_model", help="Stable Diffusion 2.1 unCLIP directory (coco_t2i)")
  score.add_argument("--image_steps", type=int, default=20, help="unCLIP denoising steps (coco_t2i)")
  score.add_argument("--clip_model", help="CLIP directory in transformers' layout, e.g. clip-vit-large-patch14 "
                                          "(coco_t2i)")
  score.add_argument("--music_model", help="Encodec 32 kHz directory (musiccaps_t2m: music codes -> audio)")
  score.add_argument("--clap_model", help="CLAP directory in transformers' layout, e.g. larger_clap_music "
                                          "(musiccaps_t2m, musiccaps_caption)")
  score.add_argument("--speech_model", help="SpeechTokenizer directory (vctk_tts: speech codes -> audio)")
  score.add_argument("--soundstorm_model", help="SoundStorm checkpoint (vctk_tts)")
  score.add_argument("--soundstorm_steps", type=int, default=3, help="SoundStorm passes (AnyGPT: 3)")
  score.add_argument("--whisper_model",
                     help="Whisper directory in transformers' layout, e.g. whisper-medium (vctk_tts)")
  score.add_argument("--wavlm_model", help="WavLM x-vector directory, e.g. wavlm-base-plus-sv (vctk_tts)")
  score.add_argument("--seed", type=int, default=0, help="the de-tokenizers' noise seed")
  score.add_argument("--ceiling_dir", default=None,
                     help="an output directory of `ceiling` + `score`: its scores go beside ours in the report")
  return p


def _add_tokenizing_stage(stages, name: str, help: str, choices, output_help: str, uses: tuple[str, str, str]) -> None:
  """A stage that reads a benchmark subset and tokenizes its media (no JAX): `ceiling` or `prompts`;
  `uses` names the benchmark that needs each of the image, speech and music tokenizers."""
  stage = stages.add_parser(name, help=help)
  stage.add_argument("--benchmark", required=True, choices=sorted(choices))
  stage.add_argument("--data", required=True, help="the data set's directory, in its publisher's layout")
  stage.add_argument("--limit", type=int, default=None, help="a seeded random subset of this many items")
  stage.add_argument("--seed", type=int, default=0)
  stage.add_argument("--output_dir", required=True, help=output_help)
  stage.add_argument("--image_model", help=f"SEED tokenizer directory ({uses[0]})")
  stage.add_argument("--speech_model", help=f"SpeechTokenizer directory ({uses[1]})")
  stage.add_argument("--music_model", help=f"Encodec 32 kHz directory ({uses[2]})")


# Benchmarks whose answers are media: their ceiling is the reference media through the tokenizer and back.
CEILING_BENCHMARKS = ("coco_t2i", "musiccaps_t2m", "vctk_tts")
CEILING_MODEL = "tokenizer ceiling (the benchmark's own media through the tokenizer, no language model)"


def generate(args) -> int:
  from anygpt_jax.cli.generation_flags import session_from_args
  from anygpt_jax.evaluation.generation import Request, decoding_settings, done_ids, generate_benchmark

  if not 0 <= args.process_index < args.num_processes:
    raise SystemExit(f"anygpt-eval: --process_index {args.process_index} not in [0, {args.num_processes})")
  bench = benchmarks.get(args.benchmark)
  items = bench.items(args.data, args.limit, args.seed)
  mine = [Request(position, item.id, item.task) for position, item in enumerate(items)]
  mine = mine[args.process_index::args.num_processes]
  done = done_ids(report.generations_file(args.output_dir, bench.name, args.process_index, args.num_processes))
  print(f"anygpt-eval: {bench.name}: {len(items)} items, {len(mine)} for process {args.process_index} of "
        f"{args.num_processes}, {len({r.id for r in mine} & done)} already generated", flush=True)
  session = session_from_args(args)
  run = {"benchmark": bench.name, "model": str(filesystem.resolve(args.model)), "step": _step(session, args.step),
         "data": str(filesystem.resolve(args.data)),  # the scoring stage may run from another directory
         "limit": args.limit, "seed": args.seed, "num_processes": args.num_processes,
         "settings": decoding_settings(session, mine)}
  generate_benchmark(session, bench.name, mine, args.output_dir, run, args.process_index, args.num_processes,
                     args.batch_size, args.seed, log=lambda line: print(f"anygpt-eval: {line}", flush=True))
  print(f"anygpt-eval: {bench.name}: generations in "
        f"{report.generations_file(args.output_dir, bench.name, args.process_index, args.num_processes)}")
  return 0


def ceiling(args) -> int:
  """Writes, as the generation stage would, each item's answer as its reference medium's codes (the
  caption's image, the caption's clip, the text's own recording): `score` then gives the best score
  this tokenizer set allows. Resumable as `generate` is; an unreadable medium is the item's error."""
  from anygpt_jax.evaluation.generation import done_ids
  from anygpt_jax.generation.media import Media
  from anygpt_jax.generation.requests import RequestError, parse_task

  bench = benchmarks.get(args.benchmark)
  items = bench.items(args.data, args.limit, args.seed)
  out = filesystem.resolve(args.output_dir) / bench.name
  out.mkdir(parents=True, exist_ok=True)
  path = report.generations_file(args.output_dir, bench.name, 0, 1)
  done = done_ids(path)
  modality = parse_task(items[0].task).target
  run = {"benchmark": bench.name, "model": CEILING_MODEL, "step": None, "data": str(filesystem.resolve(args.data)),
         "limit": args.limit, "seed": args.seed, "num_processes": 1, "settings": {}}
  filesystem.write_text(out / report.RUN_FILE, json.dumps(run, indent=1))
  media = Media(image_model=args.image_model, speech_model=args.speech_model, music_model=args.music_model)
  for item in items:
    if item.id in done:
      continue
    try:
      if item.reference_media is None:
        raise RequestError(f"no {modality} beside the reference text in the data set")
      codes = media.encode(modality, item.reference_media)
      record = {"id": item.id, "task": item.task, "text": "",
                "spans": [{"modality": modality, "codes": [int(c) for c in codes]}]}
    except (RequestError, ValueError, OSError) as e:
      record = {"id": item.id, "task": item.task, "error": str(e)}
    filesystem.append_json_lines(path, [record])
  print(f"anygpt-eval: {bench.name}: the tokenizer ceiling's answers in {path}; score them with "
        f"`anygpt-eval score --output_dir {args.output_dir}`")
  return 0


def prompts(args) -> int:
  """Writes the subset's requests with their input media as token strings (`evaluation.prompts`)."""
  from anygpt_jax.evaluation.prompts import write_prompts
  from anygpt_jax.generation.media import Media

  media = Media(image_model=args.image_model, speech_model=args.speech_model, music_model=args.music_model)
  written = write_prompts(args.benchmark, args.data, args.limit, args.seed, media, args.output_dir)
  failed = [(i, e) for i, _, e in written.items if e is not None]
  for item_id, error in failed:
    print(f"anygpt-eval: {args.benchmark}: item {item_id}: {error}", file=sys.stderr)
  print(f"anygpt-eval: {args.benchmark}: {len(written.items) - len(failed)} of {len(written.items)} requests in "
        f"{os.path.join(args.output_dir, args.benchmark, 'prompts.json')}")
  return 0


def _step(session, step: int | None) -> int | None:
  """The checkpoint step a run directory's model came from (None for an export)."""
  source = session.loaded.source
  if not os.path.exists(os.path.join(source, "config.gin")):
    return None
  from anygpt_jax.export.orbax_arrays import CheckpointArrays
  return CheckpointArrays(source, step).step


def score(args) -> int:
  from anygpt_jax.evaluation import watch
  from anygpt_jax.training import run_lock

  evaluators = scoring.Evaluators(image_model=args.image_model, unclip_model=args.unclip_model,
                                  music_model=args.music_model, speech_model=args.speech_model,
                                  soundstorm_model=args.soundstorm_model, image_steps=args.image_steps,
                                  soundstorm_steps=args.soundstorm_steps, seed=args.seed, clip_model=args.clip_model,
                                  clap_model=args.clap_model, whisper_model=args.whisper_model,
                                  wavlm_model=args.wavlm_model)
  if args.watch is None:
    return score_directory(args, args.output_dir, evaluators)
  scored = watch.watch(args.watch, lambda step, directory: score_directory(args, directory, evaluators),
                       training=lambda: run_lock.held(args.watch), poll_s=args.poll_s)
  print(f"anygpt-eval: {args.watch}: the trainer has ended; scored steps {scored}")
  return 0


def score_directory(args, output_dir: str, evaluators: scoring.Evaluators) -> int:
  """Scores every benchmark generated in `output_dir` (or --benchmark): report.json, report.md and the
  scores as TensorBoard scalars at the generations' step."""
  try:
    entries = report.write_report(output_dir, args.benchmark, evaluators, args.ceiling_dir)
  except scoring.EvaluatorMissing as e:
    raise SystemExit(f"anygpt-eval score: {e}") from None
  print(report.markdown(entries))
  models = {e["model"] for e in entries}
  steps = {e["step"] for e in entries} if args.step is None else {args.step}
  tensorboard_dir = args.tensorboard_dir
  if tensorboard_dir is None and len(models) == 1 and (filesystem.resolve(*models) / "config.gin").exists():
    tensorboard_dir = str(filesystem.resolve(*models) / "tensorboard")
  if tensorboard_dir is not None:
    if len(steps) != 1 or None in steps:
      raise SystemExit(f"anygpt-eval: scalars need one step; the generations are of steps {sorted(map(str, steps))} "
                       "(pass --step)")
    print(f"anygpt-eval: scores as TensorBoard scalars at step {next(iter(steps))} in "
          + report.write_scalars(entries, tensorboard_dir, next(iter(steps))))
  print(f"anygpt-eval: {os.path.join(output_dir, report.REPORT_JSON)}, {os.path.join(output_dir, report.REPORT_MD)}")
  return 0


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return {"generate": generate, "ceiling": ceiling, "prompts": prompts, "score": score}[args.stage](args)


if __name__ == "__main__":
  sys.exit(main())
