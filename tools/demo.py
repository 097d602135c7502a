"""`anygpt-demo`: the whole pipeline end to end on this machine's CPU, in minutes.

  1. builds a small raw corpus of images, speech and music with captions and transcripts
     (`anygpt_jax.testing.demo_corpus`: sample photographs, espeak-ng speech when installed,
     synthesised melodies);
  2. writes tiny random-weight tokenizers in the published checkpoint layouts (or takes real
     ones: --image_model/--speech_model/--music_model) and tokenizes the corpus with the
     tokenization job (`anygpt-tokenize`), train and validation splits;
  3. trains a small SentencePiece model on the corpus's texts;
  4. trains the demo model on the token-count mixture with `anygpt-train --gin_file=gin/runs/demo.gin`
     (checkpoints, TensorBoard logs, held-out evaluation);
  5. exports the run with `anygpt-export` to a HuggingFace directory with AnyGPT's chat template
     (`demo_out/export`: what transformers and OpenAI-compatible engines serve);
  6. plots the per-modality training losses (PNG), prints where everything is, and generates one
     sample per direction with `anygpt-generate`.

Running it again reuses the data it already built and resumes training from the last
checkpoint (a finished run is not trained further; pass --steps to extend it).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

from anygpt_jax.cli.flags import ArgumentParser, command
from anygpt_jax.vocabulary.layout import CONTENT_KINDS, MODALITY_NAMES


KINDS = MODALITY_NAMES
MODALITIES = CONTENT_KINDS


def _log(message: str) -> None:
  print(f"[anygpt-demo] {message}", flush=True)


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="anygpt-demo", description=__doc__.split("\n\n")[0])
  p.add_argument("--out_dir", default="demo_out", help="everything goes here (default ./demo_out)")
  p.add_argument("--items", type=int, default=48, help="raw items per modality (train + validation)")
  p.add_argument("--validation_items", type=int, default=4, help="of those, held out per modality")
  p.add_argument("--music_seconds", type=float, default=2.0)
  p.add_argument("--spm_vocab_size", type=int, default=1000, help="upper bound; a small corpus caps it")
  p.add_argument("--steps", type=int, default=None, help="training steps (default: demo.gin's TRAIN_STEPS)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--image_model", help="a real SEED tokenizer directory instead of the tiny random one")
  p.add_argument("--speech_model", help="a real SpeechTokenizer directory")
  p.add_argument("--music_model", help="a real Encodec 32 kHz directory")
  p.add_argument("--gin_file", action="append", default=[], help="more gin files after gin/runs/demo.gin")
  return p


def _run(cmd: list[str], what: str, log_path: pathlib.Path | None = None) -> None:
  """Runs a step of the pipeline as its own command; raises with the command's tail on failure."""
  if log_path is None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    output = result.stdout + result.stderr
  else:
    with open(log_path, "w") as log:
      process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      lines = []
      for line in process.stdout:
        log.write(line)
        if line.startswith(("step ", "[anygpt-train]")) or "Error" in line:
          print("  " + line.rstrip(), flush=True)
        lines.append(line)
      result = subprocess.CompletedProcess(cmd, process.wait())
      output = "".join(lines[-40:])
  if result.returncode != 0:
    raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{output[-4000:]}")


def build_raw_corpus(out: pathlib.Path, args) -> dict[str, dict[str, pathlib.Path]]:
  """Raw media + one manifest per (modality, split)."""
  from anygpt_jax.testing import demo_corpus

  raw = out / "raw"
  manifest = raw / "manifest.jsonl"
  if not manifest.exists():
    demo_corpus.build_demo_corpus(raw, args.items, args.items, args.items, seed=args.seed,
                                  music_seconds=args.music_seconds)
  rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
  manifests = {}
  for kind in KINDS:
    items = [r for r in rows if r["kind"] == kind]
    held_out = max(1, min(args.validation_items, len(items) // 4))
    splits = {"train": items[:-held_out], "validation": items[-held_out:]}
    manifests[kind] = {}
    for split, records in splits.items():
      path = raw / f"manifest_{kind}_{split}.jsonl"
      path.write_text("".join(json.dumps(r) + "\n" for r in records))
      manifests[kind][split] = path
  return manifests


def tokenizer_models(out: pathlib.Path, args) -> dict[str, pathlib.Path]:
  """Real checkpoints when given, else tiny random-weight ones in the published layouts."""
  given = {kind: getattr(args, f"{kind}_model") for kind in KINDS}
  models = {k: pathlib.Path(v) for k, v in given.items() if v}
  missing = [k for k in KINDS if k not in models]
  if missing:
    from anygpt_jax.testing import tiny_tokenizers as tiny

    makers = {"image": (tiny.save_tiny_seed, "seed_tokenizer"),
              "speech": (tiny.save_tiny_speech_tokenizer, "speechtokenizer"),
              "music": (tiny.save_tiny_encodec, "encodec_32khz")}
    for kind in missing:
      make, name = makers[kind]
      directory = out / "tokenizer_models" / name
      models[kind] = directory if (directory / ".complete").exists() else make(directory, seed=args.seed)
      (directory / ".complete").touch()
  return models


def tokenize(out: pathlib.Path, manifests, models) -> dict[str, dict]:
  """Runs the tokenization job per modality and split; returns its stats."""
  stats = {}
  for kind in KINDS:
    corpus = f"demo_{kind}"
    for split, manifest in manifests[kind].items():
      shard_dir = out / "shards" / corpus
      stats_path = shard_dir / f"{corpus}-{split}-00000-of-00001.stats.json"
      if not stats_path.exists():
        _run([*command("tokenize_media"), "--manifest", str(manifest), "--corpus", corpus,
              "--split", split, "--output_dir", str(shard_dir), f"--{kind}_model", str(models[kind]),
              "--no_progress", "--torch_threads", "1"], f"tokenizing {corpus} ({split})")
      stats[f"{corpus}/{split}"] = json.loads(stats_path.read_text())
  return stats


def train_sentencepiece(out: pathlib.Path, manifests, vocab_size: int) -> pathlib.Path:
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

  model = out / "spm" / "demo.model"
  if not model.exists():
    texts = [json.loads(line)["text"] for kind in KINDS for line in manifests[kind]["train"].read_text().splitlines()
             if line.strip()]
    train_llama_like_sentencepiece(texts, str(out / "spm" / "demo"), vocab_size=vocab_size)
  return model


def read_metrics(model_dir: pathlib.Path) -> list[dict]:
  """The run's per-step metrics; a step logged twice (before and after a resume) keeps its last entry."""
  path = model_dir / "tensorboard" / "metrics.jsonl"
  by_step = {}
  for line in path.read_text().splitlines():
    if line.strip():
      entry = json.loads(line)
      if "train/loss" in entry:
        by_step[entry["step"]] = entry
  return [by_step[s] for s in sorted(by_step)]


def _mean(values):
  values = [v for v in values if v is not None and math.isfinite(v)]
  return sum(values) / len(values) if values else None


def loss_summary(metrics: list[dict], window: int = 10) -> dict:
  """Per-modality training loss at the start (first `window` steps) and the end (last `window`)."""
  first, last = metrics[:window], metrics[-window:]
  summary = {"steps": metrics[-1]["step"] if metrics else 0}
  for name in ("loss",) + tuple(f"{m}/loss" for m in MODALITIES):
    summary[name] = {"start": _mean([m.get(f"train/{name}") for m in first]),
                     "end": _mean([m.get(f"train/{name}") for m in last])}
  return summary


def plot_losses(metrics: list[dict], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 4.5))
  steps = [m["step"] for m in metrics]
  for name in ("loss",) + tuple(f"{m}/loss" for m in MODALITIES):
    values = [m.get(f"train/{name}") for m in metrics]
    points = [(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
    if points:
      ax.plot(*zip(*points), label=name if name != "loss" else "all tokens", linewidth=2 if name == "loss" else 1)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (nats per target token)")
  ax.set_title("anygpt-demo: loss per target modality")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  out = pathlib.Path(args.out_dir).resolve()
  out.mkdir(parents=True, exist_ok=True)
  timings = {}

  t = time.perf_counter()
  _log(f"1/6 raw demo corpus: {args.items} images, speech clips and music clips -> {out / 'raw'}")
  manifests = build_raw_corpus(out, args)
  timings["raw_corpus_s"] = time.perf_counter() - t

  t = time.perf_counter()
  _log("2/6 tokenizing with anygpt-tokenize (" +
       ("tiny random-weight tokenizers" if not (args.image_model or args.speech_model or args.music_model)
        else "given tokenizer checkpoints") + ")")
  models = tokenizer_models(out, args)
  stats = tokenize(out, manifests, models)
  for name, s in stats.items():
    _log(f"    {name}: {s['records_out']} records, tokens {s['tokens']}")
  timings["tokenize_s"] = time.perf_counter() - t

  t = time.perf_counter()
  spm_model = train_sentencepiece(out, manifests, args.spm_vocab_size)
  _log(f"3/6 SentencePiece model on the corpus texts: {spm_model}")
  timings["sentencepiece_s"] = time.perf_counter() - t

  t = time.perf_counter()
  model_dir = out / "run"
  cmd = [*command("train"), "--gin_file=gin/runs/demo.gin",
         *[f"--gin_file={f}" for f in args.gin_file],
         f"--gin.MODEL_DIR={model_dir}", f"--gin.DATA_DIR={out / 'shards'}", f"--gin.SENTENCEPIECE_MODEL={spm_model}"]
  if args.steps is not None:
    cmd.append(f"--gin.TRAIN_STEPS={args.steps}")
  _log("4/6 training: anygpt-train " + " ".join(cmd[3:]))
  _run(cmd, "training", log_path=out / "train.log")
  timings["train_s"] = time.perf_counter() - t

  t = time.perf_counter()
  export_dir = out / "export"
  _log(f"5/6 exporting the run to HuggingFace with AnyGPT's chat template: {export_dir}")
  _run([*command("export_hf"), f"--model_dir={model_dir}", f"--output_dir={export_dir}"], "export")
  timings["export_s"] = time.perf_counter() - t

  metrics = read_metrics(model_dir)
  plot_path = out / "losses_per_modality.png"
  plot_losses(metrics, plot_path)
  summary = {"wall_time_s": time.perf_counter() - start, "timings_s": timings, "losses": loss_summary(metrics),
             "model_dir": str(model_dir), "export_dir": str(export_dir), "tokenization": stats}
  (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))

  _log("6/6 done in %.0f s (raw corpus %.0f s, tokenization %.0f s, SentencePiece %.0f s, training %.0f s, "
       "export %.0f s)" % (summary["wall_time_s"], timings["raw_corpus_s"], timings["tokenize_s"],
                           timings["sentencepiece_s"], timings["train_s"], timings["export_s"]))
  losses = summary["losses"]
  _log(f"training loss per target modality over {losses['steps']} steps (mean of the first and last 10 steps):")
  for name in ("loss",) + tuple(f"{m}/loss" for m in MODALITIES):
    start_v, end_v = losses[name]["start"], losses[name]["end"]
    if start_v is not None and end_v is not None:
      _log(f"    {name:12s} {start_v:7.3f} -> {end_v:7.3f}")
  checkpoints = sorted((model_dir / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  _log(f"checkpoint:        {checkpoints[-1] if checkpoints else '(none)'}")
  _log(f"TensorBoard logs:  {model_dir / 'tensorboard'}   (tensorboard --logdir {model_dir / 'tensorboard'})")
  _log(f"loss plot:         {plot_path}")
  if (model_dir / "samples.jsonl").exists():  # gin/runs/demo.gin's samples during training
    _log(f"training samples:  {model_dir / 'samples.jsonl'}   (TensorBoard: 'samples/' under Text)")
  _log(f"operative config:  {model_dir / 'config.gin'}")
  _log(f"HuggingFace export: {export_dir}   (chat template included; README 'Serving an export')")
  _log(f"summary:           {out / 'demo_summary.json'}")
  generate_samples(out, model_dir, models, manifests, args)
  return 0


# --- the end: one generated sample per direction ----------------------------------------------
def sample_tasks(manifests) -> list[str]:
  """AnyGPT's six base task strings over the first held-out item of each modality."""
  first, path = {}, {}
  for kind in KINDS:
    manifest = manifests[kind]["validation"]
    first[kind] = json.loads(manifest.read_text().splitlines()[0])
    path[kind] = manifest.parent / first[kind]["path"]  # manifest paths are relative to the manifest
  return [f"text|image|{first['image']['text']}", f"image|text|{path['image']}",
          f"text|speech|{first['speech']['text']}|{path['speech']}", f"speech|text|{path['speech']}",
          f"text|music|{first['music']['text']}", f"music|text|{path['music']}"]


def generate_samples(out: pathlib.Path, model_dir: pathlib.Path, models, manifests, args) -> None:
  """Runs anygpt-generate on the trained model for every direction and prints what it wrote."""
  if args.image_model or args.speech_model or args.music_model:
    _log("samples: skipped (real tokenizers need real unCLIP and SoundStorm checkpoints: run anygpt-generate)")
    return
  from anygpt_jax.testing import tiny_tokenizers as tiny

  decoders = out / "tokenizer_models"
  unclip, soundstorm = decoders / "stable-diffusion-2-1-unclip", decoders / "soundstorm"
  if not (unclip / "model_index.json").exists():
    tiny.save_tiny_unclip(unclip, seed=args.seed)
  if not (soundstorm / tiny.SOUNDSTORM_FILE).exists():
    tiny.save_tiny_soundstorm(soundstorm, seed=args.seed)
  samples = out / "samples"
  if (samples / "generations.jsonl").exists():
    (samples / "generations.jsonl").unlink()
  tasks = sample_tasks(manifests)
  cmd = [*command("generate"), f"--model={model_dir}", f"--output_dir={samples}",
         f"--image_model={models['image']}", f"--unclip_model={unclip}", f"--speech_model={models['speech']}",
         f"--soundstorm_model={soundstorm / tiny.SOUNDSTORM_FILE}", f"--music_model={models['music']}",
         f"--music_seconds={args.music_seconds}", "--image_steps=2", "--set=text.max_new_tokens=24",
         "--set=speech.max_new_tokens=100", "--set=music.max_new_tokens=200", *tasks]
  _log("samples: anygpt-generate " + " ".join(f"'{c}'" if " " in c else c for c in cmd[3:]))
  _run(cmd, "generation")
  _log(f"samples (random tokenizers: noise, but well-formed files) in {samples}:")
  for line in (samples / "generations.jsonl").read_text().splitlines():
    r = json.loads(line)
    files = ", ".join(pathlib.Path(f["file"]).name for f in r.get("files", []))
    source, target = r["task"].split("|")[:2]
    # The answer as a user reads it (anygpt-generate strips role and modality tokens; the ids are in the JSON).
    text = f"  {r.get('text', '')[:60]!r}" if target == "text" else ""
    if target == "text" and "output_ids" in r and not r.get("text"):
      text += f" (no text among its {len(r['output_ids'])} generated ids)"
    _log(f"    {source}->{target}: {files}{text}")


if __name__ == "__main__":
  sys.exit(main())
