"""How each benchmark's answers are scored: its metric, and the media the scoring stage makes first.

A scorer takes the generated records (item id -> the generation stage's JSON line, successful
ones), the items (id -> `benchmarks.Item`) and a `Scoring` context, and returns {metric: score}.
Media answers are de-tokenized here, on the scoring box (`Scoring.media_files`: image codes ->
SEED -> unCLIP -> .jpg, music codes -> Encodec -> .wav, speech codes and a voice prompt ->
SoundStorm -> SpeechTokenizer -> .wav), kept under
`{out}/{benchmark}/media/{id}.{jpg,wav}` so a rerun scores the same files. An item whose media
cannot be made is recorded in `Scoring.failed` and left out. No JAX.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from anygpt_jax import filesystem
from anygpt_jax.evaluation import metrics

MEDIA = "media"
SUFFIXES = {"image": ".jpg", "speech": ".wav", "music": ".wav"}


class EvaluatorMissing(ValueError):
  """A benchmark needs an evaluator model or de-tokenizer that was not given; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Evaluators:
  """Local paths of what the scoring stage runs beside the metrics (None: not given).

  image_model, unclip_model: SEED and Stable Diffusion 2.1 unCLIP (image codes -> images).
  music_model: Encodec 32 kHz (music codes -> audio).
  speech_model, soundstorm_model: SpeechTokenizer and SoundStorm (speech codes + voice prompt -> audio).
  image_steps, soundstorm_steps: unCLIP denoising steps, SoundStorm passes. seed: their noise seed.
  clip_model, clap_model, whisper_model, wavlm_model: evaluator models in transformers' layout.
  """

  image_model: str | None = None
  unclip_model: str | None = None
  music_model: str | None = None
  speech_model: str | None = None
  soundstorm_model: str | None = None
  image_steps: int = 20
  soundstorm_steps: int = 3
  seed: int = 0
  clip_model: str | None = None
  clap_model: str | None = None
  whisper_model: str | None = None
  wavlm_model: str | None = None

  def need(self, benchmark: str, *flags: str) -> None:
    """Raises EvaluatorMissing naming every one of `flags` (field names) not given."""
    missing = [f"--{flag}" for flag in flags if not getattr(self, flag)]
    if missing:
      raise EvaluatorMissing(f"{benchmark} is scored with {', '.join(missing)} (not given)")


@dataclasses.dataclass
class Scoring:
  """One benchmark's scoring: where its media go, the evaluators, the items that failed so far.

  staging: the local directory standing for `{out}/{benchmark}/media` (`filesystem.LocalStaging`).
  """

  benchmark: str
  evaluators: Evaluators
  staging: str
  failed: list[dict]

  def media_files(self, records: dict[str, dict], modality: str,
                  voice_prompts: dict[str, str] | None = None) -> dict[str, str]:
    """Item id -> a local file of the first `modality` span of its answer (speech in the voice of
    `voice_prompts[id]`), made once (kept files are reused); items without such a span, or whose
    media cannot be made, join `failed`."""
    from anygpt_jax.generation.media import Media

    e = self.evaluators
    media = Media(image_model=e.image_model, unclip_model=e.unclip_model, music_model=e.music_model,
                  speech_model=e.speech_model, soundstorm_model=e.soundstorm_model, image_steps=e.image_steps,
                  soundstorm_steps=e.soundstorm_steps, seed=e.seed)
    files = {}
    for item_id, record in records.items():
      stem = os.path.join(self.staging, item_id)
      try:
        if not os.path.exists(stem + SUFFIXES[modality]):
          media.write(modality, answer_codes(record, modality), stem, (voice_prompts or {}).get(item_id))
        files[item_id] = stem + SUFFIXES[modality]
      except (ValueError, OSError) as error:
        self.failed.append({"id": item_id, "error": f"{modality}: {error}"})
    return files


def answer_codes(record: dict, modality: str) -> list[int]:
  """The codes of the first `modality` span of a generation record; ValueError when it has none."""
  for span in record.get("spans", []):
    if span["modality"] == modality:
      return span["codes"]
  raise ValueError(f"no {modality} span in the answer")


def _texts(records: dict[str, dict]) -> dict[str, str]:
  return {i: r.get("text", "") for i, r in records.items()}


def score_coco_caption(records, items, scoring: Scoring) -> dict[str, float]:
  return metrics.caption_scores(_texts(records), {i: items[i].references for i in records})


def score_librispeech_asr(records, items, scoring: Scoring) -> dict[str, float]:
  return metrics.word_error_rate(_texts(records), {i: items[i].references[0] for i in records})


def score_coco_t2i(records, items, scoring: Scoring) -> dict[str, float]:
  scoring.evaluators.need("coco_t2i", "image_model", "unclip_model", "clip_model")
  images = scoring.media_files(records, "image")
  return metrics.clip_scores(images, {i: items[i].references[0] for i in images},
                             scoring.evaluators.clip_model) if images else {}


def score_musiccaps_t2m(records, items, scoring: Scoring) -> dict[str, float]:
  scoring.evaluators.need("musiccaps_t2m", "music_model", "clap_model")
  music = scoring.media_files(records, "music")
  return {"CLAP": metrics.clap_score(music, {i: items[i].references[0] for i in music},
                                     scoring.evaluators.clap_model)} if music else {}


def score_musiccaps_caption(records, items, scoring: Scoring) -> dict[str, float]:
  """CLAP of (clip, generated caption), beside CLAP of (clip, its real caption) on the same items."""
  scoring.evaluators.need("musiccaps_caption", "clap_model")
  clips = {i: items[i].media for i in records}
  model = scoring.evaluators.clap_model
  return {"CLAP": metrics.clap_score(clips, _texts(records), model),
          "CLAP-reference": metrics.clap_score(clips, {i: items[i].references[0] for i in records}, model)}


PROMPT_SECONDS = 3.0  # the paper's zero-shot TTS prompt length


def score_vctk_tts(records, items, scoring: Scoring) -> dict[str, float]:
  """Each answer spoken in the voice of its prompt's first 3 s (SoundStorm + SpeechTokenizer), then
  Whisper's WER against the text and WavLM similarity between the spoken answer and the prompt."""
  from anygpt_jax.tokenizers import audio_io

  e = scoring.evaluators
  e.need("vctk_tts", "speech_model", "soundstorm_model", "whisper_model", "wavlm_model")
  prompts = {}
  os.makedirs(os.path.join(scoring.staging, "prompts"), exist_ok=True)
  for item_id in records:
    path = os.path.join(scoring.staging, "prompts", f"{item_id}.wav")
    try:
      if not os.path.exists(path):
        wave = audio_io.load_audio(items[item_id].media, 16000)
        audio_io.write_wav(path, wave[:int(PROMPT_SECONDS * 16000)], 16000)
      prompts[item_id] = path
    except (ValueError, OSError) as error:
      scoring.failed.append({"id": item_id, "error": f"voice prompt: {error}"})
  speech = scoring.media_files({i: records[i] for i in prompts}, "speech", prompts)
  if not speech:
    return {}
  transcripts = metrics.transcribe(speech, e.whisper_model)
  scores = metrics.word_error_rate(transcripts, {i: items[i].references[0] for i in speech})
  scores["SIM"] = metrics.speaker_similarity({i: (speech[i], prompts[i]) for i in speech}, e.wavlm_model)
  return scores


SCORERS: dict[str, Callable[[dict, dict, Scoring], dict[str, float]]] = {
    "coco_caption": score_coco_caption, "coco_t2i": score_coco_t2i, "librispeech_asr": score_librispeech_asr,
    "musiccaps_t2m": score_musiccaps_t2m, "musiccaps_caption": score_musiccaps_caption, "vctk_tts": score_vctk_tts,
}


def score(benchmark: str, out_dir: str, records: dict[str, dict], items: dict, evaluators: Evaluators,
          failed: list[dict]) -> dict[str, float]:
  """{metric: score} of `records` (the successful ones) by `benchmark`'s scorer; appends to `failed`
  the items whose media could not be made. Media are kept under {out_dir}/{benchmark}/media."""
  if not records:
    return {}
  destination = filesystem.resolve(out_dir) / benchmark / MEDIA
  with filesystem.LocalStaging(destination) as staging:
    if staging.remote and destination.exists():
      filesystem.download_tree(destination, staging.local)
    return SCORERS[benchmark](records, items, Scoring(benchmark, evaluators, staging.local, failed))
