"""Decoding throughput of the JAX KV-cache generator beside transformers' `generate`.

One run, same weights (the JAX parameters exported with `save_hf_checkpoint` and loaded by
`LlamaForCausalLM`), same prompts, batch and machine, greedy decoding of a fixed number of
new tokens (no stop ids). Each side's prefill and decode are timed directly, inside one call:
  * JAX: the generator's own clocks around its prefill call and its compiled decode loop;
  * transformers: one `generate` call, with a stopping criterion that notes the time of every
    token; prefill is the call's start to the first token (the prompt's forward pass and the first
    choice), decode is the first token to the last.
Every figure is the median of --repeats timed calls after a warm-up call (which compiles the JAX
side), and a rate is printed only from a positive time: a side whose clock reads zero or less
stops the benchmark with an error rather than print an impossible figure.

  python -m tools.bench_generate                                   # the 'bench' model, batch 1 and 8
  python -m tools.bench_generate --config tiny --batch 1 --prompt_len 16 --new_tokens 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.export import save_hf_checkpoint
from anygpt_jax.generation import DecodingSettings, Generator, Request
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.vocabulary import VocabularyLayout


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="bench_generate", description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="bench", help="model config name (anygpt_jax.model.config)")
  p.add_argument("--text_vocab_size", type=int, default=32000, help="32000: AnyGPT's 49418-row vocabulary")
  p.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=64, help="at least 2: decode is timed after the first")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (the median is kept)")
  return p


def rate(tokens: int, seconds: float, what: str) -> float:
  """tokens / seconds; a non-positive time is a broken clock, never a rate."""
  if not seconds > 0:
    raise RuntimeError(f"{what}: measured {seconds!r} s for {tokens} tokens; refusing to print a rate")
  return tokens / seconds


def measure_jax(generator: Generator, prompts, new_tokens: int, repeats: int) -> tuple[float, float]:
  """(prefill tokens/s, decode tokens/s) of the JAX generator: medians of its own clocks.

  The decode loop draws all `new_tokens` tokens (the first from the prefill's logits) and runs
  one forward pass per token.
  """
  settings = DecodingSettings(max_new_tokens=new_tokens)
  requests = [Request(p, settings) for p in prompts]
  generator.generate(requests)  # compiles prefill and the decode loop for these shapes
  prefill, decode = [], []
  for _ in range(repeats):
    out = generator.generate(requests)[0]
    assert len(out.tokens) == new_tokens, out.tokens
    prefill.append(out.prefill_s)
    decode.append(out.decode_s)
  batch = len(prompts)
  return (rate(batch * len(prompts[0]), float(np.median(prefill)), "JAX prefill"),
          rate(batch * new_tokens, float(np.median(decode)), "JAX decode"))


def measure_transformers(model, prompts, new_tokens: int, repeats: int) -> tuple[float, float]:
  """(prefill tokens/s, decode tokens/s) of `LlamaForCausalLM.generate`, greedy, KV cache on.

  A stopping criterion (called once per new token, after it is chosen) notes the clock: the first
  token ends the prefill; the `new_tokens - 1` after it, one forward pass each, are the decode.
  """
  import torch
  import transformers

  class Clock(transformers.StoppingCriteria):
    def __init__(self):
      self.ticks = []

    def __call__(self, input_ids, scores, **kwargs):
      self.ticks.append(time.perf_counter())
      return torch.zeros(input_ids.shape[0], dtype=torch.bool)

  ids = torch.tensor(prompts)

  def run() -> tuple[float, float]:
    clock = Clock()
    start = time.perf_counter()
    with torch.no_grad():
      out = model.generate(ids, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           pad_token_id=0, eos_token_id=None, use_cache=True,
                           stopping_criteria=transformers.StoppingCriteriaList([clock]))
    assert out.shape[1] == ids.shape[1] + new_tokens and len(clock.ticks) == new_tokens, len(clock.ticks)
    return clock.ticks[0] - start, clock.ticks[-1] - clock.ticks[0]

  run()  # warm-up
  prefill, decode = zip(*(run() for _ in range(repeats)))
  batch = len(prompts)
  return (rate(batch * ids.shape[1], float(np.median(prefill)), "transformers prefill"),
          rate(batch * (new_tokens - 1), float(np.median(decode)), "transformers decode"))


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.new_tokens < 2 or args.repeats < 1:
    parser.error("--new_tokens must be at least 2 and --repeats at least 1")
  import torch
  import transformers

  layout = VocabularyLayout(text_vocab_size=args.text_vocab_size)
  cfg = get_config(args.config, dtype="float32", param_dtype="float32", remat_policy="none",
                   max_position_embeddings=max(args.prompt_len + args.new_tokens, 256)).with_vocabulary(layout)
  model = Transformer(cfg)
  params = jax.jit(lambda k: nn.unbox(model.init(k, jnp.zeros((1, 8), jnp.int32))["params"]))(jax.random.key(0))
  params = jax.tree.map(np.asarray, params)
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = save_hf_checkpoint(params, cfg, layout, os.path.join(tmp, "hf"))
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
  generator = Generator(model, params, length_bucket=1)
  rng = np.random.default_rng(0)
  print(f"model {args.config}: {cfg.num_params() / 1e6:.1f}M parameters, vocabulary {layout.vocab_size}, "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, float32, median of {args.repeats}; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  print(f"{'batch':>5} | {'JAX prefill tok/s':>17} {'HF prefill tok/s':>16} {'ratio':>6} | "
        f"{'JAX decode tok/s':>16} {'HF decode tok/s':>15} {'ratio':>6}")
  for batch in args.batch or [1, 8]:
    prompts = rng.integers(3, layout.text_vocab_size, (batch, args.prompt_len)).tolist()
    prompts = [[1] + p[1:] for p in prompts]
    jax_prefill, jax_decode = measure_jax(generator, prompts, args.new_tokens, args.repeats)
    hf_prefill, hf_decode = measure_transformers(hf, prompts, args.new_tokens, args.repeats)
    print(f"{batch:>5} | {jax_prefill:>17.0f} {hf_prefill:>16.0f} {jax_prefill / hf_prefill:>6.2f} | "
          f"{jax_decode:>16.1f} {hf_decode:>15.1f} {jax_decode / hf_decode:>6.2f}", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
