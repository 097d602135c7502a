"""Media in and out of generation: the tokenizer workers and the de-tokenizers (PyTorch, no JAX).

Input media (a request's image, speech or music file) become modality-local codes through the
tokenizer workers; generated codes become media: image codes -> SEED -> Stable Diffusion 2.1
unCLIP (a PIL image), speech codes -> SoundStorm (levels 2-8, with a voice prompt) ->
SpeechTokenizer (16 kHz audio), music codes -> Encodec 32 kHz. Each model is loaded from its
local directory the first time it is needed; a model not given is an error only for a request
that needs it (`available` tells beforehand).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from anygpt_jax.generation.requests import RequestError


# How much of a music input AnyGPT's inference reads: its base-model CLI 20 s
# (`cli_infer_base_model.py`, music_segment_duration = 20), its chat CLI 5 s (`cli_infer_chat_model.py`).
# AnyGPT reads a random segment of a longer file; we take its start, so a request is reproducible.
BASE_MUSIC_SECONDS = 20.0
CHAT_MUSIC_SECONDS = 5.0


class Media:
  """Tokenizers and de-tokenizers given by local paths (None: not available).

  Args:
    image_model: SEED tokenizer directory (images in; with unclip_model, images out).
    unclip_model: Stable Diffusion 2.1 unCLIP directory (images out).
    speech_model: SpeechTokenizer directory (speech in; with soundstorm_model, speech out).
    soundstorm_model: SoundStorm checkpoint file (speech out).
    music_model: Encodec 32 kHz directory (music in and out).
    music_seconds: music inputs are cut to this many seconds; None: as AnyGPT's CLIs,
      `BASE_MUSIC_SECONDS` for a base model's task and `CHAT_MUSIC_SECONDS` in a chat.
    image_steps: unCLIP denoising steps.
    soundstorm_steps: SoundStorm passes per level (AnyGPT: 3).
    seed: the de-tokenizers' noise seed.
  """

  def __init__(self, image_model: str | None = None, unclip_model: str | None = None,
               speech_model: str | None = None, soundstorm_model: str | None = None,
               music_model: str | None = None, music_seconds: float | None = None, image_steps: int = 20,
               soundstorm_steps: int = 3, seed: int = 0):
    self.paths = {"image": image_model, "unclip": unclip_model, "speech": speech_model,
                  "soundstorm": soundstorm_model, "music": music_model}
    self.music_seconds = music_seconds
    self.image_steps = image_steps
    self.soundstorm_steps = soundstorm_steps
    self.seed = seed
    self._loaded: dict[str, Any] = {}

  # --- models, loaded on first use ------------------------------------------------------------
  def _path(self, name: str, flag: str) -> str:
    path = self.paths[name]
    if not path:
      raise RequestError(f"this request needs {flag}")
    return os.fspath(path)

  def _model(self, name: str):
    if name in self._loaded:
      return self._loaded[name]
    if name == "image":
      from anygpt_jax.tokenizers.image import SeedImageWorker
      model = SeedImageWorker(self._path("image", "--image_model"))
    elif name == "speech":
      from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker
      model = SpeechTokenizerWorker(self._path("speech", "--speech_model"))
    elif name == "music":
      from anygpt_jax.tokenizers.music import EncodecMusicWorker
      model = EncodecMusicWorker(self._path("music", "--music_model"), clip_seconds=None)  # cut in `encode`
    elif name == "unclip":
      from anygpt_jax.tokenizers.image import ImageDetokenizer
      model = ImageDetokenizer(self._model("image"), self._path("unclip", "--unclip_model"))
    elif name == "soundstorm":
      from anygpt_jax.tokenizers.speech import SpeechDetokenizer
      model = SpeechDetokenizer(self._model("speech"), self._path("soundstorm", "--soundstorm_model"))
    else:
      raise KeyError(name)
    self._loaded[name] = model
    return model

  def load_all(self) -> None:
    """Loads every model given now (a server fails at start on a bad path, not at a request)."""
    for name, path in self.paths.items():
      if path:
        self._model(name)

  @property
  def image_length(self) -> int:
    """Codes per image (SEED: 32); AnyGPT's 32 when no image tokenizer is given."""
    return self._model("image").codes_per_image if self.paths["image"] else 32

  @property
  def music_codebooks(self) -> int:
    """Codebooks of a music frame (Encodec 32 kHz: 4); 4 when no music model is given."""
    return self._model("music").num_codebooks if self.paths["music"] else 4

  def available(self, kind: str) -> bool:
    """Whether generated `kind` codes can be turned into media (text always can)."""
    needs = {"text": (), "image": ("image", "unclip"), "speech": ("speech", "soundstorm"), "music": ("music",)}
    return all(self.paths[n] for n in needs[kind])

  # --- in -------------------------------------------------------------------------------------
  def encode(self, kind: str, path: str, chat: bool = False) -> np.ndarray:
    """Local codes of a media file (image: 32 SEED codes; speech: RVQ-1; music: flattened Encodec,
    of its first `music_seconds`, or of what AnyGPT's base or chat CLI reads when that is None)."""
    from anygpt_jax.tokenizers import audio_io
    from anygpt_jax.tokenizers.audio_io import MediaError
    try:
      if kind == "image":
        from anygpt_jax.tokenizers.image import load_image
        return self._model("image").encode_batch([load_image(path)])[0]
      if kind == "speech":
        worker = self._model("speech")
        return worker.encode_semantic([audio_io.load_audio(path, worker.sample_rate)])[0]
      worker = self._model("music")
      seconds = self.music_seconds
      if seconds is None:
        seconds = CHAT_MUSIC_SECONDS if chat else BASE_MUSIC_SECONDS
      wave = audio_io.load_audio(path, worker.sample_rate)[:int(round(seconds * worker.sample_rate))]
      return worker.encode_batch([wave])[0]
    except MediaError as e:
      raise RequestError(f"{kind} input {path!r}: {e}") from None

  # --- out ------------------------------------------------------------------------------------
  def image(self, codes) -> "Any":
    """Image codes (int [32]) -> a PIL RGB image."""
    return self._model("unclip")(np.asarray(codes), num_inference_steps=self.image_steps, seed=self.seed)

  def speech(self, codes, voice_prompt: str | None = None) -> tuple[np.ndarray, int]:
    """Speech codes (int [frames]) -> (float32 [frames * 320] audio, 16000)."""
    if voice_prompt and not os.path.isfile(voice_prompt):
      raise RequestError(f"voice prompt {voice_prompt!r} does not exist")
    kwargs = {"steps": self.soundstorm_steps} if self.soundstorm_steps else {}
    wave = self._model("soundstorm")(np.asarray(codes), prompt_wav=voice_prompt, seed=self.seed, **kwargs)
    return wave, self._model("speech").sample_rate

  def music(self, codes) -> tuple[np.ndarray, int]:
    """Flattened music codes (int [frames * 4]) -> (float32 audio, 32000)."""
    worker = self._model("music")
    return worker.decode(np.asarray(codes)), worker.sample_rate

  def write(self, kind: str, codes, stem: str, voice_prompt: str | None = None) -> dict:
    """De-tokenizes `codes` into stem.jpg / stem.wav (local paths); returns what was written."""
    from anygpt_jax.tokenizers import audio_io
    if kind == "image":
      image = self.image(codes)
      image.save(stem + ".jpg")
      return {"file": stem + ".jpg", "width": image.width, "height": image.height, "codes": len(codes)}
    wave, rate = self.speech(codes, voice_prompt) if kind == "speech" else self.music(codes)
    audio_io.write_wav(stem + ".wav", wave, rate)
    return {"file": stem + ".wav", "sample_rate": rate, "samples": int(len(wave)), "codes": len(codes)}
