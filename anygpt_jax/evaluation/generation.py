"""The generation stage of a benchmark: its items' answers, batch by batch, as the scoring stage reads
them (`report`'s layout). `anygpt-eval generate` runs it on a loaded model, one share of the items per
process; the trainer's `BenchmarkGenerations` hook runs it with the trainer's parameters at chosen steps.

A rerun skips the items already written and regenerates the rest in the same batches with the same
seeds, so a killed stage resumed gives what an uninterrupted one gives.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from typing import Any, Callable, Sequence

from anygpt_jax import filesystem
from anygpt_jax.evaluation import report
from anygpt_jax.generation.requests import RequestError, parse_task


@dataclasses.dataclass(frozen=True)
class Request:
  """One item to answer: its position among the benchmark's items, its id, and its task string (or
  the error that kept it from having one, e.g. a medium `anygpt-eval prompts` could not read)."""

  position: int
  id: str
  task: str | None
  error: str | None = None


def done_ids(path) -> set[str]:
  """Ids of the items a generations file already holds. A last line cut by a kill is removed from the
  file (its item is generated again), so the next append starts on a line of its own."""
  if not path.exists():
    return set()
  text = path.read_text()
  if text and not text.endswith("\n"):
    text = text[:text.rfind("\n") + 1]
    path.write_text(text)
  done = set()
  for line in text.splitlines():
    try:
      done.add(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError):
      continue
  return done


def decoding_settings(session, requests: Sequence[Request]) -> dict[str, Any]:
  """The settings the answers are decoded with (the first request's output modality; a benchmark
  has one), as `run.json` records them."""
  from anygpt_jax.generation import defaults_for

  target = parse_task(next(r.task for r in requests if r.task is not None)).target
  settings = defaults_for(target, session.stops, **session.overrides[target])
  return {k: v for k, v in dataclasses.asdict(settings).items() if k != "stop_ids"}


def generate_benchmark(session, benchmark: str, requests: Sequence[Request], out_dir: str, run: dict,
                       process_index: int = 0, num_processes: int = 1, batch_size: int = 8, seed: int = 0,
                       params: Any = None, writer: bool = True, answer_files: bool = True,
                       log: Callable[[str], None] = lambda line: print(line, flush=True)) -> int:
  """Answers `requests` (this process's share) with `session` (a `generation.session.Session`; with
  `params`, the trainer's parameters instead of its own) into `{out_dir}/{benchmark}/`: `run.json`
  (`run`, from process 0) and one JSON line per item in `generations-{i}-of-{n}.jsonl` (`writer`:
  whether this process writes; in a multi-process trainer every process decodes, one writes), and
  text answers as files under `outputs/` when `answer_files` (local directories only).
  Returns the number of items generated now."""
  from anygpt_jax.generation.session import generate_records

  out = filesystem.resolve(out_dir) / benchmark
  path = report.generations_file(out_dir, benchmark, process_index, num_processes)
  if writer:
    out.mkdir(parents=True, exist_ok=True)
    if process_index == 0:
      filesystem.write_text(out / report.RUN_FILE, json.dumps(run, indent=1))
  done = done_ids(path) if writer else set()
  started, generated = time.perf_counter(), 0
  # Fixed batches: a rerun regenerates an unfinished batch whole, with the same instruction draws and
  # decoding seed, and writes only its items not yet on file.
  for batch_index in range(0, len(requests), batch_size):
    batch = requests[batch_index:batch_index + batch_size]
    if all(r.id in done for r in batch):
      continue
    session.prompts.rng = random.Random(f"{seed}/{batch[0].id}")
    tasks = [(r.position, parse_task(r.task) if r.task is not None else RequestError(r.error)) for r in batch]
    records = generate_records(session, tasks, str(out / "outputs") if writer and answer_files else None,
                               batch_size, seed + batch_index, detokenize=False, params=params)
    new = [{"id": r.id, **record} for r, record in zip(batch, records) if r.id not in done]
    if writer:
      filesystem.append_json_lines(path, new)
    generated += len(new)
    log(f"{benchmark}: {len(done) + generated} of {len(requests)} items "
        f"({generated / (time.perf_counter() - started):.2f} items/s)")
  return generated
