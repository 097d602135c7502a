"""Speech tokenization throughput: the batched job vs one file at a time (AnyGPT's way), same audio set.

  python -m tools.bench_tokenize --files 48 --model released-size
  python -m tools.bench_tokenize --webdataset image --files 32 --model tiny
  python -m tools.bench_tokenize --webdataset speech --files 32 --model released-size

`--webdataset KIND` instead measures the whole job (`anygpt-tokenize --input shard.tar`: tar
index, member reads, decoding, resampling, encoding, shard writing) in records/s over one
webdataset tar, next to the encoder's own rate on the same media already decoded in memory
(the same length-sorted batches), with and without the prefetch of decoded windows.

Each measurement runs in its own process so its peak RSS (`resource.getrusage`) is its own.
The batched job is also run on a corpus `--scale` times larger: if it streams, its peak
memory stays put while the corpus grows. Model loading is excluded from both timings.
Weights are random (no download): `released-size` has the released model's shapes (~104M
parameters), `tiny` the test sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from anygpt_jax.cli.flags import ArgumentParser, command



def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure_single(manifest: str, model_dir: str, threads: int, repeats: int) -> dict:
  """AnyGPT's `encode_speech`, file by file: read, resample, `SpeechTokenizer.encode` (all levels),
  keep level 1, format the token string. Best of `repeats`."""
  import torch
  from anygpt_jax.tokenizers import audio_io, inputs
  from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker
  torch.set_num_threads(threads)
  worker = SpeechTokenizerWorker(model_dir)
  records = list(inputs.read_manifest(manifest))
  best = float("inf")
  for _ in range(repeats):
    start, audio, lines = time.time(), 0.0, []
    for r in records:
      wave = audio_io.load_audio(r.path, worker.sample_rate)
      audio += len(wave) / worker.sample_rate
      with torch.no_grad():
        codes = worker.model.encode(torch.from_numpy(wave)[None, None])[0, 0]
      tokens = "".join(f"<🗣️{c}>" for c in codes.tolist())
      lines.append(json.dumps({"text": r.text, "speech": f"<sosp>{tokens}<eosp>"}))
    best = min(best, time.time() - start)
  return {"seconds": best, "files": len(records), "audio_s": audio, "peak_rss_mb": _peak_rss_mb(),
          **_matmul_bound(worker, threads)}


def _matmul_bound(worker, threads: int) -> dict:
  """The encoder's float32 FLOPs per second of audio, and this machine's float32 matmul rate.

  Convolution FLOPs are counted by torch on a 1 s clip; the LSTM's (which the counter skips)
  are 2 * 4h * (input + h) per frame, layer and direction.
  """
  import torch
  from torch.utils.flop_counter import FlopCounterMode
  torch.set_num_threads(threads)
  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    worker.model.encoder(torch.zeros(1, 1, worker.sample_rate))
  lstm = next(m for m in worker.model.encoder.modules() if isinstance(m, torch.nn.LSTM))
  directions = 2 if lstm.bidirectional else 1
  per_frame = 0
  for layer in range(lstm.num_layers):
    inputs = lstm.input_size if layer == 0 else lstm.hidden_size * directions
    per_frame += directions * 2 * 4 * lstm.hidden_size * (inputs + lstm.hidden_size)
  flops = counter.get_total_flops() + per_frame * worker.frame_rate
  a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
  a @ b
  best = float("inf")
  for _ in range(5):
    start = time.time()
    a @ b
    best = min(best, time.time() - start)
  return {"encoder_flops_per_audio_s": flops, "matmul_flops_per_s": 2 * 2048**3 / best}


def _measure_bfloat16(manifest: str, model_dir: str, threads: int, batch_size: int) -> dict:
  """The batch encoder in bfloat16 against float32 on the same clips: speed and equal codes."""
  import numpy as np
  import torch
  from anygpt_jax.tokenizers import audio_io, inputs
  from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker
  from anygpt_jax.tokenizers.speech_encoder import BatchEncoder
  torch.set_num_threads(threads)
  worker = SpeechTokenizerWorker(model_dir)
  waves = sorted((torch.from_numpy(audio_io.load_audio(r.path, worker.sample_rate))
                  for r in inputs.read_manifest(manifest)), key=len)
  batches = [waves[i:i + batch_size] for i in range(0, len(waves), batch_size)]
  result = {}
  for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
    encoder = BatchEncoder(worker.model.encoder, dtype)
    encoder(batches[0])
    start = time.time()
    feats = [f for batch in batches for f in encoder(batch)]
    seconds = time.time() - start
    codes = np.concatenate([worker.model.quantizer.encode(f[None], n_q=1)[0, 0].numpy() for f in feats])
    result[name] = {"seconds": seconds, "codes": codes}
  return {"speed_ratio": result["float32"]["seconds"] / result["bfloat16"]["seconds"],
          "equal_codes": float(np.mean(result["float32"]["codes"] == result["bfloat16"]["codes"]))}


def _measure_batched(manifest: str, model_dir: str, threads: int, batch_size: int, workers: int, out: str,
                     repeats: int) -> dict:
  """The job's local engine on the same files (fresh output directory each time). Best of `repeats`."""
  from anygpt_jax.tokenizers import inputs, job
  toks, best = None, float("inf")
  for k in range(repeats):
    cfg = job.JobConfig(output_dir=f"{out}/{k}", corpus="bench", speech_model=model_dir, batch_size=batch_size,
                        window=256, workers=workers, torch_threads=threads)
    toks = toks or job.Tokenizers(cfg)
    toks.get("speech")
    start = time.time()
    stats = job.run_local(cfg, lambda: inputs.read_manifest(manifest), toks=toks)
    best = min(best, time.time() - start)
  return {"seconds": best, "files": stats[0]["records_out"], "audio_s": stats[0]["audio_seconds"],
          "peak_rss_mb": _peak_rss_mb(), "rejected": stats[0]["rejected"]}


def _run_child(args: list[str]) -> dict:
  proc = subprocess.run([*command("bench_tokenize"), *args], capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _repeat_manifest(manifest: pathlib.Path, times: int) -> pathlib.Path:
  rows = [json.loads(l) for l in manifest.read_text().splitlines()]
  out = manifest.with_name(f"manifest_x{times}.jsonl")
  out.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{k}"}) + "\n" for k in range(times) for r in rows))
  return out


def _webdataset_bench(kind: str, files: int, model: str, batch_size: int, workers: int, threads: int,
                      repeats: int, work: pathlib.Path) -> None:
  """Job records/s over a webdataset tar vs the encoder's records/s on in-memory batches (one process)."""
  import io
  import tarfile
  import numpy as np
  import soundfile as sf
  import torch
  from PIL import Image
  from anygpt_jax.tokenizers import audio_io, image as image_lib, job
  from anygpt_jax.testing import tiny_tokenizers as tiny
  from anygpt_jax.tokenizers.readers.webdataset import read_webdataset
  from anygpt_jax.tokenizers.seed_model import SeedConfig
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  tar_path = work / f"{kind}-00000.tar"
  with tarfile.open(tar_path, "w") as tar:
    for i in range(files):
      buf = io.BytesIO()
      if kind == "image":  # photo-sized JPEGs, resized to 224 by SEED's preprocessing
        Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        name = f"{i:06d}.jpg"
      else:  # 2-8 s utterance-like clips at 16 kHz, flac as MLS ships them
        n = int(rng.uniform(2.0, 8.0) * 16000)
        t = np.arange(n) / 16000
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(buf, (wave + 0.02 * rng.standard_normal(n)).astype(np.float32), 16000, format="FLAC")
        name = f"{i:06d}.flac"
      for member, data in ((name, buf.getvalue()), (f"{i:06d}.txt", f"caption {i}".encode())):
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  if kind == "image":
    model_dir = tiny.save_tiny_seed(work / f"seed_{model}", config=SeedConfig() if model == "released-size"
                                    else tiny.SEED_CONFIG)
  else:
    model_dir = tiny.save_tiny_speech_tokenizer(work / f"speech_{model}", config=tiny.RELEASED_SPEECH_CONFIG
                                                if model == "released-size" else tiny.SPEECH_CONFIG)
  base = dict(corpus="bench", batch_size=batch_size, window=batch_size * 2, workers=workers,
              torch_threads=threads, **{f"{kind}_model": str(model_dir)})
  toks = job.Tokenizers(job.JobConfig(output_dir=str(work / "unused"), **base))
  worker = toks.get(kind)
  if kind == "image":
    items = [image_lib.load_image(_ref(r)) for r in read_webdataset(str(tar_path), kind)]
  else:
    items = [audio_io.load_audio(_ref(r), worker.sample_rate) for r in read_webdataset(str(tar_path), kind)]
  job._encode_kind(kind, items[:batch_size], toks, batch_size)  # warm-up
  encoder = min(_timed(lambda: job._encode_kind(kind, items, toks, batch_size)) for _ in range(repeats))
  rows = [("encoder alone, decoded batches in memory", encoder)]
  for prefetch in (1, 0):
    def run(k=[0]):
      k[0] += 1
      cfg = job.JobConfig(output_dir=str(work / f"out_{prefetch}_{k[0]}"), prefetch=prefetch, **base)
      plan = job.InputShardPlan([str(tar_path)], lambda path: read_webdataset(path, kind))
      stats = job.run_local(cfg, plan, toks=toks)
      assert stats[0]["records_out"] == files, stats
    rows.append((f"job over the tar, prefetch {prefetch}", min(_timed(run) for _ in range(repeats))))
  print(f"{kind} tokenization, {model} {'SEED' if kind == 'image' else 'SpeechTokenizer'} (random weights), "
        f"{files} records in one webdataset tar, batch {batch_size}, {workers} decode threads, torch threads "
        f"{threads}, best of {repeats}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  print(f"{'':44s}{'records/s':>10s}{'/ encoder':>11s}")
  for name, seconds in rows:
    print(f"{name:44s}{files / seconds:10.2f}{encoder / seconds:11.2f}")


def _ref(record):
  from anygpt_jax.tokenizers.media import MediaRef
  return MediaRef.from_dict(next(p for p in record.parts if p["kind"] != "text")["media"])


def _timed(fn) -> float:
  start = time.time()
  fn()
  return time.time() - start


def main(argv=None) -> int:
  p = ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--files", type=int, default=48)
  p.add_argument("--model", choices=("released-size", "tiny"), default="released-size")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--threads", type=int, default=2, help="torch threads, the same for both")
  p.add_argument("--scale", type=int, default=3, help="corpus multiple for the streaming (memory) check")
  p.add_argument("--repeats", type=int, default=2, help="best of this many timings (shared machines are noisy)")
  p.add_argument("--workdir", help="default: a temporary directory")
  p.add_argument("--webdataset", choices=("image", "speech"),
                 help="measure the job over a webdataset tar against the encoder on in-memory batches")
  p.add_argument("--child", choices=("single", "batched", "bfloat16"), help=argparse.SUPPRESS)
  p.add_argument("--manifest", help=argparse.SUPPRESS)
  p.add_argument("--model_dir", help=argparse.SUPPRESS)
  p.add_argument("--out", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child == "single":
    print(json.dumps(_measure_single(args.manifest, args.model_dir, args.threads, args.repeats)))
    return 0
  if args.child == "bfloat16":
    print(json.dumps(_measure_bfloat16(args.manifest, args.model_dir, args.threads, args.batch_size)))
    return 0
  if args.child == "batched":
    print(json.dumps(_measure_batched(args.manifest, args.model_dir, args.threads, args.batch_size, args.workers,
                                      args.out, args.repeats)))
    return 0

  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_tokenize_"))
  work.mkdir(parents=True, exist_ok=True)
  if args.webdataset:
    _webdataset_bench(args.webdataset, args.files, args.model, args.batch_size, args.workers, args.threads,
                      args.repeats, work)
    return 0
  from anygpt_jax.testing import tiny_tokenizers as tiny
  from anygpt_jax.testing.demo_corpus import build_demo_corpus
  model_dir = work / f"speechtokenizer_{args.model}"
  config = tiny.RELEASED_SPEECH_CONFIG if args.model == "released-size" else tiny.SPEECH_CONFIG
  tiny.save_tiny_speech_tokenizer(model_dir, config=config)
  manifest = build_demo_corpus(work / "corpus", num_images=0, num_speech=args.files, num_music=0, seed=0)
  common = ["--model_dir", str(model_dir), "--threads", str(args.threads), "--repeats", str(args.repeats)]
  single = _run_child(["--child", "single", "--manifest", str(manifest)] + common)
  batched = _run_child(["--child", "batched", "--manifest", str(manifest), "--out", str(work / "out1"),
                        "--batch_size", str(args.batch_size), "--workers", str(args.workers)] + common)
  big = _repeat_manifest(manifest, args.scale)
  batched_big = _run_child(["--child", "batched", "--manifest", str(big), "--out", str(work / "out2"),
                            "--batch_size", str(args.batch_size), "--workers", str(args.workers), "--model_dir",
                            str(model_dir), "--threads", str(args.threads), "--repeats", "1"])
  rate = lambda r: r["audio_s"] / r["seconds"]
  print(f"speech tokenization, {args.model} SpeechTokenizer (random weights), {args.files} files, "
        f"{single['audio_s']:.0f} s of audio, torch threads {args.threads}, best of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  print(f"{'':34s}{'files/s':>10s}{'audio s/s':>12s}{'peak RSS MB':>14s}")
  for name, r in ((f"one file at a time", single), (f"batched job (batch {args.batch_size})", batched),
                  (f"batched job, corpus x{args.scale}", batched_big)):
    print(f"{name:34s}{r['files'] / r['seconds']:10.2f}{rate(r):12.1f}{r['peak_rss_mb']:14.0f}")
  print(f"speed-up batched / one at a time: {rate(batched) / rate(single):.2f}x")
  print(f"peak RSS corpus x{args.scale} / x1: {batched_big['peak_rss_mb'] / batched['peak_rss_mb']:.2f}")
  bound = single["matmul_flops_per_s"] / single["encoder_flops_per_audio_s"]
  print(f"bound: the encoder needs {single['encoder_flops_per_audio_s'] / 1e9:.1f} GFLOP per audio second; at this "
        f"machine's float32 matmul rate ({single['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s) that is at most "
        f"{bound:.1f} audio s/s, {bound / rate(single):.2f}x the one-at-a-time rate; the batched job reaches "
        f"{rate(batched) * single['encoder_flops_per_audio_s'] / single['matmul_flops_per_s']:.0%} of it")
  bf16 = _run_child(["--child", "bfloat16", "--manifest", str(manifest), "--batch_size", str(args.batch_size)] + common)
  print(f"not used by the job: the batch encoder in bfloat16 runs {bf16['speed_ratio']:.2f}x its float32 rate, "
        f"and {bf16['equal_codes']:.1%} of its level-1 codes equal the float32 ones")
  return 0


if __name__ == "__main__":
  sys.exit(main())
