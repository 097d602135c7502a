"""The batch tokenization job: input records -> pretokenized TFRecord shards + stats + rejects.

Work is split into shards by record index (`i % num_shards`), each shard into windows of
`window` records. A window's media are decoded and resampled by a thread pool, then sorted by
length and encoded in batches of `batch_size` (length bucketing keeps padding small), and its
samples are written in input order. Memory is bounded by one window, never by the corpus.

Per shard, next to `{corpus}-{split}-{i:05d}-of-{n:05d}` the job writes
`<shard>.stats.json` and `<shard>.rejects.jsonl`. All three are written to temporary names
and renamed, stats and rejects first and the shard last, so an existing shard file means a
finished shard: a rerun skips it, and a rerun after `kill -9` ends with the same bytes as an
uninterrupted run (record order and batching are deterministic).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from anygpt_jax.data.shards import Part, Sample, serialize_sample, shard_filename
from anygpt_jax.tokenizers import anygpt_data, audio_io, image as image_lib
from anygpt_jax.tokenizers.audio_io import MediaError
from anygpt_jax.tokenizers.inputs import InputRecord
from anygpt_jax.tokenizers.tfrecord import TFRecordWriter

TOKEN_KINDS = ("image", "speech", "music")


@dataclasses.dataclass
class JobConfig:
  """What to tokenize with, where to write, and how to batch.

  Model paths: `speech_model` a SpeechTokenizer directory (config.json + .pt), `music_model`
  an Encodec 32 kHz directory, `image_model` a SEED directory or `seed_quantizer.pt`.
  """

  output_dir: str
  corpus: str
  split: str = "train"
  num_shards: int = 1
  shard_indices: tuple[int, ...] | None = None  # None: every shard
  speech_model: str | None = None
  music_model: str | None = None
  image_model: str | None = None
  device: str = "cpu"
  batch_size: int = 16
  window: int = 256
  workers: int = 2
  max_speech_seconds: float = 60.0
  max_music_seconds: float = 1800.0
  music_clip_seconds: float = 5.0
  strict_formats: bool = False
  torch_threads: int = 0  # torch intra-op threads; 0 keeps torch's default

  def shards(self) -> tuple[int, ...]:
    if self.shard_indices is None:
      return tuple(range(self.num_shards))
    for i in self.shard_indices:
      if not 0 <= i < self.num_shards:
        raise ValueError(f"shard index {i} outside [0, {self.num_shards})")
    return tuple(self.shard_indices)


@dataclasses.dataclass
class RecordResult:
  """The outcome of one input record: a serialized sample, or a rejection reason."""

  id: str
  source: str
  reason: str = ""
  sample: bytes = b""
  tokens: dict = dataclasses.field(default_factory=dict)
  text_chars: int = 0
  audio_seconds: float = 0.0


# --- tokenizer workers (loaded lazily, only for the kinds a shard has) -----------------------
class Tokenizers:
  """Holds the tokenizer workers a job needs; each is built on first use."""

  def __init__(self, cfg: JobConfig):
    self.cfg = cfg
    self._workers = {}
    if cfg.torch_threads:
      import torch
      torch.set_num_threads(cfg.torch_threads)

  def get(self, kind: str):
    if kind not in self._workers:
      path = {"speech": self.cfg.speech_model, "music": self.cfg.music_model, "image": self.cfg.image_model}[kind]
      if path is None:
        self._workers[kind] = None
      elif kind == "speech":
        from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker
        self._workers[kind] = SpeechTokenizerWorker(path, self.cfg.device)
      elif kind == "music":
        from anygpt_jax.tokenizers.music import EncodecMusicWorker
        self._workers[kind] = EncodecMusicWorker(path, self.cfg.device, self.cfg.music_clip_seconds)
      else:
        self._workers[kind] = image_lib.SeedImageWorker(path, self.cfg.device)
    worker = self._workers[kind]
    if worker is None:
      raise MediaError("no_tokenizer", f"no --{kind}-model given")
    return worker


# --- one window: load in parallel, encode in length-sorted batches ---------------------------
def _load(record: InputRecord, toks: Tokenizers, cfg: JobConfig):
  """The decoded media of one record (wave or image), or a MediaError."""
  try:
    worker = toks.get(record.kind)
    if record.kind == "image":
      return image_lib.load_image(record.path, strict_rgb=cfg.strict_formats)
    limit = cfg.max_speech_seconds if record.kind == "speech" else cfg.max_music_seconds
    wave = audio_io.load_audio(record.path, worker.sample_rate, limit, strict_mono=cfg.strict_formats)
    if record.kind == "music":
      wave = worker.clip(wave)
    if len(wave) < worker.hop:
      raise MediaError("too_short", f"{record.path}: {len(wave)} samples, under one code frame")
    return wave
  except MediaError as e:
    return e


def _encode_kind(kind: str, items: list, toks: Tokenizers, batch_size: int) -> list[np.ndarray]:
  """Codes for `items` (waves or images), batched after sorting by length; returned in item order."""
  worker = toks.get(kind)
  order = sorted(range(len(items)), key=lambda i: -len(items[i])) if kind != "image" else list(range(len(items)))
  codes = [None] * len(items)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    batch = [items[i] for i in idx]
    if kind == "speech":
      out = worker.encode_semantic(batch)
    else:
      out = worker.encode_batch(batch)
    for i, c in zip(idx, out):
      codes[i] = c
  return codes


def _media_result(record: InputRecord, codes: np.ndarray, seconds: float) -> RecordResult:
  sample = Sample(record.id, [Part(record.kind, codes=codes.tolist()), Part("text", text=record.text)],
                  duration_s=seconds, source=record.source)
  return RecordResult(record.id, record.source, sample=serialize_sample(sample), tokens={record.kind: len(codes)},
                      text_chars=len(record.text), audio_seconds=seconds)


def _anygpt_result(record: InputRecord) -> RecordResult:
  try:
    sample = anygpt_data.record_to_sample(record.data, record.id, record.source)
  except anygpt_data.AnyGPTDataError as e:
    return RecordResult(record.id, record.source, reason=e.reason)
  tokens, chars = {}, 0
  for p in sample.parts:
    if p.kind == "text":
      chars += len(p.text)
    else:
      tokens[p.kind] = tokens.get(p.kind, 0) + len(p.codes)
  # Seconds implied by the codes: speech 50 codes/s, music 4 codebooks x 50 frames/s.
  seconds = tokens.get("speech", 0) / 50.0 + tokens.get("music", 0) / 200.0
  return RecordResult(sample.id, record.source, sample=serialize_sample(sample), tokens=tokens, text_chars=chars,
                      audio_seconds=seconds)


def process_window(records: list[InputRecord], toks: Tokenizers, cfg: JobConfig,
                   pool: concurrent.futures.Executor | None) -> list[RecordResult]:
  """Tokenizes one window of records; results come back in input order."""
  results: list[RecordResult | None] = [None] * len(records)
  media_idx = []
  for i, r in enumerate(records):
    if r.reject:
      results[i] = RecordResult(r.id, r.source, reason=r.reject)
    elif r.kind == "anygpt":
      results[i] = _anygpt_result(r)
    elif not r.text.strip():
      results[i] = RecordResult(r.id, r.source, reason="missing_text")
    else:
      media_idx.append(i)
  # Build the workers here, not in the pool's threads, so each loads once.
  for kind in sorted({records[i].kind for i in media_idx}):
    try:
      toks.get(kind)
    except MediaError:
      pass  # `_load` reports `no_tokenizer` for each record of this kind
  load = lambda i: _load(records[i], toks, cfg)
  loaded = list(pool.map(load, media_idx)) if pool is not None else [load(i) for i in media_idx]
  by_kind: dict[str, list[tuple[int, object]]] = {}
  for i, media in zip(media_idx, loaded):
    if isinstance(media, MediaError):
      results[i] = RecordResult(records[i].id, records[i].source, reason=media.reason)
    else:
      by_kind.setdefault(records[i].kind, []).append((i, media))
  for kind in sorted(by_kind):
    idx, items = zip(*by_kind[kind])
    codes = _encode_kind(kind, list(items), toks, cfg.batch_size)
    for i, item, c in zip(idx, items, codes):
      seconds = 0.0 if kind == "image" else round(len(item) / toks.get(kind).sample_rate, 4)
      results[i] = _media_result(records[i], c, seconds)
  return results


# --- shards ----------------------------------------------------------------------------------
def shard_records(records: Iterable[InputRecord], index: int, count: int) -> Iterator[InputRecord]:
  """The records of shard `index`: every `count`-th record starting at `index`."""
  return itertools.islice(records, index, None, count)


def windows(records: Iterable[InputRecord], size: int) -> Iterator[list[InputRecord]]:
  it = iter(records)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


class ShardStats:
  """Counts for one shard; `to_json` gives the keys the data pipeline reads."""

  def __init__(self, corpus: str, split: str, index: int, count: int):
    self.corpus, self.split, self.index, self.count = corpus, split, index, count
    self.records_in = self.records_out = self.text_chars = 0
    self.audio_seconds = 0.0
    self.rejected: dict[str, int] = {}
    self.tokens = {k: 0 for k in TOKEN_KINDS}

  def add(self, r: RecordResult) -> None:
    self.records_in += 1
    if r.reason:
      self.rejected[r.reason] = self.rejected.get(r.reason, 0) + 1
      return
    self.records_out += 1
    self.text_chars += r.text_chars
    self.audio_seconds += r.audio_seconds
    for k, n in r.tokens.items():
      self.tokens[k] += n

  def to_json(self) -> dict:
    return {
        "corpus": self.corpus, "split": self.split, "shard_index": self.index, "num_shards": self.count,
        "records_in": self.records_in, "records_out": self.records_out,
        "rejected": dict(sorted(self.rejected.items())), "tokens": self.tokens, "text_chars": self.text_chars,
        "audio_seconds": round(self.audio_seconds, 3),
    }


def shard_paths(cfg: JobConfig, index: int) -> dict[str, pathlib.Path]:
  base = pathlib.Path(cfg.output_dir) / shard_filename(cfg.corpus, cfg.split, index, cfg.num_shards)
  return {"shard": base, "stats": base.with_name(base.name + ".stats.json"),
          "rejects": base.with_name(base.name + ".rejects.jsonl")}


class ShardWriter:
  """Writes one shard to temporary files; `commit` renames stats, rejects, then the shard."""

  def __init__(self, cfg: JobConfig, index: int):
    self.paths = shard_paths(cfg, index)
    self.paths["shard"].parent.mkdir(parents=True, exist_ok=True)
    self.tmp = {k: p.with_name(p.name + ".tmp") for k, p in self.paths.items()}
    self.writer = TFRecordWriter(str(self.tmp["shard"]))
    self.rejects = open(self.tmp["rejects"], "w", encoding="utf-8")
    self.stats = ShardStats(cfg.corpus, cfg.split, index, cfg.num_shards)

  def add(self, r: RecordResult) -> None:
    self.stats.add(r)
    if r.reason:
      self.rejects.write(json.dumps({"id": r.id, "reason": r.reason, "source": r.source}, ensure_ascii=False) + "\n")
    else:
      self.writer.write(r.sample)

  def commit(self) -> dict:
    self.writer.close()
    self.rejects.close()
    self.tmp["stats"].write_text(json.dumps(self.stats.to_json(), indent=2, sort_keys=True) + "\n")
    for key in ("stats", "rejects", "shard"):  # the shard last: its presence marks the shard done
      os.replace(self.tmp[key], self.paths[key])
    return self.stats.to_json()


def finished_stats(cfg: JobConfig, index: int) -> dict | None:
  """The stats of a shard already written by an earlier run, or None."""
  paths = shard_paths(cfg, index)
  if paths["shard"].exists() and paths["stats"].exists():
    return json.loads(paths["stats"].read_text())
  return None


def run_local(cfg: JobConfig, make_records: Callable[[], Iterable[InputRecord]],
              on_progress: Callable[[RecordResult], None] | None = None,
              toks: Tokenizers | None = None) -> list[dict]:
  """Tokenizes every selected shard in this process; returns each shard's stats (skipped ones too).

  `toks` lets a caller reuse already loaded tokenizer workers (e.g. across several jobs).
  """
  toks = toks or Tokenizers(cfg)
  all_stats = []
  with concurrent.futures.ThreadPoolExecutor(max(1, cfg.workers)) as pool:
    for index in cfg.shards():
      done = finished_stats(cfg, index)
      if done is not None:
        all_stats.append(done)
        continue
      writer = ShardWriter(cfg, index)
      for window in windows(shard_records(make_records(), index, cfg.num_shards), cfg.window):
        for result in process_window(window, toks, cfg, pool):
          writer.add(result)
          if on_progress:
            on_progress(result)
      all_stats.append(writer.commit())
  return all_stats


def summarize(all_stats: list[dict], seconds: float) -> dict:
  """Totals over shards, for the command line's last line."""
  total = {"shards": len(all_stats), "records_in": 0, "records_out": 0, "rejected": {},
           "tokens": {k: 0 for k in TOKEN_KINDS}, "audio_seconds": 0.0, "wall_seconds": round(seconds, 2)}
  for s in all_stats:
    total["records_in"] += s["records_in"]
    total["records_out"] += s["records_out"]
    total["audio_seconds"] += s["audio_seconds"]
    for k, n in s["rejected"].items():
      total["rejected"][k] = total["rejected"].get(k, 0) + n
    for k, n in s["tokens"].items():
      total["tokens"][k] += n
  total["audio_seconds"] = round(total["audio_seconds"], 3)
  return total


class Progress:
  """A tqdm bar over records with items/s and audio seconds/s (stderr)."""

  def __init__(self, enabled: bool):
    self.bar = None
    self.audio = 0.0
    self.start = time.time()
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(unit="rec", dynamic_ncols=True, mininterval=0.5)

  def __call__(self, r: RecordResult) -> None:
    if self.bar is None:
      return
    self.audio += r.audio_seconds
    self.bar.update(1)
    elapsed = max(time.time() - self.start, 1e-6)
    self.bar.set_postfix(audio_s_per_s=f"{self.audio / elapsed:.1f}", refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()
