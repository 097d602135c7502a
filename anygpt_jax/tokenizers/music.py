"""Music tokenizer and de-tokenizer: Encodec 32 kHz (4 codebooks x 2048 at 50 Hz), frame-wise flattening.

Layout (`facebook/encodec_32khz`): a directory with `config.json` (transformers `EncodecConfig`),
`preprocessor_config.json` (`EncodecFeatureExtractor`) and `model.safetensors`.

Flattening (AnyGPT): token `t * 4 + l` = `code[l][t] + 2048 * l`, so a 5 s clip (250 frames)
is 1000 tokens in [0, 8192).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from anygpt_jax.vocabulary.layout import modality_named

DEFAULT_CLIP_SECONDS = 5.0
MUSIC = modality_named("music")  # the vocabulary's music codes: 4 codebooks x 2048


def flatten_codes(codes: np.ndarray, codebook_size: int = MUSIC.codebook_size) -> np.ndarray:
  """int (num_codebooks, frames) -> int64 (frames * num_codebooks,), frame-major with offsets."""
  codes = np.asarray(codes, dtype=np.int64)
  if codes.ndim != 2:
    raise ValueError(f"codes must be (num_codebooks, frames), got shape {codes.shape}")
  if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
    raise ValueError(f"codes outside [0, {codebook_size})")
  offsets = np.arange(codes.shape[0], dtype=np.int64)[:, None] * codebook_size
  return (codes + offsets).T.reshape(-1)


def unflatten_codes(tokens: np.ndarray, num_codebooks: int = MUSIC.codebooks,
                    codebook_size: int = MUSIC.codebook_size) -> np.ndarray:
  """Inverse of `flatten_codes`: int (frames * num_codebooks,) -> int64 (num_codebooks, frames).

  Raises ValueError when the length is not a whole number of frames or a token sits in
  another codebook's range than its position says.
  """
  tokens = np.asarray(tokens, dtype=np.int64)
  if tokens.ndim != 1 or tokens.size % num_codebooks:
    raise ValueError(f"{tokens.size} tokens is not a whole number of {num_codebooks}-codebook frames")
  frames = tokens.reshape(-1, num_codebooks).T
  level = frames // codebook_size
  if not np.all(level == np.arange(num_codebooks)[:, None]):
    raise ValueError("a music token sits in the wrong codebook range for its position")
  return frames % codebook_size


class EncodecMusicWorker:
  """Encodec 32 kHz from a local `facebook/encodec_32khz`-style directory (no JAX).

  Attributes:
    sample_rate: 32000 for the released model.
    hop: samples per frame (640 -> 50 Hz).
    num_codebooks, codebook_size: 4 and 2048 for the released model.
  """

  def __init__(self, model_dir: str, device: str = "cpu", clip_seconds: float = DEFAULT_CLIP_SECONDS):
    from transformers import EncodecFeatureExtractor, EncodecModel
    self.model = EncodecModel.from_pretrained(model_dir).eval().to(device)
    self.feature_extractor = EncodecFeatureExtractor.from_pretrained(model_dir)
    cfg = self.model.config
    self.device = device
    self.sample_rate = int(cfg.sampling_rate)
    if self.feature_extractor.sampling_rate != self.sample_rate:
      raise ValueError(f"{model_dir}: preprocessor rate {self.feature_extractor.sampling_rate} != model rate "
                       f"{self.sample_rate}")
    self.hop = int(np.prod(cfg.upsampling_ratios))
    self.codebook_size = int(cfg.codebook_size)
    self.bandwidth = float(cfg.target_bandwidths[-1])
    self.num_codebooks = int(self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
    self.clip_seconds = clip_seconds

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop

  def num_frames(self, num_samples: int) -> int:
    return math.ceil(num_samples / self.hop)

  def clip(self, wave: np.ndarray) -> np.ndarray:
    """The first `clip_seconds` of a clip (AnyGPT trains on fixed-length music clips)."""
    if self.clip_seconds is None:
      return wave
    return wave[:int(round(self.clip_seconds * self.sample_rate))]

  @torch.no_grad()
  def encode_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
    """Flattened codes per clip (already clipped to `clip_seconds` by the caller or not).

    Args:
      waves: float32 (samples,) mono arrays at `sample_rate`.

    Returns:
      One int64 array per clip of shape (num_codebooks * ceil(samples / hop),), values in
      [0, num_codebooks * codebook_size). Frames past a clip's own length (those of the batch's
      zero padding) are cut off; a clip shorter than the batch's longest is still encoded padded,
      so its last frames, whose receptive field reaches into the padding, can differ from the
      codes of the clip encoded alone (Encodec's convolutions are not masked). Callers batch
      length-sorted clips to keep that padding small.
    """
    inputs = self.feature_extractor(raw_audio=list(waves), sampling_rate=self.sample_rate, padding="longest",
                                    return_tensors="pt")
    out = self.model.encode(inputs["input_values"].to(self.device), inputs["padding_mask"].to(self.device),
                            bandwidth=self.bandwidth)
    codes = out.audio_codes  # (chunks=1, batch, num_codebooks, frames)
    if codes.shape[0] != 1:
      raise ValueError("chunked Encodec configs are not supported (the 32 kHz model encodes in one chunk)")
    codes = codes[0].cpu().numpy()
    return [flatten_codes(codes[i, :, :self.num_frames(len(w))], self.codebook_size) for i, w in enumerate(waves)]

  @torch.no_grad()
  def decode(self, tokens: np.ndarray) -> np.ndarray:
    """Flattened tokens -> float32 (frames * hop,) audio at `sample_rate`."""
    codes = unflatten_codes(tokens, self.num_codebooks, self.codebook_size)
    codes = torch.as_tensor(codes, dtype=torch.long)[None, None].to(self.device)
    audio = self.model.decode(codes, [None])[0]
    return audio[0, 0].cpu().numpy()
