"""Accelerator facts: one table of per-chip HBM and dense bf16 peak FLOP/s.

The single source of the peak FLOP/s that MFU is computed against (training metrics, the model
benchmark, the ahead-of-time compile report). Figures are the vendors' published per-chip
numbers: TPU v4 275 TFLOP/s and 32 GiB HBM, v5e 197 / 16, v5p 459 / 95, v6e (Trillium) 918 / 32;
NVIDIA dense bf16 (no sparsity) A100 312, H100/H200 989 TFLOP/s.
"""

from __future__ import annotations

import dataclasses
import math

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class TpuChip:
  """One TPU generation: the `--topology` prefix, JAX's device_kind, HBM and bf16 peak per chip."""

  name: str
  device_kind: str
  hbm_bytes: int
  peak_flops: float


TPU_CHIPS = {chip.name: chip for chip in (
    TpuChip("v4", "TPU v4", 32 * GiB, 275e12),
    TpuChip("v5e", "TPU v5 lite", 16 * GiB, 197e12),
    TpuChip("v5p", "TPU v5", 95 * GiB, 459e12),
    TpuChip("v6e", "TPU v6 lite", 32 * GiB, 918e12),
)}

# Keyed by the model name as it appears in an NVIDIA device_kind ("NVIDIA H100 80GB HBM3").
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

# The fp32 matmul peak measured with jax on one 2-core machine of this project's kind, per
# *process* (forced host devices share the same cores).
CPU_PEAK_FLOPS = 1.7e11

# Lower-case device_kind prefix -> peak FLOP/s, longest prefix first so that 'tpu v5 lite' (v5e)
# is tried before 'tpu v5' (v5p).
PEAK_FLOPS_BY_DEVICE_KIND = dict(sorted(
    [(chip.device_kind.lower(), chip.peak_flops) for chip in TPU_CHIPS.values()]
    + [(f"nvidia {name.lower()}", flops) for name, flops in GPU_PEAK_FLOPS.items()]
    + [("cpu", CPU_PEAK_FLOPS)],
    key=lambda item: -len(item[0])))


def peak_flops_of_device_kind(device_kind: str) -> float:
  """Peak FLOP/s of one device of `device_kind` (JAX's string); NaN when unknown."""
  kind = device_kind.lower()
  return next((flops for prefix, flops in PEAK_FLOPS_BY_DEVICE_KIND.items() if kind.startswith(prefix)), math.nan)


def tpu_chip(topology: str) -> TpuChip:
  """The chip of a topology name such as 'v5p:4x4x2'; ValueError naming the known ones."""
  name = topology.split(":", 1)[0].lower()
  if name not in TPU_CHIPS:
    raise ValueError(f"topology {topology!r}: unknown TPU generation {name!r}; known: {', '.join(TPU_CHIPS)} "
                     "(e.g. v5p:4x4x2, v5e:4x4, v6e:8x8, v4:2x2x2)")
  return TPU_CHIPS[name]
