"""Training-step throughput of the shipped `Trainer` beside transformers' LlamaForCausalLM.

One run, same configuration, batch and machine, one after the other:
  1. a plain `jnp.dot` of the step's dtype: the practical matmul peak of this machine;
  2. the step `anygpt-train` runs: `Trainer.jit_train_step` on a device mesh (all devices on
     'data'), built as `training/loop.py` builds it: the optimizer of `make_optimizer` (Adam,
     global-norm clipping at 1.0), the per-modality loss sums, the non-finite step guard;
  3. transformers' LlamaForCausalLM forward + backward + torch AdamW step (CPU only).
It prints tokens/s for 2 and 3, their ratio, and our achieved FLOP/s against 1. On a GPU it
also prints MFU against the card's bf16 peak (and skips the CPU-only PyTorch reference).

  python -m tools.bench_model                       # the issue's CPU configuration
  python -m tools.bench_model --config 1b --seq_len 4096 --batch 8 --dtype bfloat16 --attention cudnn
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.hardware import GPU_PEAK_FLOPS
from anygpt_jax.model import get_config


def time_repeated(fn, steps: int) -> float:
  """Seconds per call of `fn` after one warm-up call; fn must block until done."""
  fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def matmul_peak_flops(dtype: jnp.dtype, size: int, steps: int) -> float:
  """FLOP/s of a plain jnp.dot of two [size, size] matrices."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  dot = jax.jit(jnp.dot)
  seconds = time_repeated(lambda: dot(a, b).block_until_ready(), steps)
  return 2 * size ** 3 / seconds


def trainer_step_seconds(cfg, batch: int, seq_len: int, steps: int, devices: int | None = None,
                         text_vocab_size: int = 32000) -> tuple[float, int, dict]:
  """Seconds per call of the shipped `Trainer.jit_train_step` on a mesh of the first `devices`
  devices (None: all), all on 'data', with AnyGPT's vocabulary over `text_vocab_size` pieces.

  Returns (seconds, the state's step counter after the timed calls, the mesh's shape). Rows are
  whole segments of random tokens with every target in the loss, int32 [batch, seq_len].
  """
  from anygpt_jax import partitioning
  from anygpt_jax.training.assembly import build_trainer
  from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
  from anygpt_jax.vocabulary.layout import VocabularyLayout

  layout = VocabularyLayout(text_vocab_size=text_vocab_size)
  mesh = partitioning.create_mesh({"data": -1}, jax.devices()[:devices])
  lr = learning_rate_schedule(peak_learning_rate=1e-4, total_steps=1000, warmup_steps=0)
  sharded = build_trainer(cfg.with_vocabulary(layout), layout, make_optimizer(learning_rate=lr), lr, mesh,
                          partitioning.logical_axis_rules(), batch_size=batch, sequence_length=seq_len)
  trainer = sharded.trainer
  step = trainer.jit_train_step(sharded.state_shardings)
  tokens = np.random.default_rng(0).integers(3, layout.vocab_size, (batch, seq_len + 1)).astype(np.int32)
  host_batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
                "decoder_loss_weights": np.ones((batch, seq_len), np.int32),
                "decoder_segment_ids": np.ones((batch, seq_len), np.int32),
                "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len))}
  device_batch = {k: jax.device_put(v, trainer.batch_sharding) for k, v in host_batch.items()}
  holder = {"state": sharded.fresh_state(sharded.random_params(0))}

  def run():
    holder["state"], metrics = step(holder["state"], device_batch)
    metrics["loss"].block_until_ready()

  seconds = time_repeated(run, steps)
  return seconds, int(holder["state"].step), dict(mesh.shape)


def torch_train_step_seconds(cfg, batch: int, seq_len: int, steps: int, threads: int) -> float:
  import torch

  from anygpt_jax.testing.hf_reference import hf_reference_model

  torch.set_num_threads(threads)
  model = hf_reference_model(cfg, attn_implementation="sdpa", random_norms=False).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  tokens = torch.from_numpy(np.random.default_rng(0).integers(3, cfg.predictable_vocab_size, (batch, seq_len)))

  def run():
    optimizer.zero_grad(set_to_none=True)
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()

  return time_repeated(run, steps)


def main(argv=None) -> None:
  """Prints the figures; see the module docstring."""
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="bench")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--dtype", default=None, help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
  parser.add_argument("--attention", default=None, help="xla | dot_product | cudnn (default: xla on CPU, cudnn on GPU)")
  parser.add_argument("--remat", default=None, help="remat policy (default: the config's)")
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--devices", type=int, default=None, help="mesh over the first N devices (default: all)")
  parser.add_argument("--text_vocab", type=int, default=32000, help="text pieces (LLaMA-2: 32000)")
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
  attention = args.attention or ("cudnn" if on_gpu else "xla")
  overrides = dict(dtype=dtype, attention=attention)
  if args.remat:
    overrides["remat_policy"] = args.remat
  elif not on_gpu:
    overrides["remat_policy"] = "none"
  cfg = get_config(args.config, **overrides)
  tokens_per_step = args.batch * args.seq_len
  flops_per_token = cfg.flops_per_token(args.seq_len)

  print(f"device: {device.device_kind} ({jax.device_count()} x {device.platform}); config {args.config!r}: "
        f"{cfg.num_layers} layers, width {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads}, "
        f"vocab {cfg.vocab_size}, {cfg.num_params() / 1e6:.1f}M params; batch {args.batch} x {args.seq_len}; "
        f"{dtype}, attention {attention}, remat {cfg.remat_policy}")
  peak = matmul_peak_flops(jnp.dtype(dtype), args.matmul_size, max(args.steps, 5))
  print(f"jnp.dot {args.matmul_size}^3 {dtype}: {peak / 1e9:10.1f} GFLOP/s  (practical peak)")

  ours, state_step, mesh_shape = trainer_step_seconds(cfg, args.batch, args.seq_len, args.steps, args.devices,
                                                          args.text_vocab)
  ours_tps = tokens_per_step / ours
  ours_flops = ours_tps * flops_per_token
  print(f"Trainer.train_step:     {ours_tps:10.1f} tokens/s  {ours_flops / 1e9:10.1f} GFLOP/s  "
        f"= {100 * ours_flops / peak:5.1f} % of jnp.dot  (mesh {mesh_shape}, state at step {state_step})")
  if on_gpu:
    kind = next((k for k in GPU_PEAK_FLOPS if k in device.device_kind), None)
    if kind:
      print(f"MFU against the {kind}'s {GPU_PEAK_FLOPS[kind] / 1e12:.0f} TFLOP/s bf16 peak: "
            f"{100 * ours_flops / GPU_PEAK_FLOPS[kind]:.1f} %  (causal attention FLOPs counted as half)")
  if not (args.skip_torch or on_gpu):
    theirs = torch_train_step_seconds(cfg, args.batch, args.seq_len, args.steps, args.torch_threads)
    theirs_tps = tokens_per_step / theirs
    theirs_flops = theirs_tps * flops_per_token
    print(f"transformers step:      {theirs_tps:10.1f} tokens/s  {theirs_flops / 1e9:10.1f} GFLOP/s  "
          f"= {100 * theirs_flops / peak:5.1f} % of jnp.dot")
    print(f"ratio anygpt_jax / transformers: {ours_tps / theirs_tps:.2f}x")


if __name__ == "__main__":
  main()
