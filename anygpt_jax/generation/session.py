"""A generation session: a loaded model with what its requests need, and batched decoding into files.

`anygpt-generate`, `anygpt-eval`'s generation stage and `anygpt-serve` open one from their shared
flags (`anygpt_jax.cli.generation_flags`); `generate_records` is the batch loop the first two run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from anygpt_jax.errors import UserError
from anygpt_jax.generation.requests import (Prompts, RequestError, Task, answer_text, checked_spans,
                                           decoding_request)


class SessionError(UserError, ValueError):
  """A session that cannot open: its model's SentencePiece model is missing."""


@dataclasses.dataclass
class Session:
  """A loaded model with what its requests need: prompts, media workers, constraints, settings."""

  loaded: Any  # generation.loading.LoadedModel
  prompts: Prompts
  media: Any  # generation.media.Media
  generator: Any  # generation.Generator; None when the model is decoded elsewhere
  stops: tuple[int, ...]
  overrides: dict[str, dict[str, Any]]  # output modality -> {setting: value}
  tables: Any  # the modality constraints' tables (`generation.constraints`)


def open_session(loaded, media, overrides: dict[str, dict[str, Any]], seed: int, weights: bool = True,
                 model=None, mesh=None, rules=None) -> Session:
  """The vocabulary (in the model's text mode), constraint tables and generator of `loaded` (a
  `LoadedModel`) with `media`'s workers; without `weights`, no generator (a front whose engine is vLLM).
  `model`, `mesh`, `rules`: the trainer's Transformer, mesh and axis rules, for decoding with its
  placed parameters (default: a Transformer of `loaded.config` on every device).
  Raises SessionError when the SentencePiece model is missing or gives another layout."""
  from anygpt_jax import filesystem
  from anygpt_jax.generation import Generator, build_tables
  from anygpt_jax.model import Transformer
  from anygpt_jax.vocabulary.seqio_vocabulary import EOS_ID, AnyGPTVocabulary

  if not loaded.spm_path or not filesystem.resolve(loaded.spm_path).exists():
    raise SessionError(f"the SentencePiece model {loaded.spm_path!r} of {loaded.source} does not exist here; "
                       "pass --spm")
  layout = loaded.layout
  try:
    vocabulary = AnyGPTVocabulary.for_layout(loaded.spm_path, layout, loaded.legacy)
  except ValueError as e:
    raise SessionError(str(e)) from None
  stops = (EOS_ID, layout.eos_id)
  tables = build_tables(layout, stops, image_length=media.image_length, music_codebooks=media.music_codebooks)
  generator = None
  if weights:
    generator = Generator(model or Transformer(loaded.config), loaded.params, mesh=mesh, rules=rules,
                          constraints=tables)
  return Session(loaded, Prompts(vocabulary, media, seed), media, generator, stops, overrides, tables)


def write_outputs(task: Task, tokens: list[int], stem: str | None, prompts: Prompts, media, stop_ids,
                  detokenize: bool = True) -> dict:
  """Text and every media span of an answer (its codes, and the media written to files `{stem}.*`
  when `detokenize`; no files when `stem` is None); raises RequestError if malformed.

  `text` is the answer as a user reads it (`requests.answer_text`: no role or modality tokens)."""
  spans = checked_spans(prompts.layout, task.target, tokens, media.music_codebooks)
  files = []
  for i, span in enumerate(spans if detokenize and stem is not None else ()):
    suffix = "" if i == 0 else f"-{i}"
    files.append(media.write(span.modality, list(span.codes), f"{stem}{suffix}", task.voice_prompt))
  text = answer_text(prompts.vocabulary, tokens, stop_ids)
  if task.target in ("text", "chat") and stem is not None:
    with open(stem + ".txt", "w", encoding="utf-8") as f:
      f.write(text + "\n")
    files.insert(0, {"file": stem + ".txt"})
  return {"files": files, "text": text, "spans": [{"modality": s.modality, "codes": list(s.codes)} for s in spans]}


def generate_records(session: Session, tasks: list[tuple[int, Task | RequestError]], output_dir: str | None,
                     batch_size: int, seed: int, detokenize: bool = True, params: Any = None) -> list[dict]:
  """One record per (index, task): prompt, ids, settings, output ids, spans (modality and codes),
  files and timings, or the error.

  Requests are decoded `batch_size` at a time, chunk k with seed `seed + k * batch_size`; each
  answer's files are written to `output_dir/{index:04d}-{output}.*` (media only when `detokenize`:
  anygpt-eval de-tokenizes in its scoring stage; none when `output_dir` is None). `params`: decode
  with these parameters of the session's model (the trainer's, as they change) instead of its own."""
  from anygpt_jax.generation import SettingsError

  tables, limit = session.tables, session.loaded.config.max_position_embeddings
  records, pending = [], []
  for index, task in tasks:
    record = {"index": index, "task": getattr(task, "raw", None)}
    records.append(record)
    if isinstance(task, RequestError):
      record.update(task=None, error=str(task))
      continue
    start = time.perf_counter()
    try:
      prompt, request = decoding_request(task, session.prompts, tables, limit, session.stops, session.overrides)
    except (RequestError, SettingsError) as e:
      record["error"] = str(e)
      continue
    record.update(prompt=prompt, prompt_ids=list(request.prompt), settings=dataclasses.asdict(request.settings),
                  timings={"tokenize_s": time.perf_counter() - start})
    pending.append((task, record, request))

  if output_dir is not None:
    os.makedirs(output_dir, exist_ok=True)
  for chunk_start in range(0, len(pending), batch_size):
    chunk = pending[chunk_start:chunk_start + batch_size]
    outputs = session.generator.generate([r for _, _, r in chunk], seed=seed + chunk_start, params=params)
    for (task, record, _), out in zip(chunk, outputs):
      record.update(output_ids=out.tokens, finish_reason=out.finish_reason, score=out.score)
      record["timings"].update(prefill_s=out.prefill_s, decode_s=out.decode_s)
      start = time.perf_counter()
      stem = os.path.join(output_dir, f"{record['index']:04d}-{task.target}") if output_dir is not None else None
      try:
        record.update(write_outputs(task, out.tokens, stem, session.prompts, session.media, session.stops,
                                    detokenize))
      except (RequestError, ValueError) as e:
        record["error"] = str(e)
      record["timings"]["detokenize_s"] = time.perf_counter() - start
  return records
