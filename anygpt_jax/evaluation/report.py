"""The scoring stage: a benchmark's generations -> its scores -> `report.json` and `report.md`.

Layout of an evaluation directory (one per checkpoint):

  {out}/{benchmark}/run.json                          what the generation stage ran: model, step,
                                                      data, limit, seed, items, processes, settings
  {out}/{benchmark}/generations-{i:05d}-of-{n:05d}.jsonl
                                                      one JSON line per item, written by process i
                                                      of n (`id`, `task`, `prompt_ids`,
                                                      `output_ids`, `text`, `timings`, or `error`)
  {out}/{benchmark}/outputs/                          the answers' files
  {out}/{benchmark}/media/{id}.{jpg,wav}              media answers, de-tokenized by the scoring stage
                                                      (`scoring`; kept: a rerun scores the same files)
  {out}/report.json, {out}/report.md                  every benchmark scored (this module)

The scores also go to TensorBoard as scalars `benchmarks/{benchmark}/{metric}` at the checkpoint's
step (`write_scalars`; by default into the run directory's `tensorboard/`, beside the loss curves).

A failed item (a missing or undecodable medium, an answer that did not close) is listed with its
reason and left out of the scores; the report says how many items were scored.
No JAX: this runs on whatever box has the evaluator models.
"""

from __future__ import annotations

import json
import time
from typing import Any

from anygpt_jax import filesystem
from anygpt_jax.evaluation import benchmarks, scoring

RUN_FILE = "run.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def generations_file(out_dir: str, benchmark: str, process_index: int, num_processes: int):
  return filesystem.resolve(out_dir) / benchmark / f"generations-{process_index:05d}-of-{num_processes:05d}.jsonl"


def read_generations(out_dir: str, benchmark: str) -> dict[str, dict]:
  """Item id -> its record, from every process's file (a record written twice keeps the first)."""
  records: dict[str, dict] = {}
  for path in filesystem.glob(str(filesystem.resolve(out_dir) / benchmark / "generations-*-of-*.jsonl")):
    for line in filesystem.resolve(path).read_text().splitlines():
      if line.strip():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a killed writer: that item is generated again
          continue
        records.setdefault(record["id"], record)
  return records


def score_benchmark(out_dir: str, name: str,
                    evaluators: scoring.Evaluators = scoring.Evaluators()) -> dict[str, Any]:
  """One benchmark's report entry: scores of the generated items against their references."""
  bench = benchmarks.get(name)
  run_path = filesystem.resolve(out_dir) / name / RUN_FILE
  if not run_path.exists():
    raise FileNotFoundError(f"{run_path} not found: run `anygpt-eval generate --benchmark {name}` first")
  run = json.loads(run_path.read_text())
  items = {item.id: item for item in bench.items(run["data"], run["limit"], run["seed"])}
  records = read_generations(out_dir, name)
  missing = sorted(set(items) - set(records))
  failed = [{"id": i, "error": records[i]["error"]} for i in sorted(records) if "error" in records[i]]
  answered = {i: records[i] for i in sorted(records) if i in items and "error" not in records[i]}
  scores = scoring.score(name, out_dir, answered, items, evaluators, failed)
  scored = len(answered) - len({f["id"] for f in failed} & set(answered))
  return {"benchmark": name, "scores": scores, "paper": bench.paper, "metrics": list(bench.metrics),
          "lower_is_better": bench.lower_is_better, "items": len(items), "scored": scored,
          "missing": missing, "failed": failed, "model": run["model"], "step": run.get("step"),
          "data": run["data"], "limit": run["limit"], "seed": run["seed"], "settings": run["settings"]}


def markdown(entries: list[dict]) -> str:
  """The report's table: our score beside the tokenizer ceiling's and the paper's, with N, seed and
  decoding settings."""
  lines = ["| benchmark | metric | ours | tokenizer ceiling | AnyGPT (paper) | items scored | seed | decoding |",
           "|---|---|---|---|---|---|---|---|"]
  for e in entries:
    decoding = ", ".join(f"{k}={v}" for k, v in e["settings"].items())
    for metric in e["metrics"]:
      ours = f"{e['scores'][metric]:.2f}" if metric in e["scores"] else "-"
      paper = f"{e['paper'][metric]}" if metric in e["paper"] else "-"
      ceiling = f"{e['ceiling'][metric]:.2f}" if metric in e.get("ceiling", {}) else "-"
      lower = e["lower_is_better"] and metric == e["metrics"][0]  # the flag is the headline metric's
      lines.append(f"| {e['benchmark']} | {metric}{' (lower is better)' if lower else ''} | "
                   f"{ours} | {ceiling} | {paper} | {e['scored']} of {e['items']} | {e['seed']} | {decoding} |")
  models = sorted({f"{e['model']} (step {e['step']})" if e["step"] is not None else e["model"] for e in entries})
  notes = [f"Model: {', '.join(models)}."]
  for e in entries:
    if e["failed"] or e["missing"]:
      notes.append(f"{e['benchmark']}: {len(e['failed'])} failed and {len(e['missing'])} not generated items "
                   f"left out (report.json lists them).")
  return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_report(out_dir: str, names: list[str] | None = None, evaluators: scoring.Evaluators = scoring.Evaluators(),
                 ceiling_dir: str | None = None) -> list[dict]:
  """Scores every benchmark generated under `out_dir` (or `names`) with `evaluators`; writes report.json
  and report.md. With `ceiling_dir` (a scored `anygpt-eval ceiling` directory) each entry gets that
  benchmark's ceiling scores as `ceiling`."""
  root = filesystem.resolve(out_dir)
  if names is None:
    names = [n for n in benchmarks.BENCHMARKS if (root / n / RUN_FILE).exists()]
  if not names:
    raise FileNotFoundError(f"no generated benchmark under {root} (expected {{benchmark}}/{RUN_FILE})")
  entries = [score_benchmark(out_dir, n, evaluators) for n in names]
  if ceiling_dir is not None:
    path = filesystem.resolve(ceiling_dir) / REPORT_JSON
    if not path.exists():
      raise FileNotFoundError(f"{path} not found: run `anygpt-eval ceiling` and `score` there first")
    ceilings = {e["benchmark"]: e["scores"] for e in json.loads(path.read_text())["benchmarks"]}
    for entry in entries:
      entry["ceiling"] = ceilings.get(entry["benchmark"], {})
  filesystem.write_text(root / REPORT_JSON, json.dumps({"benchmarks": entries}, indent=1, ensure_ascii=False))
  filesystem.write_text(root / REPORT_MD, markdown(entries))
  return entries


def write_scalars(entries: list[dict], tensorboard_dir: str, step: int) -> str:
  """Every score of `entries` as a TensorBoard scalar `benchmarks/{benchmark}/{metric}` at `step`, in
  an event file of its own in `tensorboard_dir` (local or URL); returns the directory written."""
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer.event_file_writer import EventFileWriter

  values = [summary_pb2.Summary.Value(tag=f"benchmarks/{e['benchmark']}/{metric}", simple_value=value)
            for e in entries for metric, value in e["scores"].items()]
  with filesystem.LocalStaging(tensorboard_dir) as staging:
    writer = EventFileWriter(staging.local, filename_suffix=".anygpt-eval")
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))
    writer.close()
  return str(staging.destination)
