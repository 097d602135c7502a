"""Synthetic pretokenized corpora in the shard schema, with the tokenization job's stats files.

For tests, the pipeline benchmark and the mixture report's examples: random codes of realistic
lengths (32 per image, 50 Hz speech, 4 x 50 Hz music) and random English-like text.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from anygpt_jax.data.mixing import STATS_SUFFIX
from anygpt_jax.data.shards import Part, Sample, serialize_sample, shard_filename
from anygpt_jax.vocabulary.layout import TEXT, MODALITY_NAMES, modality_named

IMAGE, SPEECH, MUSIC = (modality_named(name) for name in ("image", "speech", "music"))

WORDS = ("a the cat dog man woman child red blue green small large old young runs sits stands plays on in under "
         "near with street park beach city forest room table chair guitar piano drum song voice calm loud happy "
         "sad slow fast bright dark morning evening night river mountain sky cloud rain sun tree flower car "
         "train boat bird horse music speech picture photo painting melody rhythm beat soft warm cold").split()
TEXT_SAMPLES = ("The quick brown fox jumps over the lazy dog.", "A photo of a cat sitting on a red sofa.",
                "Transcribe this speech, please.", "Please generate an image based on the provided text.",
                "This is input: a dog running in the park at 5 o'clock.", "Play a calm piano melody, 120 bpm!")


def random_text(rng: np.random.Generator, min_words: int = 4, max_words: int = 16) -> str:
  words = rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1)))
  text = " ".join(words)
  return text[0].upper() + text[1:] + "."


def image_codes(rng):
  return rng.integers(0, IMAGE.num_codes, IMAGE.item_length).tolist()


def speech_codes(rng, seconds=None):
  seconds = float(rng.uniform(1.0, 12.0)) if seconds is None else seconds
  return rng.integers(0, SPEECH.num_codes, int(SPEECH.codes_per_second * seconds)).tolist()


def music_codes(rng, seconds=5.0):
  """Frame-major codes, code k of a frame from codebook k (offset by k codebook sizes)."""
  frames = int(MUSIC.codes_per_second // MUSIC.codebooks * seconds)
  return (rng.integers(0, MUSIC.codebook_size, (frames, MUSIC.codebooks))
          + MUSIC.codebook_size * np.arange(MUSIC.codebooks)).reshape(-1).tolist()


# The modalities this module makes random codes for, in the layout's order.
CODE_MAKERS = {"image": image_codes, "speech": speech_codes, "music": music_codes}


def make_sample(kind: str, index: int, rng: np.random.Generator, corpus: str = "synthetic") -> Sample:
  """One random sample of a task kind (`image_text`, ..., `interleaved`, `chat`)."""
  sid = f"{corpus}/{index:08d}"
  if kind == "image_text":
    return Sample(sid, [Part("image", codes=image_codes(rng)), Part("text", random_text(rng))])
  if kind == "speech_text":
    codes = speech_codes(rng)
    return Sample(sid, [Part("speech", codes=codes), Part("text", random_text(rng, 3, 3 + len(codes) // 25))],
                  duration_s=len(codes) / SPEECH.codes_per_second)
  if kind == "music_text":
    seconds = float(rng.choice([5.0, 5.0, 5.0, 4.0, 3.0, 2.0]))
    return Sample(sid, [Part("music", codes=music_codes(rng, seconds)), Part("text", random_text(rng, 5, 20))],
                  duration_s=seconds)
  if kind == "interleaved":
    parts = []
    for _ in range(int(rng.integers(1, 4))):
      parts.append(Part("text", random_text(rng, 10, 40) + " "))
      parts.append(Part("image", codes=image_codes(rng)))
    parts.append(Part("text", " " + random_text(rng, 5, 30)))
    return Sample(sid, parts)
  if kind == "chat":
    parts = [Part("text", "You are MMGPT, an assistant that understands and makes images, speech and music.",
                  role="system")]
    for _ in range(int(rng.integers(1, 3))):
      modality = str(rng.choice([TEXT, *CODE_MAKERS]))
      parts.append(Part("text", random_text(rng) + " ", role="user"))
      if modality != "text":
        parts.append(Part(modality, codes=CODE_MAKERS[modality](rng), role="user"))
      reply = str(rng.choice([TEXT, *CODE_MAKERS]))
      if reply == "speech":
        parts.append(Part("text", f"<-Ins-> {random_text(rng)} <-Res-> {random_text(rng)} ", role="assistant"))
        parts.append(Part("speech", codes=speech_codes(rng), role="assistant"))
      elif reply == "text":
        parts.append(Part("text", random_text(rng), role="assistant"))
      else:
        parts.append(Part("text", "Here it is: ", role="assistant"))
        parts.append(Part(reply, codes=CODE_MAKERS[reply](rng), role="assistant"))
    return Sample(sid, parts)
  raise ValueError(f"unknown kind {kind!r}")


def sample_stats(samples: Sequence[Sample], corpus: str, split: str) -> dict:
  tokens = {name: 0 for name in MODALITY_NAMES}
  chars, seconds = 0, 0.0
  for s in samples:
    for p in s.parts:
      if p.kind == "text":
        chars += len(p.text)
      else:
        tokens[p.kind] += len(p.codes)
    seconds += s.duration_s
  return {"corpus": corpus, "split": split, "records_in": len(samples), "records_out": len(samples),
          "rejected": {}, "tokens": tokens, "text_chars": chars, "audio_seconds": seconds}


def write_shards(directory: str, corpus: str, split: str, samples: Sequence[Sample], num_shards: int = 1,
                 stats: bool = True) -> list[str]:
  """Writes `samples` round-robin into `num_shards` TFRecord shards (+ stats files); returns paths."""
  os.makedirs(directory, exist_ok=True)
  paths = [os.path.join(directory, shard_filename(corpus, split, i, num_shards)) for i in range(num_shards)]
  per_shard = [list(samples[i::num_shards]) for i in range(num_shards)]
  for path, shard_samples in zip(paths, per_shard):
    with tf.io.TFRecordWriter(path) as w:
      for s in shard_samples:
        w.write(serialize_sample(s))
    if stats:
      with open(path + STATS_SUFFIX, "w") as f:
        json.dump(sample_stats(shard_samples, corpus, split), f)
  return paths


def write_corpus(data_dir: str, corpus: str, kind: str, num_records: int, split: str = "train", num_shards: int = 1,
                 seed: int = 0, subdir: bool = True) -> list[str]:
  """A random corpus of `kind` under `data_dir/corpus/` in the tokenization job's shard names."""
  rng = np.random.default_rng(seed)
  samples = [make_sample(kind, i, rng, corpus) for i in range(num_records)]
  return write_shards(os.path.join(data_dir, corpus) if subdir else data_dir, corpus, split, samples, num_shards)
