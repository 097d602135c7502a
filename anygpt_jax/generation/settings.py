"""Per-request decoding settings and AnyGPT's per-modality defaults.

The defaults combine the paper's Table 9 (text: beam search 5; image and speech: top-p 0.7;
music: top-p 1.0 with repetition penalty 1.15) with AnyGPT's `config/*_generate_config.json`
(max/min new tokens, music top-k 200, speech repetition penalty 1.05). Those configs leave
top-k unset, so transformers' GenerationConfig default of 50 applied to image and speech
sampling in AnyGPT's runs; it is kept here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


class SettingsError(ValueError):
  """Decoding settings that cannot be used (e.g. a negative temperature)."""


@dataclasses.dataclass(frozen=True)
class DecodingSettings:
  """How one request is decoded (transformers' GenerationConfig names and meanings).

  Attributes:
    do_sample: sample from the processed distribution; False is greedy (or beam search).
    temperature: logits are divided by it before top-k/top-p (sampling only).
    top_k: keep the k most likely ids (0: all).
    top_p: keep the smallest set of most likely ids whose probability reaches top_p.
    repetition_penalty: every id already in the prompt or the output has its logit divided by
      it when positive, multiplied when negative (transformers' RepetitionPenaltyLogitsProcessor).
    min_new_tokens: stop ids are masked until this many tokens were generated.
    max_new_tokens: generation ends after this many tokens.
    stop_ids: ids that end the request (they are part of its output).
    num_beams: beam search with this many beams when > 1 (greedy, text only).
    length_penalty: beam scores are sum of log-probabilities / generated_length ** length_penalty.
  """

  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  min_new_tokens: int = 0
  max_new_tokens: int = 64
  stop_ids: tuple[int, ...] = ()
  num_beams: int = 1
  length_penalty: float = 1.0

  def __post_init__(self):
    errors = []
    if self.temperature <= 0:
      errors.append(f"temperature={self.temperature} must be > 0 (use do_sample=False for greedy)")
    if self.top_k < 0:
      errors.append(f"top_k={self.top_k} must be >= 0")
    if not 0 < self.top_p <= 1:
      errors.append(f"top_p={self.top_p} must be in (0, 1]")
    if self.repetition_penalty <= 0:
      errors.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
    if self.max_new_tokens < 1 or self.min_new_tokens < 0:
      errors.append(f"max_new_tokens={self.max_new_tokens} must be >= 1 and min_new_tokens >= 0")
    if self.num_beams < 1:
      errors.append(f"num_beams={self.num_beams} must be >= 1")
    if self.num_beams > 1 and self.do_sample:
      errors.append("beam search is greedy: do_sample must be False when num_beams > 1")
    if errors:
      raise SettingsError("invalid decoding settings: " + "; ".join(errors))

  def replace(self, **changes) -> "DecodingSettings":
    return dataclasses.replace(self, **changes)


# AnyGPT's config/{modality}_generate_config.json (key None: config/generate_config.json, which
# also carries SoundStorm's voice-cloning steps), in transformers' GenerationConfig names. The HF
# export writes them as they are; the ids are added from the vocabulary.
ANYGPT_GENERATE_CONFIGS = {
    "text": {"temperature": 1.0, "top_p": 1.0, "do_sample": True, "max_new_tokens": 100, "min_new_tokens": 10},
    "image": {"temperature": 1.0, "top_p": 1.0, "do_sample": True, "max_new_tokens": 200, "min_new_tokens": 10},
    "speech": {"temperature": 1.0, "top_p": 1.0, "do_sample": True, "max_new_tokens": 1500, "min_new_tokens": 10,
               "repetition_penalty": 1.05, "vc_steps": 4},
    "music": {"temperature": 1.0, "top_p": 1.0, "top_k": 200, "do_sample": True, "max_new_tokens": 2000,
              "min_new_tokens": 10, "repetition_penalty": 1.15},
    None: {"temperature": 1.0, "top_p": 1.0, "do_sample": True, "max_new_tokens": 500, "min_new_tokens": 10,
           "repetition_penalty": 1.0, "vc_steps": 3, "num_beams": 5},
}
# Where the paper's Table 9 differs from those files: text by beam search; image and speech with
# top-p 0.7 and transformers' default top-k of 50 (the files leave top-k unset).
_TABLE_9 = {
    "text": {"do_sample": False, "num_beams": 5},
    "image": {"top_p": 0.7, "top_k": 50},
    "speech": {"top_p": 0.7, "top_k": 50},
    "music": {},
}
_FIELDS = {f.name for f in dataclasses.fields(DecodingSettings)}
# Stop ids are added by the caller (they depend on the layout).
MODALITY_DEFAULTS = {
    modality: DecodingSettings(**{k: v for k, v in {**ANYGPT_GENERATE_CONFIGS[modality], **table_9}.items()
                                  if k in _FIELDS})
    for modality, table_9 in _TABLE_9.items()
}


def defaults_for(modality: str, stop_ids: Sequence[int] = (), **overrides) -> DecodingSettings:
  """The default settings for output `modality`, with stop ids and overrides (None ignored)."""
  if modality not in MODALITY_DEFAULTS:
    raise SettingsError(f"unknown output modality {modality!r}; expected one of {sorted(MODALITY_DEFAULTS)}")
  changes = {k: v for k, v in overrides.items() if v is not None}
  return MODALITY_DEFAULTS[modality].replace(stop_ids=tuple(stop_ids), **changes)
