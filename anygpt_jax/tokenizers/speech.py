"""Speech tokenizer (SpeechTokenizer RVQ-1, 50 Hz, 1024 codes) and de-tokenizer (SoundStorm + decoder).

Layout of the released model (fnlp/SpeechTokenizer `speechtokenizer_hubert_avg/`): a directory
with `config.json` (the model's constructor arguments: n_filters, strides, dimension, n_q,
codebook_size, sample_rate, ...) and `SpeechTokenizer.pt` (a plain state dict). AnyGPT ships the
same state dict as `models/speechtokenizer/ckpt.dev` next to its `config.json`; both names load.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import sys
import types

import numpy as np
import torch

from anygpt_jax.tokenizers import audio_io
from anygpt_jax.tokenizers.soundstorm import SoundStorm
from anygpt_jax.tokenizers.speech_encoder import BatchEncoder

CHECKPOINT_NAME = "SpeechTokenizer.pt"
CHECKPOINT_NAMES = (CHECKPOINT_NAME, "ckpt.dev")  # fnlp's release, AnyGPT's copy


def speechtokenizer_class():
  """`speechtokenizer.model.SpeechTokenizer`, imported without the package's `__init__`.

  That `__init__` also imports its trainer -> torch.utils.tensorboard -> TensorFlow, and
  TensorFlow imports JAX whenever JAX is installed; the tokenizer workers must not load JAX.
  A bare package module stands in for `speechtokenizer` so only the model code is imported.
  """
  if "speechtokenizer" not in sys.modules:
    spec = importlib.util.find_spec("speechtokenizer")
    if spec is None:
      raise ImportError("the speechtokenizer package is not installed")
    package = types.ModuleType("speechtokenizer")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["speechtokenizer"] = package
  from speechtokenizer.model import SpeechTokenizer
  sys.modules["speechtokenizer"].SpeechTokenizer = SpeechTokenizer
  return SpeechTokenizer


def _find_checkpoint(directory: pathlib.Path) -> pathlib.Path:
  for name in CHECKPOINT_NAMES:
    if (directory / name).exists():
      return directory / name
  candidates = sorted(directory.glob("*.pt"))
  if len(candidates) != 1:
    raise FileNotFoundError(f"{directory}: expected {' or '.join(CHECKPOINT_NAMES)} (or exactly one *.pt) next "
                            f"to config.json, found {sorted(p.name for p in directory.iterdir())}")
  return candidates[0]


class SpeechTokenizerWorker:
  """Encodes mono speech to RVQ codes and decodes full codes back to audio (no JAX).

  Attributes:
    sample_rate: the model's rate (16000 for the released model).
    hop: samples per code frame (320 -> 50 Hz).
  """

  def __init__(self, model_dir: str, device: str = "cpu"):
    directory = pathlib.Path(model_dir)
    config_path = directory / "config.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{directory}: no config.json (SpeechTokenizer layout: config.json + "
                              f"{' or '.join(CHECKPOINT_NAMES)})")
    self.config = json.loads(config_path.read_text())
    self.model = speechtokenizer_class()(self.config)
    state = torch.load(str(_find_checkpoint(directory)), map_location="cpu", weights_only=True)
    self.model.load_state_dict(state, strict=True)
    self.model.eval().to(device)
    self.batch_encoder = BatchEncoder(self.model.encoder).to(device)
    self.device = device
    self.sample_rate = int(self.config["sample_rate"])
    self.hop = int(np.prod(self.config["strides"]))
    self.num_quantizers = int(self.config["n_q"])
    self.codebook_size = int(self.config["codebook_size"])

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop

  def num_frames(self, num_samples: int) -> int:
    """Code frames that a clip of `num_samples` owns: ceil(samples / hop)."""
    return math.ceil(num_samples / self.hop)

  @torch.no_grad()
  def encode_batch(self, waves: list[np.ndarray], num_quantizers: int = 1) -> list[np.ndarray]:
    """Codes of a batch of clips; no code ever depends on another clip or on padding.

    The encoder runs as `speech_encoder.BatchEncoder` (convolutions per clip in channels-last
    layout, the LSTM once over the batch on packed sequences), then the quantizer takes all
    clips' frames laid end to end (it works frame by frame).

    Args:
      waves: float32 (samples,) arrays at `sample_rate`.
      num_quantizers: RVQ levels to return (1 = the semantic layer the LM sees).

    Returns:
      One int64 array per clip, shape (num_quantizers, ceil(samples / hop)), values in
      [0, codebook_size): the codes of the clip encoded alone, up to float rounding at
      near-ties of the nearest codebook entry.
    """
    feats = self.batch_encoder([torch.from_numpy(np.ascontiguousarray(w)).to(self.device) for w in waves])
    frames = [f.shape[-1] for f in feats]
    codes = self.model.quantizer.encode(torch.cat(feats, dim=-1)[None], n_q=num_quantizers)[:, 0]  # (q, total)
    codes = codes.cpu().numpy().astype(np.int64)
    bounds = np.cumsum([0] + frames)
    return [codes[:, bounds[i]:bounds[i + 1]] for i in range(len(frames))]

  def encode_exact(self, wave: np.ndarray) -> np.ndarray:
    """All levels of one clip through the library's own `SpeechTokenizer.encode`, as AnyGPT encodes
    a voice prompt: int64 (num_quantizers, frames). `encode_batch` agrees with it up to float
    rounding at near-ties (99.2-99.75 % of a prompt's codes on shared weights); a prompt is one clip,
    so it takes this path and gives AnyGPT's codes exactly."""
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None, None].to(self.device)
    # With autograd on, whatever the caller's mode: AnyGPT's voice cloning encodes its prompt so, and
    # torch's CPU kernels round differently under no_grad, which moves codes at near-ties.
    with torch.enable_grad():
      codes = self.model.encode(tensor)
    return codes[:, 0].detach().cpu().numpy().astype(np.int64)

  def encode_semantic(self, waves: list[np.ndarray]) -> list[np.ndarray]:
    """RVQ-1 codes only: one int64 (frames,) array per clip (what goes into the shards)."""
    return [c[0] for c in self.encode_batch(waves, num_quantizers=1)]

  @torch.no_grad()
  def decode(self, codes: np.ndarray) -> np.ndarray:
    """int (num_quantizers, frames) codes -> float32 (frames * hop,) audio at `sample_rate`."""
    tensor = torch.as_tensor(np.asarray(codes), dtype=torch.long)[:, None, :].to(self.device)
    return self.model.decode(tensor)[0, 0].cpu().numpy()


class SpeechDetokenizer:
  """RVQ-1 codes -> audio: SoundStorm fills levels 2..8, the SpeechTokenizer decoder synthesises.

  With a voice prompt (a short wav, used whole as AnyGPT does) the prompt's full 8-level codes condition SoundStorm
  (zero-shot voice cloning); without one SoundStorm samples its own default voice.
  """

  def __init__(self, tokenizer: SpeechTokenizerWorker, soundstorm_path: str, heads: int = 8):
    self.tokenizer = tokenizer
    self.soundstorm = SoundStorm.from_checkpoint(soundstorm_path, heads=heads)
    expected = tokenizer.num_quantizers - 1
    if self.soundstorm.cfg.num_quantizers != expected:
      raise ValueError(f"SoundStorm fills {self.soundstorm.cfg.num_quantizers} levels, the SpeechTokenizer "
                       f"has {tokenizer.num_quantizers} (needs {expected})")

  def prompt_codes(self, prompt_wav: str, max_seconds: float | None = None) -> np.ndarray:
    """Full codes of a voice prompt (AnyGPT's voice cloning takes all of it; `max_seconds` cuts
    it): int64 (frames, num_quantizers)."""
    wave = audio_io.load_audio(prompt_wav, self.tokenizer.sample_rate)
    if max_seconds is not None:
      wave = wave[:int(max_seconds * self.tokenizer.sample_rate)]
    return self.tokenizer.encode_exact(wave).T

  def __call__(self, semantic: np.ndarray, prompt_wav: str | None = None, steps: int = 3,
               seed: int = 0) -> np.ndarray:
    """int (frames,) RVQ-1 codes -> float32 (frames * hop,) audio at the tokenizer's rate.

    `steps` defaults to AnyGPT's 3 SoundStorm passes per level."""
    semantic = torch.as_tensor(np.asarray(semantic), dtype=torch.long)[None]
    prompt = None
    if prompt_wav is not None:
      prompt = torch.as_tensor(self.prompt_codes(prompt_wav))[None]
    generator = torch.Generator().manual_seed(seed)
    full = self.soundstorm.generate(semantic, prompt_codes=prompt, steps=steps, generator=generator)
    return self.tokenizer.decode(full[0].T.numpy())
