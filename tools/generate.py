"""`anygpt-generate`: text, images, speech and music from a trained model.

  anygpt-generate --model runs/pretrain --output_dir out \\
      --image_model seed/ --unclip_model sd21-unclip/ --speech_model speechtokenizer/ \\
      --soundstorm_model soundstorm/ --music_model encodec_32khz/ \\
      "text|image|a dog on the beach" "image|text|cat.jpg" "text|speech|hello there|voice.wav" \\
      "speech|text|hello.wav" "text|music|a calm piano piece" "music|text|song.wav"

--model is a run directory of anygpt-train (orbax checkpoint + config.gin) or a directory
written by anygpt-export. Requests are AnyGPT's base-model task strings
(`{input modality}|{output modality}|{text or media path}[|{voice prompt wav}]`), given as
arguments or one per line of --prompts_file; --chat_file holds chat requests for SFT models,
one JSON object per line: {"messages": [{"role": "user", "content": [{"text": "..."},
{"image": "a.jpg"}]}, ...]} (roles system/user/assistant; media items image/speech/music).

Decoding uses AnyGPT's per-modality settings (paper Table 9 and its generate configs; see
anygpt_jax.generation.settings) with the answer's span opened and kept well-formed by the
modality constraints; flags override them for every request, `--set image.top_p=0.9` for one
output modality. Every request writes {index:04d}-{output}.txt/.jpg/.wav into --output_dir and
a JSON line to generations.jsonl (prompt, token ids, files, timings, or the error). A bad
request (missing or unreadable file, unknown task, a span not closed within max_new_tokens)
reports its error and the others still run; the exit status is 1 when any request failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from anygpt_jax.generation.requests import (TASK_MODALITIES, Prompts, RequestError, Task, answer_text,
                                           checked_spans, decoding_request, parse_chat, parse_task)

SETTING_TYPES = {"do_sample": lambda v: v.lower() in ("1", "true", "yes"), "temperature": float, "top_k": int,
                 "top_p": float, "repetition_penalty": float, "min_new_tokens": int, "max_new_tokens": int,
                 "num_beams": int, "length_penalty": float}


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """The flags of a generation session: the model, the media tokenizers, the seed and batch, and the
  decoding overrides (shared with anygpt-eval's generation stage)."""
  p.add_argument("--model", required=True, help="run directory (config.gin) or exported HF directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of a run (default: the latest)")
  p.add_argument("--spm", default=None, help="SentencePiece model (default: the run's or the export's)")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--image_model", help="SEED tokenizer directory (images in and out)")
  p.add_argument("--unclip_model", help="Stable Diffusion 2.1 unCLIP directory (images out)")
  p.add_argument("--speech_model", help="SpeechTokenizer directory (speech in and out)")
  p.add_argument("--soundstorm_model", help="SoundStorm checkpoint (speech out)")
  p.add_argument("--music_model", help="Encodec 32 kHz directory (music in and out)")
  p.add_argument("--music_seconds", type=float, default=None,
                 help="music input is cut to its first N seconds (default: as AnyGPT's CLIs, 20 s for a base "
                      "model's task, 5 s in a chat)")
  p.add_argument("--image_steps", type=int, default=20, help="unCLIP denoising steps")
  p.add_argument("--soundstorm_steps", type=int, default=3, help="SoundStorm passes (AnyGPT: vc_steps 3)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=8, help="requests decoded together")
  for name, kind in SETTING_TYPES.items():
    p.add_argument(f"--{name}", type=kind, default=None, help=f"override {name} for every request")
  p.add_argument("--set", action="append", default=[], metavar="MODALITY.NAME=VALUE",
                 help="override a setting for one output modality, e.g. image.top_p=0.9")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="anygpt-generate", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("tasks", nargs="*", help="task strings such as 'text|image|a red car'")
  p.add_argument("--prompts_file", action="append", default=[], help="one task string per line")
  p.add_argument("--chat_file", action="append", default=[], help="one chat request (JSON) per line")
  add_model_flags(p)
  return p


def modality_overrides(args) -> dict[str, dict[str, Any]]:
  """{'text'|'image'|...: {setting: value}} from the global flags and --set."""
  common = {n: getattr(args, n) for n in SETTING_TYPES if getattr(args, n) is not None}
  out = {m: dict(common) for m in TASK_MODALITIES}
  for item in args.set:
    try:
      key, value = item.split("=", 1)
      modality, name = key.split(".", 1)
      if modality not in out or name not in SETTING_TYPES:
        raise ValueError
      out[modality][name] = SETTING_TYPES[name](value)
    except ValueError:
      raise SystemExit(f"anygpt-generate: --set {item!r}: expected MODALITY.NAME=VALUE with MODALITY in "
                       f"{TASK_MODALITIES} and NAME in {sorted(SETTING_TYPES)}")
  return out


def load_model(path: str, step: int | None, spm_path: str | None, weights: bool = True):
  """A run directory (config.gin) or an exported HF directory (config.json); `weights=False` reads
  an export's configuration and vocabulary only (its model is decoded elsewhere)."""
  from anygpt_jax.generation.loading import load_hf_directory

  if os.path.exists(os.path.join(path, "config.gin")):
    if not weights:
      raise SystemExit(f"{os.path.basename(sys.argv[0])}: {path} is a run directory; a model decoded elsewhere "
                       "(vLLM) is an anygpt-export directory: pass the one the engine serves")
    from .export_hf import load_run
    return load_run(path, spm_path, step)
  if os.path.exists(os.path.join(path, "config.json")):
    loaded = load_hf_directory(path, weights=weights)
    loaded.spm_path = spm_path or loaded.spm_path
    return loaded
  raise SystemExit(f"anygpt-generate: {path} is neither a run directory (config.gin) nor an exported "
                   "HF directory (config.json)")


def media_from_args(args):
  """The tokenizers and de-tokenizers named on the command line (loaded when first needed)."""
  from anygpt_jax.generation.media import Media
  return Media(image_model=args.image_model, unclip_model=args.unclip_model, speech_model=args.speech_model,
               soundstorm_model=args.soundstorm_model, music_model=args.music_model,
               music_seconds=args.music_seconds, image_steps=args.image_steps,
               soundstorm_steps=args.soundstorm_steps, seed=args.seed)


def write_outputs(task: Task, tokens: list[int], stem: str, prompts: Prompts, media, stop_ids,
                  detokenize: bool = True) -> dict:
  """Text and every media span of an answer (its codes, and the media written to files when
  `detokenize`); raises RequestError if malformed.

  `text` is the answer as a user reads it (`requests.answer_text`: no role or modality tokens)."""
  spans = checked_spans(prompts.layout, task.target, tokens, media.music_codebooks)
  files = []
  for i, span in enumerate(spans if detokenize else ()):
    suffix = "" if i == 0 else f"-{i}"
    files.append(media.write(span.modality, list(span.codes), f"{stem}{suffix}", task.voice_prompt))
  text = answer_text(prompts.vocabulary, tokens, stop_ids)
  if task.target in ("text", "chat"):
    with open(stem + ".txt", "w", encoding="utf-8") as f:
      f.write(text + "\n")
    files.insert(0, {"file": stem + ".txt"})
  return {"files": files, "text": text, "spans": [{"modality": s.modality, "codes": list(s.codes)} for s in spans]}


def read_tasks(args) -> list[Task | RequestError]:
  tasks: list[Task | RequestError] = []

  def add(parse, raw):
    try:
      tasks.append(parse(raw))
    except RequestError as e:
      tasks.append(e)

  for raw in args.tasks:
    add(parse_task, raw)
  for path in args.prompts_file:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip() and not line.lstrip().startswith("#"):
          add(parse_task, line.rstrip("\n"))
  for path in args.chat_file:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          add(parse_chat, line)
  return tasks


@dataclasses.dataclass
class Session:
  """A loaded model with what its requests need: prompts, media workers, constraints, settings."""

  loaded: Any
  prompts: Prompts
  media: Any
  generator: Any  # None when the model is decoded elsewhere
  stops: tuple[int, ...]
  overrides: dict[str, dict[str, Any]]
  tables: Any  # the modality constraints' tables (`generation.constraints`)


def open_session(args, weights: bool = True) -> Session:
  """The model, vocabulary (in the model's text mode), media workers and generator that `args`
  (`add_model_flags`) name; without `weights`, no generator (a front whose engine is vLLM)."""
  from anygpt_jax.generation import Generator, build_tables
  from anygpt_jax.model import Transformer
  from anygpt_jax.vocabulary.seqio_vocabulary import EOS_ID, AnyGPTVocabulary

  overrides = modality_overrides(args)
  loaded = load_model(args.model, args.step, args.spm, weights=weights)
  if not loaded.spm_path or not os.path.exists(loaded.spm_path):
    raise SystemExit(f"{os.path.basename(sys.argv[0])}: the SentencePiece model {loaded.spm_path!r} does not "
                     "exist here; pass --spm")
  layout = loaded.layout
  vocabulary = AnyGPTVocabulary(loaded.spm_path, chat_tokens=layout.chat_tokens, pad_multiple=layout.pad_multiple,
                                legacy=loaded.legacy)
  media = media_from_args(args)
  stops = (EOS_ID, layout.eos_id)
  tables = build_tables(layout, stops, image_length=media.image_length, music_codebooks=media.music_codebooks)
  generator = Generator(Transformer(loaded.config), loaded.params, constraints=tables) if weights else None
  return Session(loaded, Prompts(vocabulary, media, args.seed), media, generator, stops, overrides, tables)


def generate_records(session: Session, tasks: list[tuple[int, Task | RequestError]], output_dir: str,
                     batch_size: int, seed: int, detokenize: bool = True) -> list[dict]:
  """One record per (index, task): prompt, ids, settings, output ids, spans (modality and codes),
  files and timings, or the error.

  Requests are decoded `batch_size` at a time, chunk k with seed `seed + k * batch_size`; each
  answer's files are written to `output_dir/{index:04d}-{output}.*` (media only when `detokenize`:
  anygpt-eval de-tokenizes in its scoring stage)."""
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

  os.makedirs(output_dir, exist_ok=True)
  for chunk_start in range(0, len(pending), batch_size):
    chunk = pending[chunk_start:chunk_start + batch_size]
    outputs = session.generator.generate([r for _, _, r in chunk], seed=seed + chunk_start)
    for (task, record, _), out in zip(chunk, outputs):
      record.update(output_ids=out.tokens, finish_reason=out.finish_reason, score=out.score)
      record["timings"].update(prefill_s=out.prefill_s, decode_s=out.decode_s)
      start = time.perf_counter()
      stem = os.path.join(output_dir, f"{record['index']:04d}-{task.target}")
      try:
        record.update(write_outputs(task, out.tokens, stem, session.prompts, session.media, session.stops,
                                    detokenize))
      except (RequestError, ValueError) as e:
        record["error"] = str(e)
      record["timings"]["detokenize_s"] = time.perf_counter() - start
  return records


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  modality_overrides(args)  # a bad --set fails before the model loads
  tasks = read_tasks(args)
  if not tasks:
    print("anygpt-generate: no requests (give task strings, --prompts_file or --chat_file)", file=sys.stderr)
    return 2
  session = open_session(args)
  records = generate_records(session, list(enumerate(tasks)), args.output_dir, args.batch_size, args.seed)
  with open(os.path.join(args.output_dir, "generations.jsonl"), "a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  failed = [r for r in records if "error" in r]
  for r in records:
    status = f"error: {r['error']}" if "error" in r else ", ".join(x["file"] for x in r.get("files", []))
    print(f"[{r['index']}] {r['task']!r}: {status}")
  print(f"anygpt-generate: {len(records) - len(failed)} of {len(records)} requests done; "
        f"{os.path.join(args.output_dir, 'generations.jsonl')}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
