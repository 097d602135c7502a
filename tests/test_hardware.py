"""The one table of accelerator peaks and HBM, and the lookups by JAX device kind and topology name."""

import math

import pytest

from anygpt_jax import hardware
from anygpt_jax.training import metrics


@pytest.mark.parametrize("kind, flops", [("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
                                         ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12), ("cpu", 1.7e11)])
def test_peak_by_device_kind_takes_the_longest_prefix(kind, flops):
  # 'TPU v5' (v5p) and 'TPU v5 lite' (v5e) share a prefix: the longer one must win for v5e.
  assert hardware.peak_flops_of_device_kind(kind) == flops
  assert metrics.PEAK_FLOPS_BY_DEVICE_KIND is hardware.PEAK_FLOPS_BY_DEVICE_KIND


def test_topology_names_give_the_chip():
  assert hardware.tpu_chip("v5p:4x4x2").hbm_bytes == 95 * hardware.GiB
  assert hardware.tpu_chip("v5e:2x2").peak_flops == 197e12
  assert math.isnan(hardware.peak_flops_of_device_kind("TPU v9"))
  with pytest.raises(ValueError, match="known: v4, v5e, v5p, v6e"):
    hardware.tpu_chip("v3:2x2")
