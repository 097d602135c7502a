"""`anygpt-model-check`: the backbone's numerical checks, run on the embedded tiny configuration.

1. Logits against transformers' LlamaForCausalLM on the same random weights (fp32, GQA).
2. Packed rows: each segment's logits equal the sample run alone, per attention implementation.
3. On 8 host devices (mesh data 2, fsdp 2, tensor 2): loss and gradients equal one device's.

Exits non-zero if any check misses its tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys

from anygpt_jax.cli.flags import ArgumentParser


def _force_host_devices(n: int) -> None:
  # Must run before jax is imported anywhere in the process.
  if "jax" in sys.modules:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def check_hf_parity(cfg) -> float:
  """Max |logit difference| against transformers on the real vocabulary rows."""
  import jax.numpy as jnp
  import numpy as np

  from anygpt_jax.model import Transformer, params_from_hf_state_dict
  from anygpt_jax.testing.hf_reference import hf_logits, hf_reference_model

  hf = hf_reference_model(cfg)
  params = params_from_hf_state_dict(hf.state_dict(), cfg)
  tokens = np.random.default_rng(0).integers(3, cfg.predictable_vocab_size, size=(2, 32)).astype(np.int32)
  ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))
  return float(np.max(np.abs(ours[..., :cfg.predictable_vocab_size] - hf_logits(hf, tokens))))


def check_packing(cfg) -> float:
  """Max |difference| between a packed row's segments and the samples run alone."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from anygpt_jax.model import Transformer

  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(1)
  lengths = (5, 9, 3)
  samples = [rng.integers(3, cfg.predictable_vocab_size, size=n).astype(np.int32) for n in lengths]
  row_length = sum(lengths) + 4  # trailing padding, segment 0
  tokens, segments, positions = (np.zeros((1, row_length), np.int32) for _ in range(3))
  start = 0
  for i, sample in enumerate(samples):
    end = start + len(sample)
    tokens[0, start:end], segments[0, start:end], positions[0, start:end] = sample, i + 1, np.arange(len(sample))
    start = end
  packed = np.asarray(model.apply({"params": params}, tokens, positions, segments))
  worst, start = 0.0, 0
  for sample in samples:
    alone = np.asarray(model.apply({"params": params}, sample[None]))[0]
    worst = max(worst, float(np.max(np.abs(packed[0, start:start + len(sample)] - alone))))
    start += len(sample)
  return worst


def check_sharded(cfg, mesh_shape: dict[str, int]) -> tuple[float, float]:
  """(|loss difference|, max |gradient difference|) between the mesh and one device."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from anygpt_jax import partitioning
  from anygpt_jax.model import Transformer

  model = Transformer(cfg)
  rng = np.random.default_rng(2)
  tokens = rng.integers(3, cfg.predictable_vocab_size, size=(8, 32)).astype(np.int32)
  targets = np.roll(tokens, -1, axis=1)

  def loss_fn(params, tokens, targets):
    logp = jax.nn.log_softmax(model.apply({"params": params}, tokens))
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

  init = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]))
  single = jax.device_put(init(jax.random.key(0)), jax.devices()[0])
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss_fn))(single, tokens, targets)

  mesh = partitioning.create_mesh(mesh_shape)
  params, shardings = partitioning.init_params(model, jax.random.key(0), mesh)
  with partitioning.use_mesh(mesh):
    data = jax.device_put((tokens, targets), partitioning.data_sharding(mesh))
    loss, grads = jax.jit(jax.value_and_grad(loss_fn), out_shardings=(None, shardings))(params, *data)
  grad_diff = max(float(np.max(np.abs(np.asarray(g) - np.asarray(r))))
                  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
  return abs(float(loss) - float(ref_loss)), grad_diff


def main(argv=None) -> int:
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="tiny", help="model configuration name (default: tiny)")
  args = parser.parse_args(argv)
  _force_host_devices(8)

  import jax

  from anygpt_jax.model import get_config

  # GQA and a padded vocabulary, so both are part of every check.
  cfg = get_config(args.config)
  results = []
  results.append(("logits vs transformers LlamaForCausalLM (fp32)", check_hf_parity(cfg), 1e-4))
  for attention, chunk in (("xla", 0), ("xla", 4), ("dot_product", 0)):
    name = attention + (f", query blocks of {chunk}" if chunk else "")
    results.append((f"packed segments == samples alone [{name}]",
                    check_packing(cfg.replace(attention=attention, attention_chunk=chunk)), 1e-5))
  if jax.device_count() >= 8:
    loss_diff, grad_diff = check_sharded(cfg, {"data": 2, "fsdp": 2, "tensor": 2})
    results.append(("mesh data2 x fsdp2 x tensor2: loss vs 1 device", loss_diff, 1e-5))
    results.append(("mesh data2 x fsdp2 x tensor2: gradients vs 1 device", grad_diff, 1e-5))
  else:
    print(f"only {jax.device_count()} devices: the 8-device check needs XLA_FLAGS set before jax starts")
  print(f"model check on config {args.config!r}: {cfg.num_layers} layers, width {cfg.hidden_size}, "
        f"heads {cfg.num_heads}/{cfg.num_kv_heads}, vocab {cfg.predictable_vocab_size} (padded {cfg.vocab_size})")
  failed = False
  for name, value, tolerance in results:
    ok = value <= tolerance
    failed |= not ok
    print(f"  {'ok  ' if ok else 'FAIL'} {name:62s} max |diff| {value:.2e} (tolerance {tolerance:.0e})")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
