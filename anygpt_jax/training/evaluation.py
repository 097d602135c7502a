"""Periodic evaluation: loss and perplexity per task (and per target modality) on held-out data."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np

from anygpt_jax.data.features import BATCH_FEATURES
from anygpt_jax.training import loss as loss_lib
from anygpt_jax.training.input import sequence_length_of, to_global_batch
from anygpt_jax.training.samples import TrainingSamples
from anygpt_jax.vocabulary.layout import CONTENT_KINDS


@gin.configurable
class Evaluator:
  """Evaluates a fixed, unshuffled set of held-out batches of each task.

  Args:
    tasks: task or mixture names; a mixture stands for each of its tasks that has `split`, each
      evaluated separately (so run files can say `Evaluator.tasks = [%MIXTURE_OR_TASK_NAME]`).
    task_feature_lengths: {'targets': L} or L.
    batch_size: global eval batch size.
    num_batches: batches per task (None: the whole split; every process must then see the same
      number of batches, which `drop_remainder`-style batching of the pipeline ensures).
    split: the held-out split.
    samples: generates for fixed prompts at evaluation time (`training/samples.py`; None: no
      samples); the training loop calls it after the held-out losses.
  """

  def __init__(self, tasks: Sequence[str] = (), task_feature_lengths=gin.REQUIRED,
               batch_size: int = gin.REQUIRED, num_batches: int | None = 4, split: str = "validation",
               samples: TrainingSamples | None = None):
    from anygpt_jax.data import pipeline

    expanded = []
    for name in tasks:
      found = pipeline.mixture_tasks(name, split)
      if not found:
        raise pipeline.DataRegistrationError(
            f"Evaluator: {name!r} has no task with a {split!r} split; held-out data is tokenized with "
            f"anygpt-tokenize --split {split} into DATA_DIR/<corpus>/")
      expanded += [t for t in found if t not in expanded]
    # Checked before training: every process must get held-out records of every task.
    for task in expanded:
      pipeline.check_host_shares(task, split, jax.process_count())
    self.tasks = tuple(expanded)
    self.sequence_length = sequence_length_of(task_feature_lengths)
    self.batch_size = batch_size
    self.num_batches = num_batches
    self.split = split
    self.samples = samples
    # task -> this process's batches. The held-out batches are fixed (unshuffled, seed 0), so with
    # a bounded `num_batches` they are read once: rebuilding a task's pipeline costs seconds of
    # tf.data tracing per evaluation, per task.
    self._cached_batches: dict[str, list[dict[str, np.ndarray]]] = {}

  def _local_batches(self, task: str) -> list[dict[str, np.ndarray]]:
    """This process's held-out batches of `task`, the last one padded with empty rows."""
    if task in self._cached_batches:
      return self._cached_batches[task]
    batches = self._read_local_batches(task)
    if self.num_batches is not None:
      self._cached_batches[task] = batches
    return batches

  def _read_local_batches(self, task: str) -> list[dict[str, np.ndarray]]:
    from anygpt_jax.data import pipeline

    processes = jax.process_count()
    rows = self.batch_size // processes
    dataset = pipeline.get_dataset(task, self.sequence_length, rows, split=self.split, seed=0, shuffle=False,
                                   shard_index=jax.process_index(), num_shards=processes, pack=True,
                                   drop_remainder=False)
    if self.num_batches is not None:
      dataset = dataset.take(self.num_batches)
    return [_pad_rows({k: np.asarray(b[k], np.int32) for k in BATCH_FEATURES}, rows)
            for b in dataset.as_numpy_iterator()]

  def _same_count_on_every_process(self, batches: list, rows: int) -> list:
    """Every process must run the same number of eval steps (they are collectives): pad with
    all-padding batches (no loss weight) up to the largest count."""
    if jax.process_count() == 1:
      return batches
    from jax.experimental import multihost_utils
    most = int(np.max(multihost_utils.process_allgather(np.asarray([len(batches)]))))
    empty = {k: np.zeros((rows, self.sequence_length), np.int32) for k in BATCH_FEATURES}
    return batches + [empty] * (most - len(batches))

  def evaluate(self, eval_sums: Callable[[Any, dict], dict], params: Any,
               batch_sharding: jax.sharding.Sharding) -> dict[str, float]:
    """{'eval/{task}/loss', 'eval/{task}/perplexity', 'eval/{task}/{modality}/loss', ...}."""
    results = {}
    for task in self.tasks:
      total = None
      rows = self.batch_size // jax.process_count()
      for local in self._same_count_on_every_process(self._local_batches(task), rows):
        sums = jax.device_get(eval_sums(params, to_global_batch(local, batch_sharding)))
        total = sums if total is None else jax.tree.map(np.add, total, sums)
      if total is None or float(total["tokens"]) == 0:
        raise ValueError(f"evaluation task {task!r} has no {self.split!r} examples that fit "
                         f"length {self.sequence_length}")
      summary = jax.device_get(loss_lib.summarize(total))
      results[f"eval/{task}/loss"] = float(summary["cross_entropy"])
      results[f"eval/{task}/perplexity"] = math.exp(min(float(summary["cross_entropy"]), 700.0))
      results[f"eval/{task}/accuracy"] = float(summary["accuracy"])
      for name in CONTENT_KINDS:
        value = float(summary[f"{name}/loss"])
        if math.isfinite(value):
          results[f"eval/{task}/{name}/loss"] = value
    return results


def _pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Appends all-zero rows (segment 0 = padding, loss weight 0) up to `rows`."""
  have = next(iter(batch.values())).shape[0]
  if have == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - have,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
