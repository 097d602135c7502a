"""attention='splash': the Pallas TPU kernel in interpret mode equals the XLA reference on packed rows."""

import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax import partitioning
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.model.attention import attention_mask, xla_attention
from anygpt_jax.model.splash_attention import splash_attention


def _segments(batch, length, seed):
  """Packed rows: 1-3 segments each, then padding (segment 0), as SeqIO's packing makes them."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, length), np.int32)
  for row in range(batch):
    cuts = np.sort(rng.choice(np.arange(8, length - 8), 2, replace=False))
    ids[row, :cuts[0]] = 1
    ids[row, cuts[0]:cuts[1]] = 2
    ids[row, cuts[1]:length - 5] = 3 if row % 2 else 0
  return ids


def test_splash_equals_reference_attention_with_gradients():
  # 300 positions: padded to 384 inside, three 128-blocks (block-sparse causal skipping exercised).
  batch, length, heads, kv_heads, dim = 2, 300, 4, 2, 32
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, probe = (jax.random.normal(key, shape) for key, shape in zip(keys, [
      (batch, length, heads, dim), (batch, length, kv_heads, dim), (batch, length, kv_heads, dim),
      (batch, length, heads, dim)]))
  segments = jnp.asarray(_segments(batch, length, 0))
  mask = attention_mask(segments)
  # Both scale q by head_dim ** -0.5 themselves; a random probe makes every output element count.
  reference = lambda q, k, v: jnp.sum(xla_attention(q, k, v, mask) * probe)
  ours = lambda q, k, v: jnp.sum(splash_attention(q, k, v, segments) * probe)
  np.testing.assert_allclose(splash_attention(q, k, v, segments), xla_attention(q, k, v, mask), atol=2e-5, rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_tiny_model_with_splash_equals_xla_logits_and_gradients_under_a_mesh():
  """The whole model on a (data 2, fsdp 2, tensor 2) mesh: the kernel runs in shard_map."""
  base = get_config("tiny")
  mesh = partitioning.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
  rules = partitioning.logical_axis_rules()
  batch, length = 4, 128
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(1, base.predictable_vocab_size, (batch, length)), jnp.int32)
  segments = _segments(batch, length, 1)
  positions = np.zeros_like(segments)
  for row in range(batch):
    for s in np.unique(segments[row]):
      where = segments[row] == s
      positions[row, where] = np.arange(where.sum())
  segments, positions = jnp.asarray(segments), jnp.asarray(positions)
  real = segments > 0
  results = {}
  for attention in ("xla", "splash"):
    model = Transformer(base.replace(attention=attention))
    params, _ = partitioning.init_params(model, jax.random.key(0), mesh, rules, (1, 8))

    def loss(params):
      logits = model.apply({"params": params}, tokens, positions=positions, segment_ids=segments)
      return jnp.sum(jnp.where(real[..., None], jax.nn.log_softmax(logits), 0.0)[..., :base.predictable_vocab_size]
                     * 1e-3), logits

    with partitioning.use_mesh(mesh, rules):
      results[attention] = jax.device_get(jax.jit(jax.grad(loss, has_aux=True))(params))
  (grads_x, logits_x), (grads_s, logits_s) = results["xla"], results["splash"]
  np.testing.assert_allclose(logits_s, logits_x, atol=1e-4, rtol=1e-4)
  for got, want in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_x)):
    np.testing.assert_allclose(got, want, atol=1e-5 + 1e-3 * np.abs(want).max(), rtol=1e-3)
