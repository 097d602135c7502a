"""From the SeqIO pipeline to global jax batches, with iterator state for exact resume.

The dataset is read as `num_input_shards` independent shards (default: one per process);
each process reads a contiguous range of them and concatenates their rows. Because the shard
count is fixed by the run rather than by the host count, one process reading shards 0 and 1
produces exactly the global batch that two processes reading one shard each produce.
"""

from __future__ import annotations

import functools
from collections import abc
from typing import Callable, Mapping, Sequence

import gin
import jax
import numpy as np

from anygpt_jax.data.features import BATCH_FEATURES


def sequence_length_of(task_feature_lengths: Mapping[str, int] | int) -> int:
  """`TASK_FEATURE_LENGTHS` t5x-style ({'targets': 4500}) or a plain int -> the decoder length."""
  if isinstance(task_feature_lengths, int):
    return task_feature_lengths
  lengths = dict(task_feature_lengths)
  for key in ("targets", "decoder_target_tokens", "inputs"):
    if key in lengths:
      return int(lengths[key])
  raise ValueError(f"TASK_FEATURE_LENGTHS={lengths!r}: expected a 'targets' length for a decoder-only model")


class DatasetIterator:
  """A tf.data iterator yielding numpy batches, whose position is saved with tf.train.Checkpoint.

  `files()` lists the shard files the dataset reads: a record that does not read (a cut or
  overwritten shard) raises CorruptShardError naming the file, where tf.data names none.
  """

  def __init__(self, dataset, files: Callable[[], Sequence[str]] = lambda: ()):
    import tensorflow as tf
    self._iterator = iter(dataset)
    self._files = files
    self._data_loss = tf.errors.DataLossError

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      return {k: v.numpy() for k, v in next(self._iterator).items()}
    except self._data_loss as e:
      from anygpt_jax.data import pipeline
      raise pipeline.corrupt_shard_error(self._files(), e) from e

  def save_state(self, path: str) -> None:
    from anygpt_jax.data import pipeline
    pipeline.save_iterator_state(self._iterator, path)

  def restore_state(self, path: str) -> None:
    from anygpt_jax.data import pipeline
    pipeline.restore_iterator_state(self._iterator, path)


@gin.configurable
class TrainInput:
  """This process's share of the training batches.

  Args:
    mixture_or_task_name: a registered SeqIO task or mixture.
    task_feature_lengths: {'targets': L} or L.
    batch_size: the *global* batch size (all processes together).
    seed: the data seed (shuffling, mixing, template draws).
    num_input_shards: how many shards the data is read as; None means one per process.
      Keep it fixed across restarts (it is part of the saved iterator state).
    split: the dataset split.
    shuffle, pack: passed to `get_dataset`.
  """

  def __init__(self, mixture_or_task_name: str = gin.REQUIRED, task_feature_lengths=gin.REQUIRED,
               batch_size: int = gin.REQUIRED, seed: int = 0, num_input_shards: int | None = None,
               split: str = "train", shuffle: bool = True, pack: bool = True):
    from anygpt_jax.data import pipeline
    from anygpt_jax.training.bindings import check_types

    check_types("TrainInput", locals(), {"mixture_or_task_name": str, "task_feature_lengths": (abc.Mapping, int),
                                         "batch_size": int, "seed": int, "num_input_shards": (int, type(None)),
                                         "split": str})
    process_count, process_index = jax.process_count(), jax.process_index()
    num_input_shards = num_input_shards or process_count
    if num_input_shards % process_count:
      raise ValueError(f"num_input_shards={num_input_shards} must be a multiple of the "
                       f"{process_count} processes")
    if batch_size % num_input_shards:
      raise ValueError(f"batch size {batch_size} must be a multiple of num_input_shards={num_input_shards}")
    self.mixture_or_task_name, self.split, self.seed, self.pack = mixture_or_task_name, split, seed, pack
    self.sequence_length = sequence_length_of(task_feature_lengths)
    self.batch_size = batch_size
    self.num_input_shards = num_input_shards
    # Before any step: every input shard must get records of every corpus (an error names them).
    pipeline.check_host_shares(mixture_or_task_name, split, num_input_shards)
    per_process = num_input_shards // process_count
    self.shard_indices = list(range(process_index * per_process, (process_index + 1) * per_process))
    self.iterators = {
        shard: DatasetIterator(pipeline.get_dataset(
            mixture_or_task_name, self.sequence_length, batch_size // num_input_shards, split=split,
            seed=seed, shuffle=shuffle, shard_index=shard, num_shards=num_input_shards, pack=pack,
            with_stats=True),
            files=functools.partial(pipeline.input_files, mixture_or_task_name, split, shard, num_input_shards))
        for shard in self.shard_indices}
    # Records of this process's input the renderer could not take and skipped since this session
    # started (one bad record never stops a run; `data/skipped_records` in the metrics).
    self.skipped_records = 0

  def description(self) -> dict:
    """What fixes this input's stream of batches (exact resume needs every value unchanged)."""
    from anygpt_jax.data import pipeline
    files = pipeline.input_files(self.mixture_or_task_name, self.split)
    return {"mixture": self.mixture_or_task_name,
            "mixture_rates": pipeline.mixture_rates(self.mixture_or_task_name, self.split),
            "shard_files": sorted(f.rsplit("/", 1)[-1] for f in files),
            "batch_size": self.batch_size, "sequence_length": self.sequence_length, "seed": self.seed,
            "num_input_shards": self.num_input_shards, "pack": self.pack, "split": self.split}

  def next_local_batch(self) -> dict[str, np.ndarray]:
    """int32 [batch_size / processes, L] per feature: this process's rows of the next batch."""
    parts = [next(self.iterators[shard]) for shard in self.shard_indices]
    self.skipped_records += sum(int(p["num_skipped"].sum()) for p in parts)
    return {k: np.concatenate([p[k] for p in parts], axis=0).astype(np.int32) for k in BATCH_FEATURES}


def to_global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Process-local rows -> global arrays [batch_size, L] laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
