"""Reading and checking audio for the tokenizers: mono float32 at the model's rate, or a reasoned rejection.

soundfile does the I/O (torchaudio.load needs torchcodec, which is not installed); resampling
uses torchaudio's pure-Python `functional.resample`.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

from anygpt_jax.tokenizers.media import MediaError, MediaRef  # noqa: F401 (MediaError is re-exported)

# Peak amplitude below which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4
# soundfile's errors for a file it cannot decode (LibsndfileError and friends derive from
# SoundFileError); OSError/EOFError for a file that cannot be read. Anything else is a bug.
DECODE_ERRORS = (sf.SoundFileError, OSError, EOFError)


def load_audio(source: str | MediaRef, sample_rate: int, max_seconds: float | None = None,
               strict_mono: bool = False, max_channels: int = 2) -> np.ndarray:
  """Reads a file, a tar member or a time span of a file as mono float32 at `sample_rate`.

  One layer for every container libsndfile reads: wav, flac, ogg/vorbis, ogg/opus and mp3.
  Stereo is averaged to mono unless `strict_mono`. Raises MediaError with these reasons:
  missing_file, undecodable_audio (the decoder's message in the detail), truncated_audio
  (fewer frames than the header declares), empty_audio, bad_channels (more than
  `max_channels`, or not mono with `strict_mono`), too_long (over `max_seconds`; None: no
  limit), segment_out_of_range (a span outside the file), non_finite_audio, silent_audio.

  Returns:
    float32 array of shape (samples,).
  """
  ref = source if isinstance(source, MediaRef) else MediaRef(str(source))
  with ref.open() as f:
    try:
      snd = sf.SoundFile(f)
    except DECODE_ERRORS as e:
      raise MediaError("undecodable_audio", f"{ref.name}: {e}") from None
    with snd:
      rate, frames, channels = snd.samplerate, snd.frames, snd.channels
      if frames == 0:
        raise MediaError("empty_audio", ref.name)
      if snd.format == "WAV" and _wav_data_truncated(f):
        raise MediaError("truncated_audio", f"{ref.name}: the data chunk is shorter than its header says")
      if channels > max_channels or (strict_mono and channels != 1):
        raise MediaError("bad_channels", f"{ref.name}: {channels} channels")
      first, count = _span_frames(ref, rate, frames)
      if max_seconds is not None and count / rate > max_seconds:
        raise MediaError("too_long", f"{ref.name}: {count / rate:.1f} s > {max_seconds} s")
      try:
        if first:
          snd.seek(first)
        data = snd.read(count, dtype="float32", always_2d=True)
      except DECODE_ERRORS as e:
        raise MediaError("undecodable_audio", f"{ref.name}: {e}") from None
  # A cut-off file can report more frames in its header than it holds.
  if data.shape[0] == 0:
    raise MediaError("empty_audio", ref.name)
  if data.shape[0] < count:
    raise MediaError("truncated_audio", f"{ref.name}: {data.shape[0]} of {count} frames")
  wave = data.mean(axis=1)
  if not np.all(np.isfinite(wave)):
    raise MediaError("non_finite_audio", f"{ref.name}: NaN or infinite samples")
  if float(np.abs(wave).max()) < SILENCE_PEAK:
    raise MediaError("silent_audio", ref.name)
  return resample(wave, rate, sample_rate)


# A span may end up to this far past the file's end (segment times are rounded to 10 ms).
SPAN_TOLERANCE_S = 0.05


def _span_frames(ref: MediaRef, rate: int, frames: int) -> tuple[int, int]:
  """(first frame, frame count) of `ref`'s span in a file of `frames` frames at `rate`."""
  if ref.start is None and ref.end is None:
    return 0, frames
  start = ref.start or 0.0
  end = frames / rate if ref.end is None else ref.end
  duration = frames / rate
  if start < 0 or end <= start or start >= duration or end > duration + SPAN_TOLERANCE_S:
    raise MediaError("segment_out_of_range", f"{ref.name}: the file lasts {duration:.3f} s")
  first = int(round(start * rate))
  return first, min(int(round(end * rate)), frames) - first


def _wav_data_truncated(f) -> bool:
  """True for a RIFF/WAVE stream whose data chunk is shorter than its header declares.

  libsndfile silently clamps such files to the bytes present, so a cut-off download would
  otherwise pass as a shorter clip. `f` is a seekable binary file; its position is restored.
  """
  pos0 = f.tell()
  try:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
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
  finally:
    f.seek(pos0)


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """float32 (samples,) from one rate to another (band-limited sinc, torchaudio)."""
  if from_rate == to_rate:
    return np.ascontiguousarray(wave, dtype=np.float32)
  # Imported here: a job over AnyGPT's code strings reads no audio and should not pay torch's import.
  import torch
  import torchaudio.functional as AF
  out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), from_rate, to_rate)
  return out.numpy()


def write_wav(path: str, wave: np.ndarray, sample_rate: int) -> None:
  """Writes float32 (samples,) as 16-bit PCM wav."""
  sf.write(path, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
