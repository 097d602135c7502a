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

Item order is the data set's (sorted for LibriSpeech); `limit` keeps a seeded random subset of that
size, in that order, so a small run is a fixed sample that reruns and other processes agree on.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Callable

from anygpt_jax import filesystem


class BenchmarkDataError(ValueError):
  """A data set that is not in its benchmark's published layout; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One benchmark example: its id in the data set, the request (an AnyGPT task string), the media
  path it reads (or None) and the reference texts it is scored against."""

  id: str
  task: str
  media: str | None
  references: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark: how to read its items, its metrics, and the paper's score on its headline metric.

  Attributes:
    name: the benchmark's name on the command line and in reports.
    read: (data directory) -> every item, in the data set's order.
    metrics: the metric names the scorer reports, headline first.
    paper: {metric: AnyGPT's score in the paper}.
    lower_is_better: the headline metric improves downwards (WER).
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
    annotations = json.loads(path.read_text())["annotations"]
    captions = sorted((int(a["id"]), str(a["caption"])) for a in annotations)
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise BenchmarkDataError(f"{path}: not COCO's caption annotations ({e})") from None
  items = []
  for annotation_id, caption in captions:
    text = " ".join(caption.replace("|", " ").split())
    items.append(Item(str(annotation_id), f"text|image|{text}", None, (text,)))
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
)}


def get(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
  return BENCHMARKS[name]
