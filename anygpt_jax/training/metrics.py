"""Training metrics: TensorBoard event files, a one-line console summary, throughput and MFU."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import gin
import jax

from anygpt_jax.hardware import PEAK_FLOPS_BY_DEVICE_KIND  # the one peak-FLOP/s table


@gin.configurable
def peak_flops(per_device: float | None = None) -> float:
  """Peak FLOP/s of all devices of the run: `per_device` if given, else the table above.

  Returns NaN (MFU then shows as nan) for a device kind the table does not know.
  """
  devices = jax.devices()
  kind = devices[0].device_kind.lower()
  if per_device is not None:
    return per_device * len(devices)
  if devices[0].platform == "cpu":
    return PEAK_FLOPS_BY_DEVICE_KIND["cpu"] * jax.process_count()
  for name, flops in PEAK_FLOPS_BY_DEVICE_KIND.items():
    if kind.startswith(name):
      return flops * len(devices)
  return math.nan


class Throughput:
  """Tokens per second and model FLOPs utilisation between two calls."""

  def __init__(self, flops_per_token: float, peak_flops_total: float):
    self.flops_per_token = flops_per_token
    self.peak_flops_total = peak_flops_total
    self._last = None

  def update(self, tokens: float) -> dict[str, float]:
    """Call once per step with that step's tokens; the first call only starts the clock."""
    now = time.perf_counter()
    last, self._last = self._last, now
    if last is None:
      return {}
    seconds = max(now - last, 1e-9)
    tokens_per_second = tokens / seconds
    return {
        "step_time_s": seconds,
        "tokens_per_second": tokens_per_second,
        "mfu": tokens_per_second * self.flops_per_token / self.peak_flops_total,
    }


class MetricsWriter:
  """Writes scalars to TensorBoard (`{log_dir}`) and a JSON line per step; only process 0 writes."""

  def __init__(self, log_dir: str):
    self.log_dir = log_dir
    self.active = jax.process_index() == 0
    self._writer = None
    self._jsonl = None
    if self.active:
      import tensorflow as tf  # imported here: the summary writer is the only TF use of training.
      os.makedirs(log_dir, exist_ok=True)
      self._tf = tf
      self._writer = tf.summary.create_file_writer(log_dir)
      self._jsonl = open(os.path.join(log_dir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    with self._writer.as_default(step=step):
      for name, value in scalars.items():
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
          self._tf.summary.scalar(name, value)
    clean = {k: (None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
             for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")

  def flush(self) -> None:
    if self.active:
      self._writer.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.active:
      self._writer.close()
      self._jsonl.close()
      self.active = False


def console_line(step: int, scalars: Mapping[str, float], modalities=("text", "image", "speech", "music")) -> str:
  """A concise summary: step, loss, per-modality losses, lr, grad norm, throughput."""

  def fmt(name, key, spec=".3f"):
    value = scalars.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return None
    return f"{name} {value:{spec}}"

  parts = [f"step {step}", fmt("loss", "train/loss", ".4f"), fmt("acc", "train/accuracy")]
  parts += [fmt(m, f"train/{m}/loss") for m in modalities]
  parts += [fmt("lr", "train/learning_rate", ".2e"), fmt("gnorm", "train/grad_norm", ".3f"),
            fmt("tok/s", "perf/tokens_per_second", ".0f"), fmt("mfu", "perf/mfu", ".2%")]
  if scalars.get("train/skipped_steps"):
    parts.append(f"skipped {int(scalars['train/skipped_steps'])}")
  return " | ".join(p for p in parts if p)
