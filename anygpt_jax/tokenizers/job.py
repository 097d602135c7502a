"""The batch tokenization job: input records -> pretokenized TFRecord shards + stats + rejects.

A plan says which records make each output shard: `InputShardPlan` maps input shards (a tar,
a JSONL part, a TSV) to output shards, `ModuloPlan` deals one record stream out by index.
Each shard is processed in windows of `window` records: the window's media are decoded and
resampled by a thread pool, each kind is encoded in length-sorted batches of `batch_size`
(length bucketing keeps padding small) and samples are written in input order. Memory is
bounded by one window, never by the corpus.

Per shard `{corpus}-{split}-{i:05d}-of-{n:05d}` the job writes `<shard>.stats.json` (counts,
rejections by category with example details, the shard's inputs) and `<shard>.rejects.jsonl`
(one line per rejected record or dropped medium: id, reason, detail, source). All three are
written under `<output_dir>/.tmp/`, which no shard glob matches, and renamed into place,
stats and rejects first and the shard last (for a `gs://`-style output directory: written in a
local temporary directory and copied up through `anygpt_jax.filesystem` in the same order, since
object stores have no rename): an existing shard file means a finished shard,
a rerun skips it, and a rerun after `kill -9` ends with the same bytes as an uninterrupted
run (record order and batching are deterministic).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from etils import epath

from anygpt_jax import filesystem
from anygpt_jax.data.shards import Part, Sample, serialize_sample, shard_filename
from anygpt_jax.tokenizers import anygpt_data, audio_io, provenance
from anygpt_jax.tokenizers.media import MediaError, MediaRef
from anygpt_jax.tokenizers.inputs import InputRecord
from anygpt_jax.tokenizers.tfrecord import TFRecordWriter
from anygpt_jax.vocabulary.layout import MODALITIES, MODALITY_NAMES, control_token_in_text

TOKEN_KINDS = MODALITY_NAMES


@dataclasses.dataclass
class JobConfig:
  """What to tokenize with, where to write, and how to batch.

  Model paths: `speech_model` a SpeechTokenizer directory (config.json + .pt), `music_model`
  an Encodec 32 kHz directory, `image_model` a SEED directory or `seed_quantizer.pt` (one
  `{modality}_model` per modality of the vocabulary layout).
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
  prefetch: int = 1  # windows decoded ahead of the one being encoded
  max_speech_seconds: float = 60.0
  max_music_seconds: float = 1800.0
  music_clip_seconds: float = 5.0
  strict_formats: bool = False
  drop_duplicate_ids: bool = False  # a record whose id a shard of this run already holds: rejected, not kept
  rebuild: bool = False  # remake finished shards whose inputs, settings or tokenizers changed
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
  """The outcome of one input record: a serialized sample, or a rejection (category + detail).

  `dropped` lists media left out of a kept sample (an interleaved document's unreadable image):
  one {"part", "reason", "detail"} per medium.
  """

  id: str
  source: str
  reason: str = ""
  detail: str = ""
  sample: bytes = b""
  tokens: dict = dataclasses.field(default_factory=dict)
  text_chars: int = 0
  audio_seconds: float = 0.0
  dropped: list = dataclasses.field(default_factory=list)


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
      path = getattr(self.cfg, f"{kind}_model")
      if path is None:
        self._workers[kind] = None
      elif kind == "speech":
        from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker
        self._workers[kind] = SpeechTokenizerWorker(path, self.cfg.device)
      elif kind == "music":
        from anygpt_jax.tokenizers.music import EncodecMusicWorker
        self._workers[kind] = EncodecMusicWorker(path, self.cfg.device, self.cfg.music_clip_seconds)
      else:
        from anygpt_jax.tokenizers import image as image_lib  # torch: only jobs that read media import it
        self._workers[kind] = image_lib.SeedImageWorker(path, self.cfg.device)
    worker = self._workers[kind]
    if worker is None:
      raise MediaError("no_tokenizer", f"no --{kind}_model given")
    return worker


# --- one window: load in parallel, encode in length-sorted batches ---------------------------
def _load(kind: str, ref: MediaRef, toks: Tokenizers, cfg: JobConfig):
  """The decoded medium (wave or image), or the MediaError saying why it cannot be used.

  Only MediaError is caught: any other exception is a bug and stops the job.
  """
  try:
    worker = toks.get(kind)
    if kind == "image":
      from anygpt_jax.tokenizers import image as image_lib
      return image_lib.load_image(ref, strict_rgb=cfg.strict_formats)
    limit = cfg.max_speech_seconds if kind == "speech" else cfg.max_music_seconds
    wave = audio_io.load_audio(ref, worker.sample_rate, limit, strict_mono=cfg.strict_formats)
    if kind == "music":
      wave = worker.clip(wave)
    if len(wave) < worker.hop:
      raise MediaError("too_short", f"{ref.name}: {len(wave)} samples, under one code frame")
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


def _anygpt_result(record: InputRecord, cfg: JobConfig) -> RecordResult:
  try:
    sample = anygpt_data.record_to_sample(record.data, record.id, record.source)
  except anygpt_data.AnyGPTDataError as e:
    return RecordResult(record.id, record.source, reason=e.reason, detail=e.detail)
  too_long = _overlong_span(sample, cfg)
  if too_long:
    return RecordResult(record.id, record.source, reason="too_long", detail=too_long)
  tokens, chars = {}, 0
  for p in sample.parts:
    if p.kind == "text":
      chars += len(p.text)
    else:
      tokens[p.kind] = tokens.get(p.kind, 0) + len(p.codes)
  # Seconds implied by the codes of the timed modalities (speech 50 codes/s, music 4 x 50 frames/s).
  seconds = sum(tokens.get(m.name, 0) / m.codes_per_second for m in MODALITIES if m.codes_per_second)
  return RecordResult(sample.id, record.source, sample=serialize_sample(sample), tokens=tokens, text_chars=chars,
                      audio_seconds=seconds)


def _overlong_span(sample: Sample, cfg: JobConfig) -> str:
  """Why a code string is longer than the job takes the same medium (`--max_{speech,music}_seconds`), or ''."""
  limits = {"speech": cfg.max_speech_seconds, "music": cfg.max_music_seconds}
  rates = {m.name: m.codes_per_second for m in MODALITIES}
  for k, part in enumerate(sample.parts):
    if part.kind in limits and len(part.codes) > limits[part.kind] * rates[part.kind]:
      return (f"part {k}: a {part.kind} span of {len(part.codes)} codes ({len(part.codes) / rates[part.kind]:g} s) "
              f"is over --max_{part.kind}_seconds {limits[part.kind]:g}")
  return ""


def _precheck(record: InputRecord, cfg: JobConfig) -> RecordResult | None:
  """A result for records that need no media work (rejected, pretokenized, captionless pairs)."""
  if record.reject:
    return RecordResult(record.id, record.source, reason=record.reject, detail=record.reject_detail)
  if record.kind == "anygpt":
    return _anygpt_result(record, cfg)
  if record.kind in TOKEN_KINDS and not "".join(p.get("text", "") for p in record.raw_parts()).strip():
    return RecordResult(record.id, record.source, reason="missing_text", detail=f"no caption for {record.path or record.id}")
  for k, part in enumerate(record.raw_parts()):  # text is text: never re-read as a control token
    found = control_token_in_text(part["text"], chat=bool(part.get("role"))) if part["kind"] == "text" else None
    if found:
      where = f"part {k} ({part.get('role') or 'text'}), char {found[0]}"
      return RecordResult(record.id, record.source, reason="special_token_in_text",
                          detail=f"{where}: {found[1]!r} is a control token, not text")
  return None


def _assemble(record: InputRecord, raw: list[dict], media: dict[int, tuple], dropped: list) -> RecordResult:
  """The sample of `record` from its raw parts and their codes (`media`: part index -> (codes, seconds))."""
  parts, tokens, chars, seconds = [], {}, 0, 0.0
  for k, rp in enumerate(raw):
    if rp["kind"] == "text":
      if rp["text"] or record.kind in TOKEN_KINDS:  # verbatim: spaces next to media are part of the text
        parts.append(Part("text", text=rp["text"], role=rp.get("role", "")))
        chars += len(rp["text"])
    elif k in media:
      codes, secs = media[k]
      parts.append(Part(rp["kind"], codes=codes.tolist(), role=rp.get("role", "")))
      tokens[rp["kind"]] = tokens.get(rp["kind"], 0) + len(codes)
      seconds += secs
  if not tokens and record.kind == "document":  # an interleaved document whose every image was dropped
    return RecordResult(record.id, record.source, reason="no_media_left",
                        detail="; ".join(f"part {d['part']}: {d['reason']}: {d['detail']}" for d in dropped)
                        or "the record has no media")
  sample = Sample(record.id, parts, duration_s=round(seconds, 4), source=record.source)
  return RecordResult(record.id, record.source, sample=serialize_sample(sample), tokens=tokens, text_chars=chars,
                      audio_seconds=round(seconds, 4), dropped=dropped)


@dataclasses.dataclass
class PreparedWindow:
  """A window whose media are being decoded: `loaded` holds futures (or values without a pool)."""

  records: list[InputRecord]
  results: list
  raws: dict[int, list[dict]]
  tasks: list[tuple]
  loaded: list


def prepare_window(records: list[InputRecord], toks: Tokenizers, cfg: JobConfig,
                   pool: concurrent.futures.Executor | None) -> PreparedWindow:
  """Checks the window's records and starts decoding every medium (in `pool`, without waiting)."""
  results: list[RecordResult | None] = [None] * len(records)
  raws: dict[int, list[dict]] = {}
  tasks = []  # (record index, part index, kind, ref)
  for i, r in enumerate(records):
    results[i] = _precheck(r, cfg)
    if results[i] is None:
      raws[i] = r.raw_parts()
      tasks += [(i, k, p["kind"], MediaRef.from_dict(p["media"])) for k, p in enumerate(raws[i]) if p["kind"] != "text"]
  # Build the workers here, not in the pool's threads, so each loads once.
  for kind in sorted({t[2] for t in tasks}):
    try:
      toks.get(kind)
    except MediaError:
      pass  # `_load` reports `no_tokenizer` for each medium of this kind
  if pool is not None:
    loaded = [pool.submit(_load, t[2], t[3], toks, cfg) for t in tasks]
  else:
    loaded = [_load(t[2], t[3], toks, cfg) for t in tasks]
  return PreparedWindow(records, results, raws, tasks, loaded)


def finish_window(w: PreparedWindow, toks: Tokenizers, cfg: JobConfig) -> list[RecordResult]:
  """Waits for the window's media, encodes each kind in length-sorted batches, assembles samples in order."""
  records, results, raws = w.records, w.results, w.raws
  loaded = [x.result() if isinstance(x, concurrent.futures.Future) else x for x in w.loaded]
  dropped: dict[int, list] = {i: list(records[i].dropped or []) for i in raws}
  by_kind: dict[str, list[tuple[int, int, object]]] = {}
  for (i, k, kind, _), item in zip(w.tasks, loaded):
    if results[i] is not None:
      continue  # the record is already rejected by an earlier medium
    if isinstance(item, MediaError):
      label = raws[i][k].get("label", k)
      if raws[i][k].get("optional"):
        dropped[i].append({"part": label, "reason": item.reason, "detail": item.detail})
      else:
        results[i] = RecordResult(records[i].id, records[i].source, reason=item.reason,
                                  detail=f"part {label}: {item.detail}" if records[i].parts is not None else item.detail)
    else:
      by_kind.setdefault(kind, []).append((i, k, item))
  media: dict[int, dict[int, tuple]] = {i: {} for i in raws}
  for kind in sorted(by_kind):
    entries = [e for e in by_kind[kind] if results[e[0]] is None]
    if not entries:
      continue
    codes = _encode_kind(kind, [e[2] for e in entries], toks, cfg.batch_size)
    rate = None if kind == "image" else toks.get(kind).sample_rate
    for (i, k, item), c in zip(entries, codes):
      media[i][k] = (c, 0.0 if rate is None else round(len(item) / rate, 4))
  for i in raws:
    if results[i] is None:
      results[i] = _assemble(records[i], raws[i], media[i], dropped[i])
  return results


def process_window(records: list[InputRecord], toks: Tokenizers, cfg: JobConfig,
                   pool: concurrent.futures.Executor | None) -> list[RecordResult]:
  """Tokenizes one window of records; results come back in input order."""
  return finish_window(prepare_window(records, toks, cfg, pool), toks, cfg)


def prefetched_results(plan_records: Iterable[InputRecord], toks: Tokenizers, cfg: JobConfig,
                       pool: concurrent.futures.Executor) -> Iterator[RecordResult]:
  """Results of every window in order, decoding up to `cfg.prefetch` windows ahead of the one encoding.

  The pool's threads decode and resample the next windows while the model encodes this one;
  memory holds at most `prefetch + 1` windows of decoded media.
  """
  pending: collections.deque[PreparedWindow] = collections.deque()
  for window in windows(plan_records, cfg.window):
    pending.append(prepare_window(window, toks, cfg, pool))
    if len(pending) > cfg.prefetch:
      yield from finish_window(pending.popleft(), toks, cfg)
  while pending:
    yield from finish_window(pending.popleft(), toks, cfg)


# --- shards ----------------------------------------------------------------------------------
class ModuloPlan:
  """Shard i holds every `num_shards`-th record of one record stream, starting at record i.

  For inputs that come as one list (a manifest, a folder, one transcripts file): every
  machine reads the whole stream and keeps its share.
  """

  def __init__(self, make_records: Callable[[], Iterable[InputRecord]], num_shards: int, inputs: Sequence[str] = ()):
    self.make_records, self.num_shards, self.inputs = make_records, num_shards, list(inputs)

  def records(self, index: int) -> Iterator[InputRecord]:
    return itertools.islice(self.make_records(), index, None, self.num_shards)

  def describe(self, index: int) -> dict:
    return {"inputs": self.inputs, "records": f"every {self.num_shards}th from record {index}"}


class InputShardPlan:
  """One input shard (a tar, a JSONL part, a TSV) -> `per_input` output shards, with no manifest.

  Output shard i reads only input `i // per_input` (keeping every `per_input`-th of its
  records from `i % per_input`), so machines split a job by `--shard_index` alone and each
  output shard's stats name its input. Inputs are taken in the sorted order given.
  """

  def __init__(self, inputs: Sequence[str], read: Callable[[str], Iterable[InputRecord]], per_input: int = 1,
               format: str = "", options=None):
    if not inputs:
      raise ValueError("no input shards")
    self.inputs, self.read, self.per_input = list(inputs), read, per_input
    # What `read` reads, when the caller says (the Ray engine reads webdataset tars with Ray Data's reader).
    self.format, self.options = format, options
    self.num_shards = len(self.inputs) * per_input

  def records(self, index: int) -> Iterator[InputRecord]:
    return itertools.islice(self.read(self.inputs[index // self.per_input]), index % self.per_input, None,
                            self.per_input)

  def describe(self, index: int) -> dict:
    d = {"inputs": [self.inputs[index // self.per_input]]}
    if self.per_input > 1:
      d["records"] = f"every {self.per_input}th from record {index % self.per_input}"
    return d


def as_plan(cfg: JobConfig, records_or_plan) -> "ModuloPlan | InputShardPlan":
  """A plan from a plan, or from a callable returning all records (split modulo `cfg.num_shards`)."""
  plan = records_or_plan if hasattr(records_or_plan, "records") else ModuloPlan(records_or_plan, cfg.num_shards)
  if plan.num_shards != cfg.num_shards:
    raise ValueError(f"the plan has {plan.num_shards} shards but the job config says {cfg.num_shards}")
  return plan


def windows(records: Iterable[InputRecord], size: int) -> Iterator[list[InputRecord]]:
  it = iter(records)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


# Details kept in the stats per rejection category (all of them are in the rejects file).
STATS_EXAMPLES = 3


class ShardStats:
  """Counts for one shard; `to_json` gives the keys the data pipeline reads."""

  def __init__(self, corpus: str, split: str, index: int, count: int, origin: dict | None = None,
               kept_ids: set[str] | None = None):
    self.corpus, self.split, self.index, self.count = corpus, split, index, count
    self.origin = origin or {}
    self.records_in = self.records_out = self.text_chars = 0
    self.audio_seconds = 0.0
    self.rejected: dict[str, int] = {}
    self.examples: dict[str, list[str]] = {}
    self.dropped: dict[str, int] = {}
    self.tokens = {k: 0 for k in TOKEN_KINDS}
    # Ids kept so far: this shard's, or (shared) those of every shard this job run writes.
    self.kept_ids: set[str] = set() if kept_ids is None else kept_ids
    self.duplicate_ids: list[str] = []  # kept records whose id an earlier kept record already has

  def is_duplicate(self, record_id: str) -> bool:
    return record_id in self.kept_ids

  def _example(self, reason: str, detail: str) -> None:
    shown = self.examples.setdefault(reason, [])
    if len(shown) < STATS_EXAMPLES:
      shown.append(detail)

  def add(self, r: RecordResult) -> None:
    self.records_in += 1
    if r.reason:
      self.rejected[r.reason] = self.rejected.get(r.reason, 0) + 1
      self._example(r.reason, f"{r.id}: {r.detail}")
      return
    for d in r.dropped:
      self.dropped[d["reason"]] = self.dropped.get(d["reason"], 0) + 1
      self._example(d["reason"], f"{r.id} part {d['part']} (dropped): {d['detail']}")
    self.records_out += 1
    if r.id in self.kept_ids:
      self.duplicate_ids.append(r.id)
    self.kept_ids.add(r.id)
    self.text_chars += r.text_chars
    self.audio_seconds += r.audio_seconds
    for k, n in r.tokens.items():
      self.tokens[k] += n

  def to_json(self) -> dict:
    return {
        "corpus": self.corpus, "split": self.split, "shard_index": self.index, "num_shards": self.count,
        **self.origin, "records_in": self.records_in, "records_out": self.records_out,
        "rejected": dict(sorted(self.rejected.items())), "dropped_media": dict(sorted(self.dropped.items())),
        "reject_examples": dict(sorted(self.examples.items())), "tokens": self.tokens,
        "text_chars": self.text_chars, "audio_seconds": round(self.audio_seconds, 3),
        "duplicate_ids": len(self.duplicate_ids), "duplicate_id_examples": self.duplicate_ids[:STATS_EXAMPLES],
    }


# Work in progress lives here, where no shard glob (`{corpus}-{split}-*-of-*` beside the
# shards) can see it; finished files are renamed out of it.
TMP_DIR = ".tmp"


def shard_paths(cfg: JobConfig, index: int) -> dict[str, epath.Path]:
  base = filesystem.resolve(cfg.output_dir) / shard_filename(cfg.corpus, cfg.split, index, cfg.num_shards)
  return {"shard": base, "stats": base.with_name(base.name + ".stats.json"),
          "rejects": base.with_name(base.name + ".rejects.jsonl")}


class ShardWriter:
  """Writes one shard under `<output_dir>/.tmp/` (a local temporary directory when the output is a
  URL); `commit` moves stats, rejects, then the shard into place."""

  def __init__(self, cfg: JobConfig, index: int, origin: dict | None = None, kept_ids: set[str] | None = None):
    self.paths = shard_paths(cfg, index)
    self.remote = not filesystem.is_local(self.paths["shard"])
    if self.remote:
      tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix="anygpt-tokenize-"))
    else:
      tmp_dir = pathlib.Path(self.paths["shard"].parent) / TMP_DIR
      tmp_dir.mkdir(parents=True, exist_ok=True)
    self.tmp = {k: tmp_dir / p.name for k, p in self.paths.items()}
    self.writer = TFRecordWriter(str(self.tmp["shard"]))
    self.rejects = open(self.tmp["rejects"], "w", encoding="utf-8")
    self.stats = ShardStats(cfg.corpus, cfg.split, index, cfg.num_shards, origin, kept_ids)
    self.drop_duplicate_ids = cfg.drop_duplicate_ids

  def _reject_line(self, **fields) -> None:
    self.rejects.write(json.dumps(fields, ensure_ascii=False) + "\n")

  def add(self, r: RecordResult) -> None:
    if not r.reason and self.drop_duplicate_ids and self.stats.is_duplicate(r.id):
      r = RecordResult(r.id, r.source, reason="duplicate_id",
                       detail=f"id {r.id!r} is already in a shard this run wrote")
    self.stats.add(r)
    if r.reason:
      self._reject_line(id=r.id, reason=r.reason, detail=r.detail, source=r.source)
      return
    for d in r.dropped:  # the sample is kept without this medium
      self._reject_line(id=r.id, reason=d["reason"], detail=d["detail"], source=r.source, dropped_part=d["part"])
    self.writer.write(r.sample)

  def commit(self) -> dict:
    self.writer.close()
    self.rejects.close()
    self.tmp["stats"].write_text(json.dumps(self.stats.to_json(), indent=2, sort_keys=True) + "\n")
    for key in ("stats", "rejects", "shard"):  # the shard last: its presence marks the shard done
      if self.remote:
        filesystem.copy_file(self.tmp[key], self.paths[key])
      else:
        os.replace(self.tmp[key], self.paths[key])
    if self.remote:
      shutil.rmtree(self.tmp["shard"].parent, ignore_errors=True)
    # A local `.tmp/` stays: machines sharing the output directory may be writing other shards in it.
    return self.stats.to_json()


def shard_origin(cfg: JobConfig, plan, index: int) -> dict:
  """What shard `index` is made from, for its stats: the plan's description and its provenance."""
  described = plan.describe(index)
  return {**described, "provenance": provenance.shard_provenance(cfg, described.get("inputs", []))}


def finished_stats(cfg: JobConfig, plan, index: int) -> dict | None:
  """The stats of a shard an earlier run finished from the same inputs, settings and tokenizers;
  None when it is to be made (absent, or changed and `cfg.rebuild`).

  Raises provenance.StaleShardError naming what changed otherwise. Stats written before shards
  recorded their provenance are taken as they are.
  """
  paths = shard_paths(cfg, index)
  if not (paths["shard"].exists() and paths["stats"].exists()):
    return None
  stats = json.loads(paths["stats"].read_text())
  if "provenance" not in stats:
    return stats
  changed = provenance.changes(stats["provenance"], shard_origin(cfg, plan, index)["provenance"])
  if not changed:
    return stats
  if cfg.rebuild:
    return None
  raise provenance.StaleShardError(
      f"{paths['shard']} was made from other inputs or settings than this run's: {'; '.join(changed)}. "
      f"Pass --rebuild to remake it (each file is replaced atomically, the shard last), or write to "
      f"another --output_dir")


def run_local(cfg: JobConfig, records_or_plan, on_progress: Callable[[RecordResult], None] | None = None,
              toks: Tokenizers | None = None) -> list[dict]:
  """Tokenizes every selected shard in this process; returns each shard's stats (skipped ones too).

  `records_or_plan`: a `ModuloPlan`/`InputShardPlan`, or a callable returning all records
  (split modulo `cfg.num_shards`). `toks` lets a caller reuse loaded tokenizer workers.
  """
  plan = as_plan(cfg, records_or_plan)
  toks = toks or Tokenizers(cfg)
  all_stats = []
  kept_ids: set[str] = set()  # duplicates are found across the shards this run writes
  with concurrent.futures.ThreadPoolExecutor(max(1, cfg.workers)) as pool:
    for index in cfg.shards():
      done = finished_stats(cfg, plan, index)
      if done is not None:
        all_stats.append(done)
        continue
      writer = ShardWriter(cfg, index, shard_origin(cfg, plan, index), kept_ids)
      for result in prefetched_results(plan.records(index), toks, cfg, pool):
        writer.add(result)
        if on_progress:
          on_progress(result)
      all_stats.append(writer.commit())
  return all_stats


def summarize(all_stats: list[dict], seconds: float) -> dict:
  """Totals over shards, for the command line's last line."""
  total = {"shards": len(all_stats), "records_in": 0, "records_out": 0, "rejected": {}, "dropped_media": {},
           "tokens": {k: 0 for k in TOKEN_KINDS}, "audio_seconds": 0.0, "duplicate_ids": 0,
           "wall_seconds": round(seconds, 2)}
  for s in all_stats:
    total["records_in"] += s["records_in"]
    total["records_out"] += s["records_out"]
    total["duplicate_ids"] += s.get("duplicate_ids", 0)  # stats of shards written before it was counted
    total["audio_seconds"] += s["audio_seconds"]
    for key in ("rejected", "dropped_media"):
      for k, n in s.get(key, {}).items():
        total[key][k] = total[key].get(k, 0) + n
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
