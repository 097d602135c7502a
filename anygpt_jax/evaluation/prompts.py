"""A benchmark subset's requests with their media already tokenized: what a process without torch
(the trainer, generating benchmark answers during training) needs to make them.

  {out}/{benchmark}/prompts.json    {"benchmark", "data", "limit", "seed", "items": [{"id", "task"}
                                    or {"id", "error"}, ...]}

`anygpt-eval prompts` writes it on a box with the tokenizers: each item's task string with its
input medium replaced by the medium's token string (`image|text|<soim><👀12>...<eoim>`, which
`generation.requests.Prompts` reads without a tokenizer); a text request is kept as it is. An item
whose medium cannot be read keeps its error, and the rest are written. Token strings depend only on
the modality table, not on a run's vocabulary, so one file serves every run.
"""

from __future__ import annotations

import dataclasses
import json

from anygpt_jax import filesystem
from anygpt_jax.evaluation import benchmarks
from anygpt_jax.generation.requests import RequestError, parse_task
from anygpt_jax.vocabulary.layout import modality_named

PROMPTS_FILE = "prompts.json"


class PromptsFileError(ValueError):
  """A prompts file that is missing or not what `anygpt-eval prompts` writes; the message names it."""


@dataclasses.dataclass(frozen=True)
class BenchmarkPrompts:
  """A benchmark subset (`benchmark`, `data`, `limit`, `seed`: what scoring reads the references
  from) and its tokenized requests: [(item id, task string or None, error or None)]."""

  benchmark: str
  data: str
  limit: int | None
  seed: int
  items: tuple[tuple[str, str | None, str | None], ...]


def tokenized_task(raw: str, media) -> str:
  """`raw` with its input medium as the medium's token string (a text request unchanged); `media`
  (`generation.media.Media`) tokenizes it. Raises RequestError naming the item's problem."""
  task = parse_task(raw)
  if task.source == "text":
    return raw
  modality = modality_named(task.source)
  codes = media.encode(task.source, task.data)
  token_string = modality.start_token + "".join(modality.code_string(int(c)) for c in codes) + modality.end_token
  return "|".join([task.source, task.target, token_string] + ([task.voice_prompt] if task.voice_prompt else []))


def write_prompts(benchmark: str, data: str, limit: int | None, seed: int, media, out_dir: str) -> BenchmarkPrompts:
  """Tokenizes the subset's requests and writes `{out_dir}/{benchmark}/prompts.json`; returns them."""
  items = []
  for item in benchmarks.get(benchmark).items(data, limit, seed):
    try:
      items.append((item.id, tokenized_task(item.task, media), None))
    except (RequestError, ValueError, OSError) as e:
      items.append((item.id, None, str(e)))
  prompts = BenchmarkPrompts(benchmark, str(filesystem.resolve(data)), limit, seed, tuple(items))
  body = {"benchmark": benchmark, "data": prompts.data, "limit": limit, "seed": seed,
          "items": [{"id": i, "task": t} if e is None else {"id": i, "error": e} for i, t, e in items]}
  path = filesystem.resolve(out_dir) / benchmark / PROMPTS_FILE
  filesystem.write_text(path, json.dumps(body, ensure_ascii=False, indent=1))
  return prompts


def read_prompts(path: str) -> BenchmarkPrompts:
  """A prompts file (`{out}/{benchmark}/prompts.json`, local or gs://), checked."""
  resolved = filesystem.resolve(path)
  if not resolved.exists():
    raise PromptsFileError(f"{resolved} not found: write it with `anygpt-eval prompts`")
  try:
    body = json.loads(resolved.read_text())
    items = tuple((x["id"], x.get("task"), x.get("error")) for x in body["items"])
    prompts = BenchmarkPrompts(body["benchmark"], body["data"], body["limit"], body["seed"], items)
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise PromptsFileError(f"{resolved}: not a prompts file of `anygpt-eval prompts` "
                           f"({type(e).__name__}: {e})") from None
  if prompts.benchmark not in benchmarks.BENCHMARKS:
    raise PromptsFileError(f"{resolved}: unknown benchmark {prompts.benchmark!r}")
  return prompts
