"""Mesh construction, logical rules, and sharded training numerics on 8 host devices."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from anygpt_jax import partitioning
from anygpt_jax.model import Transformer, get_config

CFG = get_config("tiny", vocab_size=512, real_vocab_size=500)
MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


def test_eight_host_devices():
  assert jax.device_count() == 8, "tests/conftest.py sets XLA_FLAGS before jax is imported"


@pytest.mark.parametrize("sizes, expected", [
    ({"data": -1}, {"data": 8, "fsdp": 1, "tensor": 1}),
    ({"data": 2, "fsdp": -1, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}),
    ({"tensor": 4, "data": -1}, {"data": 2, "fsdp": 1, "tensor": 4}),
])
def test_mesh_fills_the_minus_one_axis(sizes, expected):
  assert dict(partitioning.create_mesh(sizes).shape) == expected


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3, "fsdp": -1}, "does not divide the 8 devices"),
    ({"data": 2, "tensor": 2}, r"needs 4 devices but 8 are available"),
    ({"data": -1, "fsdp": -1}, "only one axis may be -1"),
    ({"model": 8}, "unknown mesh axes"),
])
def test_bad_mesh_is_a_clear_error(sizes, message):
  with pytest.raises(partitioning.MeshError, match=message):
    partitioning.create_mesh(sizes)


def test_a_mesh_off_the_tpu_topology_falls_back_with_a_warning(caplog):
  """3 chips of a 2x2 v5p slice (libtpu's abstract devices) have no topology-aware order: the mesh
  is still built, in the given order, and the warning says why."""
  from anygpt_jax.training import aot
  _, devices = aot.topology_devices("v5p:2x2x1")
  with caplog.at_level("WARNING"):
    mesh = partitioning.create_mesh({"data": -1}, devices=devices[:3])
  assert list(mesh.devices.flat) == devices[:3]
  warning, = [r for r in caplog.records if r.levelname == "WARNING" and "create_mesh" in r.getMessage()]
  assert "3 tpu devices" in warning.getMessage() and "AssertionError" in warning.getMessage()
  caplog.clear()
  with caplog.at_level("WARNING"):
    partitioning.create_mesh({"data": -1}, devices=devices)  # the whole slice: topology-aware, silent
  assert not [r for r in caplog.records if "create_mesh" in r.getMessage()]


def _loss(model, params, batch):
  logits = model.apply({"params": params}, batch["tokens"], batch["positions"], batch["segments"])
  logp = jax.nn.log_softmax(logits)
  target_logp = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
  weights = (batch["segments"] > 0).astype(jnp.float32)
  return -jnp.sum(target_logp * weights) / jnp.sum(weights)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, CFG.real_vocab_size, size=(8, 32)).astype(np.int32)
  segments = np.ones_like(tokens)
  segments[:, 20:] = 2
  segments[::2, 28:] = 0
  positions = np.concatenate([np.arange(20), np.arange(12)])[None].repeat(8, 0).astype(np.int32)
  return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "segments": segments, "positions": positions}


def test_sharded_loss_and_gradients_equal_single_device():
  model = Transformer(CFG)
  batch = _batch()
  init = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]))
  single_params = jax.device_put(init(jax.random.key(0)), jax.devices()[0])
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: _loss(model, p, batch)))(single_params)

  mesh = partitioning.create_mesh(MESH_222)
  params, shardings = partitioning.init_params(model, jax.random.key(0), mesh)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same init, now in shards
  with partitioning.use_mesh(mesh):
    data = jax.device_put(batch, partitioning.data_sharding(mesh))
    step = jax.jit(jax.value_and_grad(lambda p, b: _loss(model, p, b)), out_shardings=(None, shardings))
    loss, grads = step(params, data)
  assert abs(float(loss) - float(ref_loss)) <= 1e-5
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)


def test_parameters_are_sharded_as_the_rules_say():
  mesh = partitioning.create_mesh(MESH_222)
  params, _ = partitioning.init_params(Transformer(CFG), jax.random.key(0), mesh)
  expected = {
      ("embed_tokens", "embedding"): P("tensor", "fsdp"),
      ("lm_head", "kernel"): P("fsdp", "tensor"),
      ("layers", "self_attn", "q_proj", "kernel"): P(None, "fsdp", "tensor", None),
      ("layers", "self_attn", "o_proj", "kernel"): P(None, "tensor", None, "fsdp"),
      ("layers", "mlp", "down_proj", "kernel"): P(None, "tensor", "fsdp"),
      ("norm", "scale"): P(None),
  }
  for path, spec in expected.items():
    leaf = params
    for key in path:
      leaf = leaf[key]
    assert leaf.sharding.spec == spec, path
    # Each device holds only its shard.
    assert leaf.addressable_shards[0].data.size == leaf.size // _parts(spec, mesh)


def _parts(spec, mesh):
  n = 1
  for axes in spec:
    for a in (axes,) if isinstance(axes, str) else (axes or ()):
      n *= mesh.shape[a]
  return n


def test_indivisible_dimension_names_the_parameter():
  cfg = dataclasses.replace(CFG, num_kv_heads=1)  # one kv head cannot split over tensor=2
  mesh = partitioning.create_mesh(MESH_222)
  with pytest.raises(partitioning.MeshError, match=r"k_proj.*cannot be split over mesh axes \('tensor',\)"):
    partitioning.init_params(Transformer(cfg), jax.random.key(0), mesh)
