"""Training metrics: TensorBoard event files, a one-line console summary, throughput and MFU."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import gin
import jax

from anygpt_jax import filesystem
from anygpt_jax.hardware import PEAK_FLOPS_BY_DEVICE_KIND  # the one peak-FLOP/s table
from anygpt_jax.vocabulary.layout import CONTENT_KINDS


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
  """Writes scalars to TensorBoard (`{log_dir}`) and a JSON line per step; only process 0 writes.

  `log_dir` may be a URL (`gs://...`): TensorBoard events and `metrics.jsonl` are then written
  in a local staging directory and copied there through epath (object stores have no append)
  at most every `sync_every_s` seconds and on `close()`. A resumed run appends to the
  `metrics.jsonl` already there.
  """

  def __init__(self, log_dir: str | os.PathLike, sync_every_s: float = 30.0):
    self.log_dir = filesystem.resolve(log_dir)
    self.active = jax.process_index() == 0
    self.sync_every_s = sync_every_s
    self._writer = None
    self._jsonl = None
    self._staging = None
    self._last_sync = time.monotonic()
    if self.active:
      import tensorflow as tf  # imported here: the summary writer is the only TF use of training.
      self._staging = filesystem.LocalStaging(self.log_dir, prefix="anygpt-metrics-")
      jsonl = os.path.join(self._staging.local, "metrics.jsonl")
      if self._staging.remote and (self.log_dir / "metrics.jsonl").exists():
        with open(jsonl, "wb") as f:  # a resumed run goes on appending to the same file
          f.write((self.log_dir / "metrics.jsonl").read_bytes())
      self._tf = tf
      self._writer = tf.summary.create_file_writer(self._staging.local)
      self._jsonl = open(jsonl, "a")

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

  def write_media(self, step: int, texts: Mapping[str, str] | None = None, images: Mapping[str, Any] | None = None,
                  audio: Mapping[str, tuple[Any, int]] | None = None) -> None:
    """Text (markdown), image (uint8 [H, W, 3]) and audio ((float32 [T] in [-1, 1], sample rate))
    summaries, one per name (generated samples: `anygpt_jax.training.samples`)."""
    if not self.active:
      return
    import numpy as np
    with self._writer.as_default(step=step):
      for name, text in (texts or {}).items():
        self._tf.summary.text(name, text)
      for name, image in (images or {}).items():
        self._tf.summary.image(name, np.asarray(image, np.uint8)[None])
      for name, (wave, rate) in (audio or {}).items():
        wave = np.clip(np.asarray(wave, np.float32), -1.0, 1.0)
        self._tf.summary.audio(name, wave[None, :, None], sample_rate=rate)

  def flush(self, sync: bool = False) -> None:
    """Flushes the files; copies them to a remote `log_dir` when `sync` or it is time to."""
    if not self.active:
      return
    self._writer.flush()
    self._jsonl.flush()
    if self._staging.remote and (sync or time.monotonic() - self._last_sync >= self.sync_every_s):
      self._staging.sync()
      self._last_sync = time.monotonic()

  def close(self) -> None:
    if self.active:
      self._writer.close()
      self._jsonl.close()
      self._staging.close()
      self.active = False


class Eta:
  """Estimated time to the last step from the mean step time of the last `window` steps."""

  def __init__(self, last_step: int, window: int = 20):
    self.last_step = last_step
    self.window = window
    self._times: list[float] = []

  def update(self, step: int) -> float | None:
    """Call once per completed step; returns seconds left (None until two steps were seen)."""
    self._times = (self._times + [time.perf_counter()])[-(self.window + 1):]
    if len(self._times) < 2:
      return None
    per_step = (self._times[-1] - self._times[0]) / (len(self._times) - 1)
    return max(self.last_step - step, 0) * per_step


def format_duration(seconds: float) -> str:
  """'1d 02:03:04', '02:03:04' or '03:04' (minutes:seconds)."""
  seconds = int(round(seconds))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  clock = f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours or days else f"{minutes:02d}:{secs:02d}"
  return f"{days}d {clock}" if days else clock


def console_line(step: int, scalars: Mapping[str, float], modalities=CONTENT_KINDS) -> str:
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
  eta = scalars.get("perf/eta_s")
  if eta is not None and math.isfinite(eta):
    parts.append(f"eta {format_duration(eta)}")
  return " | ".join(p for p in parts if p)


def eval_console_lines(step: int, scalars: Mapping[str, float],
                       modalities=CONTENT_KINDS) -> list[str]:
  """One line per evaluated task (corpus or mixture): loss, perplexity, accuracy, per-modality loss.

  `scalars` holds `eval/{task}/loss`, `eval/{task}/perplexity`, ... (what `Evaluator.evaluate`
  returns); tasks appear in the order of their first key.
  """
  names = [k[len("eval/"):-len("/loss")] for k in scalars if k.startswith("eval/") and k.endswith("/loss")]
  # 'eval/{task}/{modality}/loss' is a modality's loss, not a task named '{task}/{modality}'.
  tasks = list(dict.fromkeys(n for n in names if n.rpartition("/")[2] not in modalities or "/" not in n))
  lines = []
  for task in tasks:
    def get(name):
      value = scalars.get(f"eval/{task}/{name}")
      return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
    parts = [f"eval step {step}", task, f"loss {get('loss'):.4f}"]
    if get("perplexity") is not None:
      parts.append(f"ppl {get('perplexity'):.3g}")
    if get("accuracy") is not None:
      parts.append(f"acc {get('accuracy'):.3f}")
    parts += [f"{m} {get(f'{m}/loss'):.3f}" for m in modalities if get(f"{m}/loss") is not None]
    lines.append(" | ".join(parts))
  return lines
