"""The tokenization job on Ray Data: the same windows, processed by a pool of tokenizer actors.

The driver reads each shard's records through the same plan and readers as the local engine
(records carry media references, a tar member's offset or an audio span, not media bytes),
one Ray Data pipeline maps the windows of every unfinished shard through `TokenizeActor`s
(each holding the tokenizer models, started once per job, reading the media itself, on a GPU
when `num_gpus` > 0), and the driver writes the results in plan order with the local engine's
`ShardWriter`, committing each shard at its last window. Same windows, same batches, same writer:
the shard bytes equal the local engine's.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Callable

from anygpt_jax.tokenizers import job
from anygpt_jax.tokenizers.inputs import InputRecord


class TokenizeActor:
  """A Ray Data callable class: one tokenizer set per actor, one window per call."""

  def __init__(self, cfg_dict: dict):
    self.cfg = job.JobConfig(**cfg_dict)
    self.toks = job.Tokenizers(self.cfg)

  def __call__(self, batch: dict) -> dict:
    out = []
    for blob in batch["records"]:
      records = [InputRecord.from_dict(d) for d in pickle.loads(blob)]
      results = job.process_window(records, self.toks, self.cfg, pool=None)
      out.append(pickle.dumps([dataclasses.asdict(r) for r in results]))
    return {"shard": batch["shard"], "window": batch["window"], "results": out}


def run_ray(cfg: job.JobConfig, records_or_plan, num_actors: int = 1,
            num_cpus: int = 2, num_gpus_per_actor: float = 0.0, address: str | None = None,
            on_progress: Callable[[job.RecordResult], None] | None = None) -> list[dict]:
  """Tokenizes the selected shards through Ray Data; returns each shard's stats.

  `records_or_plan` as for `job.run_local`.
  Starts a local Ray instance (`num_cpus` CPUs, no dashboard) unless `address` names a
  cluster or Ray is already initialised.
  """
  import ray
  plan = job.as_plan(cfg, records_or_plan)
  started = False
  if not ray.is_initialized():
    if address:
      ray.init(address=address)
    else:
      ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    started = True
  try:
    # Windows must come back in plan order for the bytes to match the local engine.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    stats: dict[int, dict] = {}
    todo = []
    for index in cfg.shards():
      done = job.finished_stats(cfg, index)
      if done is not None:
        stats[index] = done
      else:
        todo.append(index)
    # One pipeline for every unfinished shard, so the actors (and their models) start once per job.
    items, counts = [], {}
    for index in todo:
      shard_windows = list(job.windows(plan.records(index), cfg.window))
      counts[index] = len(shard_windows)
      items += [{"shard": index, "window": i, "records": pickle.dumps([r.to_dict() for r in w])}
                for i, w in enumerate(shard_windows)]
    writers: dict[int, job.ShardWriter] = {}

    def open_writer(index: int) -> job.ShardWriter:
      writers[index] = job.ShardWriter(cfg, index, plan.describe(index))
      return writers[index]

    for index in todo:
      if counts[index] == 0:  # an empty input still gets its (empty) shard, stats and rejects
        stats[index] = open_writer(index).commit()
    if items:
      ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
          TokenizeActor, fn_constructor_kwargs={"cfg_dict": dataclasses.asdict(cfg)}, batch_size=1,
          concurrency=num_actors, num_gpus=num_gpus_per_actor or None, num_cpus=1)
      expected = iter([(it["shard"], it["window"]) for it in items])
      for row in ds.iter_rows():  # in plan order (preserve_order above), streamed to the writers
        index, window = row["shard"], row["window"]
        if (index, window) != next(expected):
          raise RuntimeError(f"Ray returned shard {index} window {window} out of plan order")
        writer = writers.get(index) or open_writer(index)
        for d in pickle.loads(row["results"]):
          result = job.RecordResult(**d)
          writer.add(result)
          if on_progress:
            on_progress(result)
        if window == counts[index] - 1:  # the shard's last window: rename it into place now
          stats[index] = writer.commit()
    return [stats[i] for i in cfg.shards()]
  finally:
    if started:
      ray.shutdown()
