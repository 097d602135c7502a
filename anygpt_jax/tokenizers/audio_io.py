"""Reading and checking audio for the tokenizers: mono float32 at the model's rate, or a reasoned rejection.

soundfile does the I/O (torchaudio.load needs torchcodec, which is not installed); resampling
uses torchaudio's pure-Python `functional.resample`.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# Peak amplitude below which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4


class MediaError(ValueError):
  """A media file that cannot be tokenized; `reason` is the short key counted in the stats."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


def load_audio(path: str, sample_rate: int, max_seconds: float | None = None, strict_mono: bool = False,
               max_channels: int = 2) -> np.ndarray:
  """Reads `path` as mono float32 at `sample_rate`.

  Stereo is averaged to mono unless `strict_mono`; more than `max_channels` channels, an
  empty or silent clip, a clip longer than `max_seconds` (None: no limit), a missing or
  undecodable file raise MediaError with the reason as the stats key.

  Returns:
    float32 array of shape (samples,).
  """
  if not os.path.isfile(path):
    raise MediaError("missing_file", path)
  try:
    info = sf.info(path)
  except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError types
    raise MediaError("corrupt_media", f"{path}: {e}") from None
  if info.frames == 0:
    raise MediaError("empty_audio", path)
  if _wav_data_truncated(path):
    raise MediaError("corrupt_media", f"{path}: truncated (data chunk shorter than its header says)")
  if info.channels > max_channels or (strict_mono and info.channels != 1):
    raise MediaError("bad_channels", f"{path}: {info.channels} channels")
  if max_seconds is not None and info.frames / info.samplerate > max_seconds:
    raise MediaError("too_long", f"{path}: {info.frames / info.samplerate:.1f} s > {max_seconds} s")
  try:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
  except Exception as e:
    raise MediaError("corrupt_media", f"{path}: {e}") from None
  # A truncated file can report more frames in its header than it holds.
  if data.shape[0] == 0:
    raise MediaError("empty_audio", path)
  if data.shape[0] < info.frames:
    raise MediaError("corrupt_media", f"{path}: truncated ({data.shape[0]} of {info.frames} frames)")
  wave = data.mean(axis=1)
  if not np.all(np.isfinite(wave)):
    raise MediaError("corrupt_media", f"{path}: non-finite samples")
  if float(np.abs(wave).max()) < SILENCE_PEAK:
    raise MediaError("silent_audio", path)
  return resample(wave, rate, sample_rate)


def _wav_data_truncated(path: str) -> bool:
  """True for a RIFF/WAVE file whose data chunk is shorter than its header declares.

  libsndfile silently clamps such files to the bytes present, so a cut-off download would
  otherwise pass as a shorter clip.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return False
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk_id, chunk_size = f.read(4), int.from_bytes(f.read(4), "little")
      if chunk_id == b"data":
        return pos + 8 + chunk_size > size
      pos += 8 + chunk_size + (chunk_size & 1)
  return False


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """float32 (samples,) from one rate to another (band-limited sinc, torchaudio)."""
  if from_rate == to_rate:
    return np.ascontiguousarray(wave, dtype=np.float32)
  out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), from_rate, to_rate)
  return out.numpy()


def write_wav(path: str, wave: np.ndarray, sample_rate: int) -> None:
  """Writes float32 (samples,) as 16-bit PCM wav."""
  sf.write(path, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
