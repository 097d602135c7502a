"""How each benchmark's answers are scored: its metric, and the media the scoring stage makes first.

A scorer takes the generated records (item id -> the generation stage's JSON line, successful
ones), the items (id -> `benchmarks.Item`) and a `Scoring` context, and returns {metric: score}.
Media answers are de-tokenized here, on the scoring box (`Scoring.media_files`: image codes ->
SEED -> unCLIP -> .jpg, music codes -> Encodec -> .wav), kept under
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
  image_steps: unCLIP denoising steps. seed: the de-tokenizers' noise seed.
  clip_model, clap_model: CLIP and CLAP in transformers' layout.
  """

  image_model: str | None = None
  unclip_model: str | None = None
  music_model: str | None = None
  image_steps: int = 20
  seed: int = 0
  clip_model: str | None = None
  clap_model: str | None = None

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

  def media_files(self, records: dict[str, dict], modality: str) -> dict[str, str]:
    """Item id -> a local file of the first `modality` span of its answer, made once (kept files are
    reused); items without such a span, or whose media cannot be made, join `failed`."""
    from anygpt_jax.generation.media import Media

    e = self.evaluators
    media = Media(image_model=e.image_model, unclip_model=e.unclip_model, music_model=e.music_model,
                  image_steps=e.image_steps, seed=e.seed)
    files = {}
    for item_id, record in records.items():
      stem = os.path.join(self.staging, item_id)
      try:
        if not os.path.exists(stem + SUFFIXES[modality]):
          media.write(modality, answer_codes(record, modality), stem)
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


SCORERS: dict[str, Callable[[dict, dict, Scoring], dict[str, float]]] = {
    "coco_caption": score_coco_caption, "coco_t2i": score_coco_t2i, "librispeech_asr": score_librispeech_asr,
    "musiccaps_t2m": score_musiccaps_t2m, "musiccaps_caption": score_musiccaps_caption,
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
