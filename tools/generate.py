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
import json
import os
import sys

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.cli.generation_flags import add_model_flags, modality_overrides, session_from_args
from anygpt_jax.generation.requests import RequestError, Task, parse_chat, parse_task
from anygpt_jax.generation.session import generate_records


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="anygpt-generate", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("tasks", nargs="*", help="task strings such as 'text|image|a red car'")
  p.add_argument("--prompts_file", action="append", default=[], help="one task string per line")
  p.add_argument("--chat_file", action="append", default=[], help="one chat request (JSON) per line")
  add_model_flags(p)
  return p


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


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  modality_overrides(args)  # a bad --set fails before the model loads
  tasks = read_tasks(args)
  if not tasks:
    print("anygpt-generate: no requests (give task strings, --prompts_file or --chat_file)", file=sys.stderr)
    return 2
  session = session_from_args(args)
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
