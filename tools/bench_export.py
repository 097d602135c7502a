"""Export benchmark: the streaming `anygpt-export` against the export of a reference commit (the
whole-model restore it replaced), on the same 1B-class orbax checkpoint (written by `anygpt-import`'s writer: one storage chunk per
layer of a scanned parameter), side by side.

  python -m tools.bench_export --config 1b --reference_commit bb28fbd [--dtype bfloat16] [--workdir DIR]
  python -m tools.bench_export --config 1b --layers_series 4,8,16   # time against size, streaming only

Each export runs in a fresh subprocess that reports its own peak RSS (ru_maxrss) and wall time;
the reference runs from `git archive {commit}` of this repository. Printed: peak RSS against the
target (largest tensor + 1 GB), seconds, GB/s of weights written, and, for the
streaming export, the same figures on a checkpoint with half the layers (time linear in size).
Both exports' tensors are compared one by one (they must be equal).

`--layers_series` exports checkpoints of the configuration with each layer count (streaming only)
and fits seconds = fixed + bytes / rate over them: the rate is the export's GB/s once the fixed
start-up cost (imports, the config child) is paid; time is linear in size when every size's
seconds lie on that line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from anygpt_jax.cli.flags import ArgumentParser

REPO = pathlib.Path(__file__).resolve().parent.parent
GB = 1e9

_MEASURE = """
import json, resource, sys, time
sys.argv = ['anygpt-export'] + {argv!r}
t = time.perf_counter()
from tools import export_hf
rc = export_hf.main(sys.argv[1:])
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print('BENCH ' + json.dumps({{'rc': rc, 'seconds': time.perf_counter() - t, 'file': export_hf.__file__,
      'cpu_seconds': own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
      'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      'child_peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}}))
"""


def create_run(model_dir: str, config_name: str, layers: int | None, seed: int = 0) -> dict:
  """A run directory with random float32 parameters of `config_name` (AnyGPT-base's layout over
  LLaMA-2's 32000 pieces); returns sizes."""
  import jax
  import numpy as np

  from anygpt_jax import partitioning
  from anygpt_jax.model import Transformer, get_config
  from anygpt_jax.model.hf_convert import hf_tensor_plan
  from anygpt_jax.vocabulary.layout import VocabularyLayout
  from anygpt_jax.weights.run_directory import run_gin_text, save_params_as_run

  layout = VocabularyLayout(text_vocab_size=32000)
  overrides = {"num_layers": layers} if layers else {}
  config = get_config(config_name, **overrides).with_vocabulary(layout)
  abstract = partitioning.strip_boxes(partitioning.abstract_params(Transformer(config)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: (rng.standard_normal(a.shape, np.float32) * 0.02), abstract)
  sizes = [x.nbytes for x in jax.tree.leaves(params)]
  save_params_as_run(params, layout, model_dir, run_gin_text(config_name, overrides, layout, None))
  largest = max(int(np.prod(spec.shape)) * 4 for spec in hf_tensor_plan(config, layout.vocab_size))
  return {"params": config.num_params(), "bytes": sum(sizes), "largest_leaf_bytes": max(sizes),
          "largest_tensor_bytes": largest, "layers": config.num_layers}


def measure(argv: list[str], cwd: str, pythonpath: str) -> dict:
  env = dict(os.environ, PYTHONPATH=pythonpath, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _MEASURE.format(argv=argv)], cwd=cwd, env=env, capture_output=True,
                       text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith("BENCH ")]
  if out.returncode or not lines:
    raise RuntimeError(f"export failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  return json.loads(lines[-1][len("BENCH "):])


def weight_bytes(directory: str) -> int:
  index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
  return int(index["metadata"]["total_size"])


def compare_exports(a: str, b: str) -> int:
  """Tensor by tensor equality of two HF directories; returns the number of tensors."""
  import torch
  from safetensors import safe_open

  def handles(directory):
    index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))["weight_map"]
    files = {f: safe_open(os.path.join(directory, f), framework="pt") for f in set(index.values())}
    return index, files

  (index_a, files_a), (index_b, files_b) = handles(a), handles(b)
  if set(index_a) != set(index_b):
    raise AssertionError(f"the exports hold different tensors: {sorted(set(index_a) ^ set(index_b))[:5]}")
  for name in index_a:
    x, y = files_a[index_a[name]].get_tensor(name), files_b[index_b[name]].get_tensor(name)
    if x.dtype != y.dtype or not torch.equal(x, y):
      raise AssertionError(f"{name} differs between the exports")
  return len(index_a)


def create(work: pathlib.Path, name: str, config: str, layers: int | None) -> tuple[pathlib.Path, dict]:
  """A fresh random run directory `work/name` written by a subprocess; returns it and its sizes."""
  model_dir = work / name
  if model_dir.exists():
    shutil.rmtree(model_dir)
  cmd = [sys.executable, "-m", "tools.bench_export", f"--config={config}", f"--create_only={model_dir}"]
  if layers:
    cmd.append(f"--layers={layers}")
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = [l for l in out.stdout.splitlines() if l.startswith("BENCH ")]
  if out.returncode or not lines:
    raise RuntimeError(f"creating {model_dir} failed (exit status {out.returncode}):\n{out.stderr[-3000:]}")
  return model_dir, json.loads(lines[-1][len("BENCH "):])


def series(args, work: pathlib.Path, layer_counts: list[int]) -> int:
  """Streaming exports of checkpoints of several sizes; prints each as it is measured, then the
  fitted line."""
  import numpy as np

  print(f"{args.config}, export dtype {args.dtype}: streaming export against checkpoint size")
  print(f"{'layers':>6}{'GB fp32':>9}{'GB written':>11}{'wall s':>8}{'CPU s':>7}{'GB/s wall':>10}{'GB/s CPU':>9}"
        f"{'peak RSS GB':>12}{'target GB':>10}", flush=True)
  rows = []
  for layers in layer_counts:
    model_dir, sizes = create(work, f"run_{layers}", args.config, layers)
    out = work / f"hf_{layers}"
    shutil.rmtree(out, ignore_errors=True)
    r = measure([f"--model_dir={model_dir}", f"--output_dir={out}", f"--dtype={args.dtype}"], str(REPO), str(REPO))
    r["peak_rss_bytes"] = max(r["peak_rss_bytes"], r["child_peak_rss_bytes"])
    r = {**sizes, **r, "written": weight_bytes(str(out))}
    rows.append(r)
    shutil.rmtree(model_dir)
    shutil.rmtree(out)
    written = r["written"] / GB
    print(f"{r['layers']:>6}{r['bytes'] / GB:>9.2f}{written:>11.2f}{r['seconds']:>8.1f}{r['cpu_seconds']:>7.1f}"
          f"{written / r['seconds']:>10.3f}{written / r['cpu_seconds']:>9.3f}"
          f"{r['peak_rss_bytes'] / GB:>12.2f}{(r['largest_tensor_bytes'] + GB) / GB:>10.2f}", flush=True)
  read = np.array([r["bytes"] for r in rows], np.float64) / GB
  written_per_read = rows[-1]["written"] / rows[-1]["bytes"]  # 0.5 for a bfloat16 export
  # CPU seconds (the export process and its config child) are what a shared machine's load
  # disturbs least; wall seconds are printed beside them.
  for key, label in (("seconds", "wall"), ("cpu_seconds", "CPU")):
    seconds = np.array([r[key] for r in rows])
    slope, fixed = np.polyfit(read, seconds, 1)
    print(f"fit ({label}): seconds = {fixed:.1f} + {slope:.1f} x GB read (fp32): beyond the fixed {fixed:.1f} s, "
          f"{1 / slope:.3f} GB/s read, {written_per_read / slope:.3f} GB/s written; largest residual "
          f"{np.max(np.abs(fixed + slope * read - seconds)):.1f} s")
  return 0 if all(r["peak_rss_bytes"] <= r["largest_tensor_bytes"] + GB for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="bench_export", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="1b")
  parser.add_argument("--layers", type=int, default=None, help="override the config's layer count")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--reference_commit", default="bb28fbd", help="the commit whose export is the reference")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--layers_series", default=None, help="comma-separated layer counts: time against size")
  parser.add_argument("--create_only", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.create_only:  # run in a subprocess: the parameters never sit in the benchmark's own memory
    print("BENCH " + json.dumps(create_run(args.create_only, args.config, args.layers)))
    return 0

  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_export_"))
  work.mkdir(parents=True, exist_ok=True)
  if args.layers_series:
    return series(args, work, [int(n) for n in args.layers_series.split(",")])
  reference = work / "reference_tree"
  if not reference.exists():
    reference.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.reference_commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(reference)], input=archive, check=True)

  full_dir, full = create(work, "run_full", args.config, args.layers)
  results = {}
  for name, cwd, path in (("streaming", REPO, str(REPO)), ("reference", reference, str(reference))):
    out = work / f"hf_{name}"
    shutil.rmtree(out, ignore_errors=True)
    results[name] = measure([f"--model_dir={full_dir}", f"--output_dir={out}", f"--dtype={args.dtype}"],
                            str(cwd), path)
    results[name]["written"] = weight_bytes(str(out))
    if not results[name]["file"].startswith(str(cwd)):
      raise RuntimeError(f"{name} ran {results[name]['file']}, not the code under {cwd}")
  half_dir, half = create(work, "run_half", args.config, max(1, full["layers"] // 2))
  out = work / "hf_half"
  shutil.rmtree(out, ignore_errors=True)
  results["streaming_half"] = measure([f"--model_dir={half_dir}", f"--output_dir={out}", f"--dtype={args.dtype}"],
                                      str(REPO), str(REPO))
  results["streaming_half"]["written"] = weight_bytes(str(out))
  # Compared last: the comparison maps both exports into this process, and a child forked from a big
  # process starts with the parent's peak RSS as its own (Linux carries it across exec).
  tensors = compare_exports(str(work / "hf_streaming"), str(work / "hf_reference"))

  target = full["largest_tensor_bytes"] + GB
  print(f"checkpoint: {args.config}, {full['layers']} layers, {full['params'] / 1e9:.2f}B parameters, "
        f"{full['bytes'] / GB:.2f} GB float32; largest tensor {full['largest_tensor_bytes'] / GB:.2f} GB "
        f"(float32), largest stored (scanned) parameter {full['largest_leaf_bytes'] / GB:.2f} GB; "
        f"export dtype {args.dtype}; {tensors} tensors equal in both exports")
  print(f"{'export':<28}{'peak RSS GB':>12}{'x model':>9}{'seconds':>9}{'GB/s':>7}")
  for name, label in (("streaming", "streaming (this commit)"), ("reference", f"reference ({args.reference_commit})"),
                      ("streaming_half", f"streaming, {half['layers']} layers")):
    r = results[name]
    r["peak_rss_bytes"] = max(r["peak_rss_bytes"], r["child_peak_rss_bytes"])  # the config child counts too
    model_bytes = full["bytes"] if name != "streaming_half" else half["bytes"]
    print(f"{label:<28}{r['peak_rss_bytes'] / GB:>12.2f}{r['peak_rss_bytes'] / model_bytes:>9.2f}"
          f"{r['seconds']:>9.1f}{r['written'] / GB / r['seconds']:>7.2f}")
  ratio = results["reference"]["peak_rss_bytes"] / results["streaming"]["peak_rss_bytes"]
  met = results["streaming"]["peak_rss_bytes"] <= target
  print(f"peak RSS: streaming {ratio:.1f}x lower than the reference; target (largest tensor + 1 GB = "
        f"{target / GB:.2f} GB) {'met' if met else 'NOT met'}")
  return 0 if met else 1


if __name__ == "__main__":
  sys.exit(main())
