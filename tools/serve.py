"""`anygpt-serve`: a trained model behind OpenAI's chat-completions API, media in and out.

  anygpt-serve --model runs/sft --output_dir serve_out --speech_model speechtokenizer/ \\
      --soundstorm_model soundstorm/ --image_model seed/ --unclip_model sd21-unclip/ \\
      --music_model encodec_32khz/ --media_dir ~/media --port 8000

--model is a run directory of anygpt-train or an anygpt-export directory, decoded in this process
by the JAX engine (CPU, GPU or TPU), which batches the requests that arrive within
--batch_window_ms (at most --batch_size). With --engine vllm, --model is the export that a vLLM
server at --vllm_url serves (started with the project's logits processor, README "Serving on a GPU
box"): this process then loads no weights, and vLLM batches and decodes. Clients speak OpenAI's
API (the `openai` package works as it is): chat messages whose parts are text, images and audio, `modalities` for the answer's
modality, decoding fields as request fields; `POST /v1/completions` takes the base model's task
strings. `anygpt_jax.serving.protocol` documents the fields. The server binds to 127.0.0.1 unless
--host says otherwise; --api_key (or $ANYGPT_SERVE_API_KEY) requires a bearer key; requests may
name files only under --media_dir; every request is logged to {output_dir}/requests.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.cli.generation_flags import add_model_flags, session_from_args


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="anygpt-serve", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  add_model_flags(p)
  p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--served_model_name", default=None, help="the model's name in the API (default: --model's name)")
  p.add_argument("--api_key", default=os.environ.get("ANYGPT_SERVE_API_KEY"),
                 help="require 'Authorization: Bearer KEY' (default: $ANYGPT_SERVE_API_KEY; none: no key)")
  p.add_argument("--media_dir", action="append", default=[],
                 help="a directory whose files requests may name (repeatable; default: none, inline data only)")
  p.add_argument("--max_media_mb", type=float, default=32, help="largest media item a request may send")
  p.add_argument("--batch_window_ms", type=float, default=20, help="how long a batch waits for more requests")
  p.add_argument("--max_queue", type=int, default=64, help="requests waiting beyond this get 429")
  p.add_argument("--timeout_s", type=float, default=600, help="a request not answered by then gets 504")
  p.add_argument("--engine", choices=("jax", "vllm"), default="jax",
                 help="jax: decode in this process; vllm: send token ids to the vLLM server at --vllm_url")
  p.add_argument("--vllm_url", default="http://127.0.0.1:8001", help="the vLLM server's base URL (--engine vllm)")
  p.add_argument("--vllm_model", default=None, help="the model name vLLM serves (default: the first it lists)")
  return p


def build_engine(args, session):
  """The engine `args.engine` names, over `session` (its generator for JAX, its span shapes for vLLM)."""
  if args.engine == "vllm":
    from anygpt_jax.serving.vllm_engine import VllmEngine
    return VllmEngine(args.vllm_url, args.vllm_model, image_length=session.media.image_length,
                      music_codebooks=session.media.music_codebooks, max_inflight=args.max_queue,
                      timeout_s=args.timeout_s)
  from anygpt_jax.serving.engine import JaxEngine
  return JaxEngine(session.generator, batch_size=args.batch_size, window_s=args.batch_window_ms / 1000,
                   max_queue=args.max_queue)


def build_app(args):
  """The FastAPI application of `args` (the model loaded, the engine started)."""
  from anygpt_jax.serving.app import create_app
  from anygpt_jax.serving.service import Service

  session = session_from_args(args, weights=args.engine == "jax")
  if args.engine == "vllm":  # text answers default to greedy: the vLLM engine runs no beam search
    session.overrides["text"].setdefault("num_beams", 1)
  session.media.load_all()
  engine = build_engine(args, session)
  os.makedirs(args.output_dir, exist_ok=True)
  service = Service(session.prompts.vocabulary, session.media, engine, session.tables,
                    session.loaded.config.max_position_embeddings, session.stops, session.overrides,
                    args.output_dir, seed=args.seed)
  name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
  return create_app(service, name, media_dirs=tuple(args.media_dir), api_key=args.api_key,
                    timeout_s=args.timeout_s, log_path=os.path.join(args.output_dir, "requests.jsonl"),
                    max_media_bytes=int(args.max_media_mb * (1 << 20)))


def main(argv: list[str] | None = None) -> int:
  import uvicorn

  args = build_parser().parse_args(argv)
  app = build_app(args)
  print(f"anygpt-serve: serving {args.model} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
  return 0


if __name__ == "__main__":
  sys.exit(main())
