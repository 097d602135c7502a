"""Tiny benchmark data sets in their publishers' layouts, for the tests and the README's evaluation
commands (never for reporting): a few items each, made in seconds, with a bad item where a real
data set can have one.

  write_coco_karpathy(dir)   dir/dataset_coco.json (Karpathy's fields: filepath, filename, cocoid,
                             split, sentences[].raw) + dir/val2014/COCO_val2014_*.jpg; train and
                             val entries too, which the benchmark must skip.
  write_coco_captions(dir)   dir/annotations/captions_val2014.json (COCO's caption annotations:
                             images[] and annotations[] with id, image_id, caption), as the
                             annotations archive unpacks, and the images in dir/val2014/; one
                             caption holds a '|'.
  write_musiccaps(dir)       dir/musiccaps-public.csv (MusicCaps' columns) + dir/audio/{ytid}.wav
                             (3 s clips at 32 kHz, 48 kHz and 44.1 kHz: MusicCaps' are 10 s, whose
                             2000 music tokens a tiny model cannot hold); one evaluation row's clip
                             is not on disk, one row is not in the evaluation split.
  write_vctk(dir)            VCTK 0.92's layout: dir/wav48_silence_trimmed/{spk}/{spk}_{utt:03d}_mic1.flac
                             (and _mic2) at 48 kHz + dir/txt/{spk}/{spk}_{utt:03d}.txt; one speaker
                             has a single utterance (no prompt and target pair).
  write_librispeech(dir)     dir/test-clean/{speaker}/{chapter}/{speaker}-{chapter}-{utt:04d}.flac +
                             {speaker}-{chapter}.trans.txt (upper-case transcripts).
"""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import soundfile as sf
from PIL import Image

from anygpt_jax.testing.demo_corpus import SPEECH_RATE, _synth_speech

_CAPTION_WORDS = ("a dog cat man woman child red blue green small large sits runs stands on in near the "
                  "table street park beach sofa field with ball kite plate of food").split()
_SPEAKERS = ((1089, 134686), (121, 121726))


def _caption(rng: np.random.Generator) -> str:
  return " ".join(rng.choice(_CAPTION_WORDS, int(rng.integers(5, 10)))).capitalize() + "."


def write_coco_karpathy(directory, num_test: int = 6, seed: int = 0, missing_image: bool = False) -> pathlib.Path:
  """A Karpathy-split MS-COCO directory with `num_test` test images (5 captions each), one train
  and one val entry; `missing_image` lists a last test image that is not on disk."""
  root = pathlib.Path(directory)
  (root / "val2014").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  images = []
  splits = ["test"] * num_test + ["train", "val"]
  for i, split in enumerate(splits):
    cocoid = 42 + 7 * i
    name = f"COCO_val2014_{cocoid:012d}.jpg"
    pixels = rng.integers(0, 255, (48 + 8 * (i % 3), 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "val2014" / name)
    images.append({"filepath": "val2014", "filename": name, "cocoid": cocoid, "imgid": i, "split": split,
                   "sentences": [{"raw": _caption(rng), "imgid": i, "sentid": 5 * i + k} for k in range(5)]})
  if missing_image:
    images.append({"filepath": "val2014", "filename": "COCO_val2014_000000999999.jpg", "cocoid": 999999,
                   "imgid": len(images), "split": "test", "sentences": [{"raw": "A missing picture."}]})
  (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
  return root


def write_coco_captions(directory, num_images: int = 4, seed: int = 0) -> pathlib.Path:
  """MS-COCO 2014 val caption annotations for `num_images` images, 5 captions each, and the images
  (text-to-image reads the captions; its tokenizer ceiling, the images)."""
  root = pathlib.Path(directory)
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  (root / "val2014").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  images, annotations = [], []
  for i in range(num_images):
    image_id = 139 + 11 * i
    name = f"COCO_val2014_{image_id:012d}.jpg"
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "val2014" / name)
    images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
    for k in range(5):
      annotations.append({"id": 1000 + 5 * i + k, "image_id": image_id, "caption": _caption(rng)})
  annotations[1]["caption"] = "A sign reading open | closed on a door."
  (root / "annotations" / "captions_val2014.json").write_text(json.dumps(
      {"info": {"description": "tiny"}, "images": images, "annotations": annotations}))
  return root


def write_librispeech(directory, utterances_per_chapter: int = 3, seed: int = 0) -> pathlib.Path:
  """LibriSpeech's test-clean layout: two speakers, one chapter each, short synthetic utterances."""
  root = pathlib.Path(directory) / "test-clean"
  rng = np.random.default_rng(seed)
  for speaker, chapter in _SPEAKERS:
    folder = root / str(speaker) / str(chapter)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for utt in range(utterances_per_chapter):
      text = " ".join(rng.choice(_CAPTION_WORDS, int(rng.integers(3, 7))))
      utterance = f"{speaker}-{chapter}-{utt:04d}"
      sf.write(folder / f"{utterance}.flac", _synth_speech(text, rng), SPEECH_RATE, format="FLAC")
      lines.append(f"{utterance} {text.upper()}")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
  return root.parent


MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
                     "is_balanced_subset", "is_audioset_eval")


def write_musiccaps(directory, num_eval: int = 3, seed: int = 0) -> pathlib.Path:
  """MusicCaps' csv with `num_eval` evaluation rows whose clips are on disk, one more whose clip is
  missing, and one training row (skipped by the benchmarks)."""
  root = pathlib.Path(directory)
  (root / "audio").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(num_eval + 2):
    ytid = f"-{i}aBcDeFgH{i}"[:11]
    evaluation = i != num_eval + 1
    rows.append({"ytid": ytid, "start_s": 30, "end_s": 40, "audioset_positive_labels": "/m/04rlf",
                 "aspect_list": "['calm', 'violin']", "caption": _caption(rng).replace("dog", "violin, piano"),
                 "author_id": 4, "is_balanced_subset": "False", "is_audioset_eval": str(evaluation)})
    if i < num_eval:
      rate = (32000, 48000, 44100)[i % 3]
      t = np.arange(3 * rate) / rate
      wave = 0.2 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.02 * rng.standard_normal(len(t))
      sf.write(root / "audio" / f"{ytid}.wav", wave.astype(np.float32), rate)
  with open(root / "musiccaps-public.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, MUSICCAPS_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return root


def write_vctk(directory, speakers: int = 3, utterances: int = 3, seed: int = 0) -> pathlib.Path:
  """`speakers` VCTK speakers with `utterances` synthetic utterances each, plus one with a single one."""
  from anygpt_jax.tokenizers import audio_io

  root = pathlib.Path(directory)
  rng = np.random.default_rng(seed)
  for s in range(speakers + 1):
    speaker = f"p{225 + s}"
    (root / "wav48_silence_trimmed" / speaker).mkdir(parents=True, exist_ok=True)
    (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
    for u in range(1, (utterances if s < speakers else 1) + 1):
      text = " ".join(rng.choice(_CAPTION_WORDS, int(rng.integers(4, 8)))).capitalize() + "."
      (root / "txt" / speaker / f"{speaker}_{u:03d}.txt").write_text(text + "\n")
      wave = audio_io.resample(_synth_speech(text, rng), SPEECH_RATE, 48000)
      for mic in (1, 2):
        sf.write(root / "wav48_silence_trimmed" / speaker / f"{speaker}_{u:03d}_mic{mic}.flac", wave, 48000,
                 format="FLAC")
  return root
