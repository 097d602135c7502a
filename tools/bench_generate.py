"""Decoding throughput of the JAX KV-cache generator beside transformers' `generate`.

One run, same weights (the JAX parameters exported with `save_hf_checkpoint` and loaded by
`LlamaForCausalLM`), same prompts, batch and machine, greedy decoding of a fixed number of
new tokens (no stop ids), one after the other:
  * JAX: prefill tokens/s (prompt tokens / the prefill call) and decode tokens/s (new tokens /
    the compiled decode loop), after a warm-up call that compiles both;
  * transformers: prefill tokens/s from `generate(max_new_tokens=1)`, decode tokens/s from
    the difference between `generate(max_new_tokens=N)` and that.
It prints both and their ratio per batch size.

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

from anygpt_jax.export import save_hf_checkpoint
from anygpt_jax.generation import DecodingSettings, Generator, Request
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.vocabulary import VocabularyLayout


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="bench_generate", description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="bench", help="model config name (anygpt_jax.model.config)")
  p.add_argument("--text_vocab_size", type=int, default=32000, help="32000: AnyGPT's 49418-row vocabulary")
  p.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (the best is kept)")
  return p


def best_of(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def measure_jax(generator: Generator, prompts, new_tokens: int, repeats: int) -> tuple[float, float]:
  """(prefill tokens/s, decode tokens/s) of the JAX generator."""
  settings = DecodingSettings(max_new_tokens=new_tokens)
  requests = [Request(p, settings) for p in prompts]
  generator.generate(requests)  # compiles prefill and the decode loop for these shapes
  best = None
  for _ in range(repeats):
    out = generator.generate(requests)[0]
    assert len(out.tokens) == new_tokens
    if best is None or out.prefill_s + out.decode_s < best.prefill_s + best.decode_s:
      best = out
  batch = len(prompts)
  return batch * len(prompts[0]) / best.prefill_s, batch * new_tokens / best.decode_s


def measure_transformers(model, prompts, new_tokens: int, repeats: int) -> tuple[float, float]:
  """(prefill tokens/s, decode tokens/s) of `LlamaForCausalLM.generate`, greedy, KV cache on."""
  import torch

  ids = torch.tensor(prompts)

  def run(n):
    with torch.no_grad():
      out = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                           eos_token_id=None, use_cache=True)
    assert out.shape[1] == ids.shape[1] + n

  run(2)  # warm-up
  first = best_of(lambda: run(1), repeats)
  full = best_of(lambda: run(new_tokens), repeats)
  batch = len(prompts)
  return batch * ids.shape[1] / first, batch * (new_tokens - 1) / max(full - first, 1e-9)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
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
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, float32; "
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
