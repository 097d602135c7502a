"""The paper's benchmarks: which items each reads from its data set's published layout, the request
each item makes of the model, and what it is scored against.

Pure Python (no JAX, no torch): the generation stage (JAX) and the scoring stage (PyTorch box)
both read the same items. Paths may be local, relative or `gs://` (`anygpt_jax.filesystem`).

  coco_caption      MS-COCO 2014 Karpathy test split: `dataset_coco.json` (Karpathy's file, entries
                    with `split == "test"`), images at `{filepath}/{filename}` (`val2014/...`) under
                    the same directory. Request `image|text|{image}`; references: the 5 captions
                    (`sentences[].raw`). Paper: CIDEr 107.5 (section 5.1).
  coco_t2i          MS-COCO 2014 val captions: `annotations/captions_val2014.json` (COCO's caption
                    annotations, as the archive unpacks; or the file itself in the directory), one
                    item per caption, by annotation id. Request `text|image|{caption}` ('|' and
                    line breaks in a caption become spaces: they would split a task string);
                    reference: the caption, scored by CLIP. Paper: CLIP score 0.65 over 30k
                    captions (`--limit 30000`).
  librispeech_asr   LibriSpeech `test-clean/{speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac` with
                    `{speaker}-{chapter}.trans.txt` (one `{utterance id} {TRANSCRIPT}` per line).
                    Request `speech|text|{flac}`; reference: the transcript. Paper: WER 8.5.
  musiccaps_t2m     MusicCaps: `musiccaps-public.csv` (ytid, start_s, end_s, caption,
                    is_audioset_eval, ...), its evaluation rows (`is_audioset_eval` True: 2,858 of
                    5,521). Request `text|music|{caption}`; reference: the caption, scored by CLAP.
                    Paper: CLAP 0.14.
  musiccaps_caption The same rows, with each clip as a local file `audio/{ytid}.wav` (or .flac/.mp3:
                    the 10 s segment start_s..end_s, as MusicCaps download scripts save it).
                    Request `music|text|{clip}`; scored by CLAP of (clip, answer) beside (clip,
                    the real caption).
  vctk_tts          VCTK 0.92: `wav48_silence_trimmed/{spk}/{spk}_{utt}_mic1.flac` with
                    `txt/{spk}/{spk}_{utt}.txt`. One item per speaker: a seeded pair of its
                    utterances, one the voice prompt (its first 3 s, cut by the scoring stage),
                    the other's text the request: `text|speech|{text}|{prompt flac}`. Scored
                    by Whisper's WER on the spoken answer and WavLM speaker similarity to the
                    prompt. Paper: WER 8.5, similarity 0.77.

Item order is the data set's (sorted for LibriSpeech); `limit` keeps a seeded random subset of that
size, in that order, so a small run is a fixed sample that reruns and other processes agree on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
from typing import Callable

from anygpt_jax import filesystem


class BenchmarkDataError(ValueError):
  """A data set that is not in its benchmark's published layout; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One benchmark example: its id in the data set, the request (an AnyGPT task string), the media
  path it reads (or None), the reference texts it is scored against, and the medium those texts
  belong to (the caption's image or clip, the text's own recording; None when the request's own
  medium is it): what the tokenizer ceiling sends through the tokenizer and back."""

  id: str
  task: str
  media: str | None
  references: tuple[str, ...]
  reference_media: str | None = None


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark: how to read its items, its metrics, and the paper's score on its headline metric.

  Attributes:
    name: the benchmark's name on the command line and in reports.
    read: (data directory) -> every item, in the data set's order.
    metrics: the metric names the scorer reports, headline first.
    paper: {metric: AnyGPT's score in the paper}.
    lower_is_better: the headline metric (the first) improves downwards (WER).
  """

  name: str
  read: Callable[[str], list[Item]]
  metrics: tuple[str, ...]
  paper: dict[str, float]
  lower_is_better: bool = False

  def items(self, data_dir: str, limit: int | None = None, seed: int = 0) -> list[Item]:
    """The benchmark's items, or a seeded random subset of `limit` of them in data set order."""
    items = self.read(data_dir)
    if not items:
      raise BenchmarkDataError(f"{self.name}: no items under {data_dir}")
    if limit is not None and limit < len(items):
      keep = set(random.Random(seed).sample(range(len(items)), limit))
      items = [item for i, item in enumerate(items) if i in keep]
    return items


# --- readers -------------------------------------------------------------------------------------
def _caption_text(caption: str) -> str:
  """A caption as one line of a task string ('|' would split it)."""
  return " ".join(caption.replace("|", " ").split())


def read_coco_karpathy(data_dir: str) -> list[Item]:
  """The Karpathy test split of MS-COCO 2014 (5000 images in the full file)."""
  root = filesystem.resolve(data_dir)
  index = root / "dataset_coco.json"
  if not index.exists():
    raise BenchmarkDataError(f"{index} not found: coco_caption reads Karpathy's dataset_coco.json with the "
                             "val2014/ images beside it")
  try:
    images = json.loads(index.read_text())["images"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise BenchmarkDataError(f"{index}: not Karpathy's dataset_coco.json ({e})") from None
  items = []
  for entry in images:
    if entry.get("split") != "test":
      continue
    path = root / entry["filepath"] / entry["filename"]
    references = tuple(s["raw"].strip() for s in entry["sentences"])
    items.append(Item(str(entry.get("cocoid", entry["filename"])), f"image|text|{path}", str(path), references))
  return items


def read_coco_captions(data_dir: str) -> list[Item]:
  """Every caption of MS-COCO 2014 val (202,654 in the full file), in annotation id order."""
  root = filesystem.resolve(data_dir)
  candidates = [root / "annotations" / "captions_val2014.json", root / "captions_val2014.json"]
  path = next((c for c in candidates if c.exists()), None)
  if path is None:
    raise BenchmarkDataError(f"{candidates[0]} not found: coco_t2i reads COCO's captions_val2014.json "
                             "(annotations/ as the annotations archive unpacks)")
  try:
    index = json.loads(path.read_text())
    captions = sorted((int(a["id"]), int(a["image_id"]), str(a["caption"])) for a in index["annotations"])
    files = {int(image["id"]): str(image["file_name"]) for image in index["images"]}
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise BenchmarkDataError(f"{path}: not COCO's caption annotations ({e})") from None
  images = (path.parent.parent if path.parent.name == "annotations" else root) / "val2014"
  items = []
  for annotation_id, image_id, caption in captions:
    text = _caption_text(caption)
    image = str(images / files[image_id]) if image_id in files else None
    items.append(Item(str(annotation_id), f"text|image|{text}", None, (text,), image))
  return items


MUSICCAPS_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")


def _musiccaps_rows(data_dir: str) -> list[dict]:
  """The evaluation rows of `musiccaps-public.csv` in `data_dir`, in file order."""
  path = filesystem.resolve(data_dir) / "musiccaps-public.csv"
  if not path.exists():
    raise BenchmarkDataError(f"{path} not found: MusicCaps benchmarks read musiccaps-public.csv")
  rows = list(csv.DictReader(io.StringIO(path.read_text())))
  needed = {"ytid", "caption", "is_audioset_eval"}
  if not rows or not needed <= set(rows[0]):
    raise BenchmarkDataError(f"{path}: expected MusicCaps' columns (at least {', '.join(sorted(needed))})")
  return [row for row in rows if row["is_audioset_eval"].strip().lower() == "true"]


def _musiccaps_clip(data_dir: str, ytid: str) -> str:
  """A row's clip, `audio/{ytid}.{wav,flac,mp3}` (the .wav path when none is on disk)."""
  candidates = [filesystem.resolve(data_dir) / "audio" / f"{ytid}{suffix}" for suffix in MUSICCAPS_AUDIO_SUFFIXES]
  return str(next((c for c in candidates if c.exists()), candidates[0]))


def read_musiccaps_t2m(data_dir: str) -> list[Item]:
  """Text to music: one item per MusicCaps evaluation row (its clip is only the ceiling's)."""
  return [Item(row["ytid"], f"text|music|{_caption_text(row['caption'])}", None, (_caption_text(row["caption"]),),
               _musiccaps_clip(data_dir, row["ytid"])) for row in _musiccaps_rows(data_dir)]


def read_musiccaps_caption(data_dir: str) -> list[Item]:
  """Music captioning: one item per evaluation row; its clip is `audio/{ytid}.{wav,flac,mp3}` (a clip
  not on disk is an item that fails, as a missing image does)."""
  items = []
  for row in _musiccaps_rows(data_dir):
    clip = _musiccaps_clip(data_dir, row["ytid"])
    items.append(Item(row["ytid"], f"music|text|{clip}", clip, (_caption_text(row["caption"]),)))
  return items


def read_vctk(data_dir: str) -> list[Item]:
  """One zero-shot TTS item per VCTK speaker with at least two utterances (108 of 110 in VCTK 0.92),
  by speaker id; a speaker's pair is drawn from its own seed, so it is the same at any --limit."""
  root = filesystem.resolve(data_dir)
  speakers = sorted(filesystem.resolve(p).name for p in filesystem.glob(str(root / "txt" / "*")))
  if not speakers:
    raise BenchmarkDataError(f"no txt/{{speaker}}/ under {root}: vctk_tts reads VCTK's wav48_silence_trimmed/ and txt/")
  items = []
  for speaker in speakers:
    pairs = []
    for text_file in sorted(filesystem.glob(str(root / "txt" / speaker / "*.txt"))):
      utterance = filesystem.resolve(text_file).stem
      audio = root / "wav48_silence_trimmed" / speaker / f"{utterance}_mic1.flac"
      if audio.exists():
        pairs.append((utterance, str(audio), _caption_text(filesystem.resolve(text_file).read_text())))
    if len(pairs) < 2:
      continue
    prompt, target = random.Random(f"vctk/{speaker}").sample(pairs, 2)
    items.append(Item(speaker, f"text|speech|{target[2]}|{prompt[1]}", prompt[1], (target[2],), target[1]))
  return items


def read_librispeech(data_dir: str, subset: str = "test-clean") -> list[Item]:
  """Every utterance of a LibriSpeech subset (2620 in test-clean), sorted by utterance id.

  `data_dir` is the directory holding `test-clean/` (LibriSpeech/ as the archive unpacks) or
  `test-clean/` itself."""
  root = filesystem.resolve(data_dir)
  if (root / subset).is_dir():
    root = root / subset
  transcripts = sorted(filesystem.glob(str(root / "*" / "*" / "*.trans.txt")))
  if not transcripts:
    raise BenchmarkDataError(f"no {{speaker}}/{{chapter}}/*.trans.txt under {root}: librispeech_asr reads "
                             f"LibriSpeech's {subset}/ layout")
  items = []
  for transcript in transcripts:
    transcript = filesystem.resolve(transcript)
    for number, line in enumerate(transcript.read_text().splitlines(), 1):
      if not line.strip():
        continue
      utterance, _, text = line.strip().partition(" ")
      if not text:
        raise BenchmarkDataError(f"{transcript}:{number}: expected '{{utterance id}} {{TRANSCRIPT}}'")
      audio = transcript.parent / f"{utterance}.flac"
      items.append(Item(utterance, f"speech|text|{audio}", str(audio), (text,)))
  return sorted(items, key=lambda item: item.id)


BENCHMARKS = {b.name: b for b in (
    Benchmark("coco_caption", read_coco_karpathy, ("CIDEr", "BLEU-4"), {"CIDEr": 107.5}),
    Benchmark("coco_t2i", read_coco_captions, ("CLIP", "CLIP-100"), {"CLIP": 0.65}),
    Benchmark("librispeech_asr", read_librispeech, ("WER",), {"WER": 8.5}, lower_is_better=True),
    Benchmark("vctk_tts", read_vctk, ("WER", "SIM"), {"WER": 8.5, "SIM": 0.77}, lower_is_better=True),
    Benchmark("musiccaps_t2m", read_musiccaps_t2m, ("CLAP",), {"CLAP": 0.14}),
    Benchmark("musiccaps_caption", read_musiccaps_caption, ("CLAP", "CLAP-reference"), {}),
)}


def get(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
  return BENCHMARKS[name]
