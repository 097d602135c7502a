"""The flags of a generation session, shared by anygpt-generate, anygpt-eval's generation stage and
anygpt-serve: the model, the media tokenizers, the seed and batch, and the decoding overrides
(every request's, or one output modality's with `--set image.top_p=0.9`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from anygpt_jax.generation.requests import TASK_MODALITIES

SETTING_TYPES = {"do_sample": lambda v: v.lower() in ("1", "true", "yes"), "temperature": float, "top_k": int,
                 "top_p": float, "repetition_penalty": float, "min_new_tokens": int, "max_new_tokens": int,
                 "num_beams": int, "length_penalty": float}


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """Adds the flags of a generation session (the module docstring) to `p`."""
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


def media_from_args(args):
  """The tokenizers and de-tokenizers named on the command line (loaded when first needed)."""
  from anygpt_jax.generation.media import Media
  return Media(image_model=args.image_model, unclip_model=args.unclip_model, speech_model=args.speech_model,
               soundstorm_model=args.soundstorm_model, music_model=args.music_model,
               music_seconds=args.music_seconds, image_steps=args.image_steps,
               soundstorm_steps=args.soundstorm_steps, seed=args.seed)


def session_from_args(args: argparse.Namespace, weights: bool = True):
  """The `generation.session.Session` that `args` (`add_model_flags`) name; a wrong --model or a
  missing SentencePiece model exits with the command's name and the reason."""
  from anygpt_jax.cli.runs import RunDirectoryError, load_model
  from anygpt_jax.generation.session import SessionError, open_session

  overrides = modality_overrides(args)
  try:
    loaded = load_model(args.model, args.step, args.spm, weights=weights)
    return open_session(loaded, media_from_args(args), overrides, args.seed, weights=weights)
  except (RunDirectoryError, SessionError) as e:
    raise SystemExit(f"{os.path.basename(sys.argv[0])}: {e}") from e
