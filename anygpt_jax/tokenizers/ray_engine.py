"""The tokenization job on Ray Data: the same windows, processed by a pool of tokenizer actors.

Windows come from Ray Data read tasks for webdataset tars (`ray_webdataset`: each read task of
Ray's webdataset datasource streams one tar, media bytes travel with the records), and from the
driver for the other formats (it reads each shard's records through the same plan and readers as
the local engine; records carry media references, a tar member's offset or an audio span).
One Ray Data pipeline maps the windows of every unfinished shard through `TokenizeActor`s (each
holding the tokenizer models, started once per job, on a GPU when `num_gpus` > 0), and the
driver writes the results with the local engine's `ShardWriter`, in window order per shard,
committing each shard at its last window. Same windows, same batches, same writer: the shard
bytes equal the local engine's.
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
    return {"shard": batch["shard"], "window": batch["window"], "last": batch["last"], "results": out}


def _driver_windows(plan, cfg: job.JobConfig, todo: list[int]):
  """The windows of `todo` read by the driver through the plan's readers, as a Ray Dataset."""
  import ray
  items = []
  for index in todo:
    shard_windows = list(job.windows(plan.records(index), cfg.window)) or [[]]
    items += [{"shard": index, "window": i, "last": i == len(shard_windows) - 1,
               "records": pickle.dumps([r.to_dict() for r in w])} for i, w in enumerate(shard_windows)]
  return ray.data.from_items(items, override_num_blocks=len(items))


def _windows(plan, cfg: job.JobConfig, todo: list[int]):
  """Rows {shard, window, last, records} of every window of the shards in `todo`."""
  if isinstance(plan, job.InputShardPlan) and plan.format == "webdataset":
    from anygpt_jax.tokenizers import ray_webdataset
    kind = plan.options.media_kind if plan.options is not None else "image"
    return ray_webdataset.read_windows(plan.inputs, plan.per_input, todo, cfg.window, kind)
  return _driver_windows(plan, cfg, todo)


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
      done = job.finished_stats(cfg, plan, index)
      if done is not None:
        stats[index] = done
      else:
        todo.append(index)
    if todo:  # one pipeline for every unfinished shard, so the actors (and their models) start once per job
      ds = _windows(plan, cfg, todo).map_batches(
          TokenizeActor, fn_constructor_kwargs={"cfg_dict": dataclasses.asdict(cfg)}, batch_size=1,
          compute=ray.data.ActorPoolStrategy(size=num_actors), num_gpus=num_gpus_per_actor or None, num_cpus=1)
      writers: dict[int, job.ShardWriter] = {}
      kept_ids: set[str] = set()  # duplicates are found across the shards this run writes
      next_window = dict.fromkeys(todo, 0)
      for row in ds.iter_rows():  # streamed to the writers; each shard's windows in order
        index, window = row["shard"], row["window"]
        if next_window.get(index) != window:
          raise RuntimeError(f"Ray returned shard {index} window {window}; expected window {next_window.get(index)}")
        next_window[index] += 1
        if index not in writers:
          writers[index] = job.ShardWriter(cfg, index, job.shard_origin(cfg, plan, index), kept_ids)
        for d in pickle.loads(row["results"]):
          result = job.RecordResult(**d)
          writers[index].add(result)
          if on_progress:
            on_progress(result)
        if row["last"]:  # the shard's last window: move it into place now
          stats[index] = writers[index].commit()
          next_window.pop(index)
      if next_window:
        raise RuntimeError(f"Ray returned no last window for shards {sorted(next_window)}")
    return [stats[i] for i in cfg.shards()]
  finally:
    if started:
      ray.shutdown()
