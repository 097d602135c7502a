"""`anygpt-eval`: the paper's benchmarks in two stages, each on its own hardware.

  anygpt-eval generate --benchmark coco_caption --data /data/coco --model runs/pretrain \\
      --output_dir eval/step_81000 --image_model seed/ [--limit 500] [--num_processes 4 --process_index 0]
  anygpt-eval score --output_dir eval/step_81000

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
import dataclasses
import json
import os
import random
import sys
import time

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
  ceiling = stages.add_parser("ceiling", help="the benchmark's own media through the tokenizer, as answers (no JAX)")
  ceiling.add_argument("--benchmark", required=True, choices=sorted(CEILING_BENCHMARKS))
  ceiling.add_argument("--data", required=True, help="the data set's directory, in its publisher's layout")
  ceiling.add_argument("--limit", type=int, default=None, help="a seeded random subset of this many items")
  ceiling.add_argument("--seed", type=int, default=0)
  ceiling.add_argument("--output_dir", required=True, help="where the ceiling's answers go (score it there)")
  ceiling.add_argument("--image_model", help="SEED tokenizer directory (coco_t2i)")
  ceiling.add_argument("--speech_model", help="SpeechTokenizer directory (vctk_tts)")
  ceiling.add_argument("--music_model", help="Encodec 32 kHz directory (musiccaps_t2m)")
  score = stages.add_parser("score", help="score what was generated and write report.json and report.md (no JAX)")
  score.add_argument("--output_dir", required=True)
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


# Benchmarks whose answers are media: their ceiling is the reference media through the tokenizer and back.
CEILING_BENCHMARKS = ("coco_t2i", "musiccaps_t2m", "vctk_tts")
CEILING_MODEL = "tokenizer ceiling (the benchmark's own media through the tokenizer, no language model)"


def done_ids(path) -> set[str]:
  """Ids of the items a generations file already holds. A last line cut by a kill is removed from the
  file (its item is generated again), so the next append starts on a line of its own."""
  if not path.exists():
    return set()
  text = path.read_text()
  if text and not text.endswith("\n"):
    text = text[:text.rfind("\n") + 1]
    path.write_text(text)
  done = set()
  for line in text.splitlines():
    try:
      done.add(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError):
      continue
  return done


def run_description(args, model_step, settings) -> dict:
  return {"benchmark": args.benchmark, "model": str(filesystem.resolve(args.model)), "step": model_step,
          "data": str(filesystem.resolve(args.data)),  # the scoring stage may run from another directory
          "limit": args.limit, "seed": args.seed, "num_processes": args.num_processes, "settings": settings}


def generate(args) -> int:
  from anygpt_jax.cli.generation_flags import session_from_args
  from anygpt_jax.generation import defaults_for
  from anygpt_jax.generation.requests import parse_task
  from anygpt_jax.generation.session import generate_records

  if not 0 <= args.process_index < args.num_processes:
    raise SystemExit(f"anygpt-eval: --process_index {args.process_index} not in [0, {args.num_processes})")
  bench = benchmarks.get(args.benchmark)
  items = bench.items(args.data, args.limit, args.seed)
  mine = list(enumerate(items))[args.process_index::args.num_processes]
  out = filesystem.resolve(args.output_dir) / bench.name
  out.mkdir(parents=True, exist_ok=True)
  path = report.generations_file(args.output_dir, bench.name, args.process_index, args.num_processes)
  done = done_ids(path)
  todo = [pair for pair in mine if pair[1].id not in done]
  print(f"anygpt-eval: {bench.name}: {len(items)} items, {len(mine)} for process {args.process_index} of "
        f"{args.num_processes}, {len(mine) - len(todo)} already generated", flush=True)
  session = session_from_args(args)
  target = parse_task(items[0].task).target
  settings = defaults_for(target, session.stops, **session.overrides[target])
  run = run_description(args, _step(session, args.step),
                        {k: v for k, v in dataclasses.asdict(settings).items() if k != "stop_ids"})
  if args.process_index == 0:
    filesystem.write_text(out / report.RUN_FILE, json.dumps(run, indent=1))
  started, generated = time.perf_counter(), 0
  # Fixed batches of this process's items: a rerun regenerates an unfinished batch whole, with the
  # same instruction draws and decoding seed, and writes only its items not yet on file.
  for batch_index in range(0, len(mine), args.batch_size):
    batch = mine[batch_index:batch_index + args.batch_size]
    if all(item.id in done for _, item in batch):
      continue
    session.prompts.rng = random.Random(f"{args.seed}/{batch[0][1].id}")
    records = generate_records(session, [(position, parse_task(item.task)) for position, item in batch],
                               str(out / "outputs"), args.batch_size, args.seed + batch_index, detokenize=False)
    new = [{"id": item.id, **record} for (_, item), record in zip(batch, records) if item.id not in done]
    filesystem.append_json_lines(path, new)
    generated += len(new)
    elapsed = time.perf_counter() - started
    print(f"anygpt-eval: {bench.name}: {len(done) + generated} of {len(mine)} items "
          f"({generated / elapsed:.2f} items/s)", flush=True)
  print(f"anygpt-eval: {bench.name}: generations in {path}")
  return 0


def ceiling(args) -> int:
  """Writes, as the generation stage would, each item's answer as its reference medium's codes (the
  caption's image, the caption's clip, the text's own recording): `score` then gives the best score
  this tokenizer set allows. Resumable as `generate` is; an unreadable medium is the item's error."""
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


def _step(session, step: int | None) -> int | None:
  """The checkpoint step a run directory's model came from (None for an export)."""
  source = session.loaded.source
  if not os.path.exists(os.path.join(source, "config.gin")):
    return None
  from anygpt_jax.export.orbax_arrays import CheckpointArrays
  return CheckpointArrays(source, step).step


def score(args) -> int:
  evaluators = scoring.Evaluators(image_model=args.image_model, unclip_model=args.unclip_model,
                                  music_model=args.music_model, speech_model=args.speech_model,
                                  soundstorm_model=args.soundstorm_model, image_steps=args.image_steps,
                                  soundstorm_steps=args.soundstorm_steps, seed=args.seed, clip_model=args.clip_model,
                                  clap_model=args.clap_model, whisper_model=args.whisper_model,
                                  wavlm_model=args.wavlm_model)
  try:
    entries = report.write_report(args.output_dir, args.benchmark, evaluators, args.ceiling_dir)
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
  print(f"anygpt-eval: {os.path.join(args.output_dir, report.REPORT_JSON)}, "
        f"{os.path.join(args.output_dir, report.REPORT_MD)}")
  return 0


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return {"generate": generate, "ceiling": ceiling, "score": score}[args.stage](args)


if __name__ == "__main__":
  sys.exit(main())
