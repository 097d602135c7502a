"""Per-chip memory and estimated MFU of the 7B pretraining step on v5p-64, variants side by side.

  python -m tools.bench_compile                         # every variant (slow: 3 compiles each)
  python -m tools.bench_compile --variants shipped,xla   # some of them
  python -m tools.bench_compile --calibrate              # MaxText's published 32B v5p-128 run, ours

Each variant is the shipped run (gin/runs/pretrain_llama2_7b.gin + gin/mesh/tpu_v5p_pod.gin,
480 x 4500, 32 chips) with a few gin bindings replaced: attention (xla vs splash), loss (full
vs tiled), remat policy and microbatches. Memory comes from the real (scanned) step's compile,
the step time from XLA's cost model extrapolated over layers and microbatches
(`anygpt_jax.training.aot.estimate_step_cost`). A row is printed as soon as it is known and
every report is written to --output_dir/<variant>.json.

Calibration (--calibrate): the same estimate for a configuration whose *measured* MFU MaxText
publishes (MaxText/configs/v5p/32b.sh: 32 layers x 8192, 64 heads, MLP 28672, length 2048,
per-device batch 7 on v5p-128 = 64 chips, fsdp 16 x tensor 4, flash attention, remat
'minimal'; published 67.8 % MFU in MaxText's README, 71.5 % in configs/v5p/README.md), built
in our model (our vocabulary; remat 'dots_with_no_batch_dims', the closest of our policies).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from anygpt_jax.cli.flags import ArgumentParser

from . import compile as compile_cli

BASE_FILES = ["gin/runs/pretrain_llama2_7b.gin", "gin/mesh/tpu_v5p_pod.gin"]
TOPOLOGY = "v5p:4x4x2"

# name -> gin bindings on top of the shipped files (an empty list: the shipped configuration).
VARIANTS = {
    "shipped": [],
    "xla": ["model_config.overrides = {'attention': 'xla', 'remat_policy': 'none'}"],
    "full_loss": ["loss_tiling.chunk_length = 0"],
    "remat_full": ["model_config.overrides = {'attention': 'splash', 'remat_policy': 'full'}"],
    "remat_dots": ["model_config.overrides = {'attention': 'splash', 'remat_policy': 'dots_with_no_batch_dims'}"],
    # Fewer, larger microbatches (3 rows per chip): the weights are gathered a third as often.
    "dots_5mb": ["model_config.overrides = {'attention': 'splash', 'remat_policy': 'dots_with_no_batch_dims'}",
                 "train.num_microbatches = 5"],
    # What the issue measured: the run as it was shipped before (xla, full remat, full logits, 1 microbatch).
    "as_issued": ["model_config.overrides = {'attention': 'xla', 'remat_policy': 'full'}",
                  "loss_tiling.chunk_length = 0", "train.num_microbatches = 1"],
}

CALIBRATION_BINDINGS = [
    "model_config.name = 'llama2-7b'",
    "model_config.overrides = {'hidden_size': 8192, 'intermediate_size': 28672, 'num_layers': 32, "
    "'num_heads': 64, 'num_kv_heads': 64, 'attention': 'splash', 'remat_policy': 'dots_with_no_batch_dims'}",
    "BATCH_SIZE = 448", "TASK_FEATURE_LENGTHS = {'targets': 2048}", "train.num_microbatches = 1",
    "train.mesh_axes = {'data': 1, 'fsdp': 16, 'tensor': 4}",
]
CALIBRATION_TOPOLOGY = "v5p:4x4x4"
CALIBRATION_PUBLISHED_MFU = (0.6776, 0.7147)


def _row(name: str, r: dict) -> str:
  gib = lambda b: b / 2 ** 30
  m = r["memory"]
  m.setdefault("batch_bytes", 0)
  mfu = f"{100 * r['estimated_mfu']:5.1f} %" if "estimated_mfu" in r else "   -  "
  step = f"{r['estimated_step_seconds']:6.2f}" if "estimated_step_seconds" in r else "   -  "
  return (f"{name:12s} {r['model']['attention']:7s} {r['loss_chunk_length'] or 'full':>5} "
          f"{r['model']['remat_policy']:24s} {r['num_microbatches']:3d} {gib(m['state_bytes']):7.1f} "
          f"{gib(m['temp_bytes']):7.1f} {gib(m['total_bytes']):7.1f} {100 * r['hbm_headroom']:7.1f} % {step} {mfu}")


HEADER = (f"{'variant':12s} {'attn':7s} {'loss':>5} {'remat':24s} {'M':>3s} {'state':>7s} {'temps':>7s} "
          f"{'total':>7s} {'headroom':>9s} {'step s':>6s} {'MFU':>7s}   (GiB per chip)")


def run_variant(name: str, bindings: list[str], topology: str, output_dir: str, cost: bool,
                files: list[str] = BASE_FILES) -> dict:
  import gin
  gin.clear_config()
  compile_cli.parse_gin_for_compile(files, bindings)
  spec = compile_cli.spec_from_gin()
  started = time.perf_counter()
  report = compile_cli.compile_run(spec, topology, os.path.join(output_dir, name), estimate_cost=cost)
  report["compile_seconds"] = time.perf_counter() - started
  with open(os.path.join(output_dir, f"{name}.json"), "w") as f:
    json.dump(report, f, indent=1, default=float)
  return report


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--output_dir", default="/tmp/anygpt_bench_compile")
  parser.add_argument("--no_cost", action="store_true", help="memory only (one compile per variant)")
  parser.add_argument("--calibrate", action="store_true")
  args = parser.parse_args(argv)
  os.makedirs(args.output_dir, exist_ok=True)
  if args.calibrate:
    from anygpt_jax.training import aot
    import gin
    gin.clear_config()
    compile_cli.parse_gin_for_compile(BASE_FILES, CALIBRATION_BINDINGS)
    spec = compile_cli.spec_from_gin()
    _, devices = aot.topology_devices(CALIBRATION_TOPOLOGY)
    cost = aot.estimate_step_cost(spec, devices, aot.peak_flops_per_device(CALIBRATION_TOPOLOGY, devices))
    peak = aot.peak_flops_per_device(CALIBRATION_TOPOLOGY, devices)
    model_flops = aot.model_flops_per_step(spec) / len(devices)
    required = aot.required_flops_per_device(spec, len(devices))
    seconds = aot.estimated_step_seconds(cost, required, peak)
    mfu = model_flops / (seconds * peak)
    result = {"estimated_mfu": mfu, "estimated_step_seconds": seconds,
              "xla_mfu": model_flops / (cost["optimal_seconds"] * peak), "counted_flops_fraction": cost["flops"] / required,
              "published_mfu": CALIBRATION_PUBLISHED_MFU, "cost": cost, "params": spec.config.num_params()}
    with open(os.path.join(args.output_dir, "calibration.json"), "w") as f:
      json.dump(result, f, indent=1, default=float)
    print(f"MaxText 32B on v5p-128 (448 x 2048, fsdp 16 x tensor 4): our estimate {100 * mfu:.1f} % MFU, "
          f"step {seconds:.2f} s (XLA alone: {100 * result['xla_mfu']:.1f} %); MaxText measured {100 * CALIBRATION_PUBLISHED_MFU[0]:.1f} % "
          f"(README) / {100 * CALIBRATION_PUBLISHED_MFU[1]:.1f} % (configs/v5p/README.md)", flush=True)
    return 0
  print(f"LLaMA-2 7B, AnyGPT vocabulary, 480 x 4500 on {TOPOLOGY} (32 chips, 95 GiB HBM each)", flush=True)
  print(HEADER, flush=True)
  for name in args.variants.split(","):
    report = run_variant(name, VARIANTS[name], TOPOLOGY, args.output_dir, cost=not args.no_cost)
    print(_row(name, report) + f"   [{report['compile_seconds']:.0f} s to compile]", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
