"""A corpus's shard files, how they are spread over hosts, and the SeqIO data source reading them.

The tokenization job writes, per shard, `{corpus}-{split}-{i:05d}-of-{n:05d}` (TFRecord) and
beside it `<shard>.stats.json`, `<shard>.rejects.jsonl` and, while it runs or after it was
killed, `*.tmp` files. `shard_files` keeps exactly the files whose name is a shard name
(`shards.shard_filename`), so a reader never opens the others.

Hosts (input shards of a multi-process run) get whole files, balanced by the records each file
holds (`records_out` of its stats file), when that gives every host records; otherwise every
host reads all files and keeps every n-th record. When a split has fewer records than hosts,
`HostShareError` names the corpus, the hosts left without data and the files, before training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import re
from typing import Sequence

import seqio
import tensorflow as tf
from etils import epath

from anygpt_jax.data.shards import ShardError, parse_shard_filename
from anygpt_jax.errors import UserError

STATS_SUFFIX = ".stats.json"


class HostShareError(UserError, ValueError):
  """Some host (input shard) would read no record of a corpus split."""


class CorruptShardError(UserError, ValueError):
  """A shard file whose records TensorFlow cannot read (cut short, overwritten); names the file."""


def read_error(shard: str) -> str | None:
  """Why `shard`'s records do not read (TensorFlow's first line), or None when every one does."""
  try:
    tf.data.TFRecordDataset(shard).reduce(0, lambda n, _: n + 1).numpy()
  except tf.errors.OpError as e:
    lines = e.message.strip().splitlines()
    # Without TF's decorations: `{{function_node ...}}` before, `[Op:...] name:` after.
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", lines[0]) if lines else type(e).__name__
  return None


def shard_files(pattern: str, corpus: str | None = None, split: str | None = None) -> list[str]:
  """Shard files matching the glob `pattern` (local, relative or gs://), sorted.

  Only names of the form `{corpus}-{split}-{i:05d}-of-{n:05d}` are kept (and, when given, only
  those of `corpus` and `split`); stats, rejects and `.tmp` files beside them never are. A set
  with missing indices (a tokenization job still running) is read as it is, with a warning.
  """
  kept = []
  for path in tf.io.gfile.glob(pattern):
    try:
      name = parse_shard_filename(posixpath.basename(path))
    except ShardError:
      continue
    if (corpus is None or name["corpus"] == corpus) and (split is None or name["split"] == split):
      kept.append((path, name))
  counts = {n["count"] for _, n in kept}
  for count in counts:
    have = {n["index"] for _, n in kept if n["count"] == count}
    missing = sorted(set(range(count)) - have)
    if missing:
      logging.warning("%s: %d of %d shards are missing (indices %s%s)", pattern, len(missing), count,
                      missing[:8], "..." if len(missing) > 8 else "")
  return sorted(p for p, _ in kept)


def read_stats(shard: str) -> dict | None:
  """The tokenization job's stats of one shard, or None when it has no stats file."""
  path = epath.Path(shard + STATS_SUFFIX)
  if not path.exists():
    return None
  return json.loads(path.read_text())


def count_records(shard: str) -> int:
  """Records in one shard: its stats' `records_out`, else counted by reading the file."""
  stats = read_stats(shard)
  if stats is not None and "records_out" in stats:
    return int(stats["records_out"])
  try:
    return int(tf.data.TFRecordDataset(shard).reduce(0, lambda n, _: n + 1).numpy())
  except tf.errors.OpError as e:
    raise CorruptShardError(f"{shard}: its records do not read ({read_error(shard) or e.message}); "
                            "tokenize it again or leave it out") from e


@dataclasses.dataclass(frozen=True)
class HostPlan:
  """What one host reads: `files`, and of their records every `record_stride`-th from `record_offset`."""

  files: tuple[str, ...]
  records: int
  record_offset: int = 0
  record_stride: int = 1


def plan_hosts(files: Sequence[str], records: Sequence[int], num_hosts: int) -> list[HostPlan]:
  """Spreads a split's shard files over `num_hosts` so each gets its share of records.

  Whole files, largest first to the host with the fewest records so far, when every host then
  has records; otherwise every host reads every file and keeps every `num_hosts`-th record.
  A host may still get no record (fewer records than hosts): `check_plans` reports it.
  """
  if len(files) != len(records):
    raise ValueError(f"{len(files)} files but {len(records)} record counts")
  if num_hosts == 1:
    return [HostPlan(tuple(files), sum(records))]
  if len(files) >= num_hosts:
    assigned = [[] for _ in range(num_hosts)]
    totals = [0] * num_hosts
    for i in sorted(range(len(files)), key=lambda i: (-records[i], i)):
      host = min(range(num_hosts), key=lambda h: (totals[h], len(assigned[h]), h))
      assigned[host].append(i)
      totals[host] += records[i]
    if min(totals) > 0:
      return [HostPlan(tuple(files[i] for i in sorted(a)), t) for a, t in zip(assigned, totals)]
  total = sum(records)
  return [HostPlan(tuple(files), len(range(h, total, num_hosts)), h, num_hosts) for h in range(num_hosts)]


def check_plans(corpus: str, split: str, files: Sequence[str], records: Sequence[int],
                plans: Sequence[HostPlan]) -> None:
  """Raises HostShareError naming the corpus, the hosts without records and the files."""
  empty = [h for h, p in enumerate(plans) if p.records == 0]
  if empty:
    listing = ", ".join(f"{f} ({n} records)" for f, n in zip(files, records)) or "no shard files"
    raise HostShareError(
        f"corpus {corpus!r}, split {split!r}: input shards (hosts) {empty} of {len(plans)} would get no "
        f"record; the split has {sum(records)} records in {len(files)} files: {listing}. Tokenize more "
        f"records or shards for it, or read the data as fewer input shards (TrainInput.num_input_shards).")


class ShardSource(seqio.FileDataSource):
  """A SeqIO data source over known shard files that spreads them over hosts by `plan_hosts`."""

  def __init__(self, corpus: str, split_to_files: dict[str, Sequence[str]],
               split_to_records: dict[str, Sequence[int]], read_file_fn):
    self.corpus = corpus
    self._files = {s: list(f) for s, f in split_to_files.items()}
    self._records = {s: list(r) for s, r in split_to_records.items()}
    super().__init__(read_file_fn=read_file_fn, split_to_filepattern=self._files,
                     num_input_examples={s: sum(r) for s, r in self._records.items()})

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # any host count: `plan_hosts` decides between whole files and records

  def list_shards(self, split: str) -> Sequence[str]:
    return list(self._files[split])

  def host_plan(self, split: str, index: int = 0, num_hosts: int = 1) -> HostPlan:
    """This host's plan; HostShareError when some host would get no record."""
    files, records = self._files[split], self._records[split]
    plans = plan_hosts(files, records, num_hosts)
    check_plans(self.corpus, split, files, records, plans)
    return plans[index]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    plan = self.host_plan(split, *((shard_info.index, shard_info.num_shards) if shard_info else (0, 1)))
    files_ds = tf.data.Dataset.from_tensor_slices(list(plan.files))
    # Hosts striding over the same files need the same file order: a seed, or none at all.
    if shuffle and (seed is not None or plan.record_stride == 1):
      files_ds = files_ds.shuffle(len(plan.files), seed=seed)
    ds = files_ds.interleave(self._reader, cycle_length=self._cycle_length, block_length=self._block_length,
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if plan.record_stride > 1:
      ds = ds.shard(plan.record_stride, plan.record_offset)
    return ds
