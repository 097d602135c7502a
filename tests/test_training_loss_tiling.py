"""Vocabulary tiling: the output head + loss in chunks equals the full-logits loss, gradients too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anygpt_jax import partitioning
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.training import loss as loss_lib
from anygpt_jax.training.optimizer import make_optimizer
from anygpt_jax.training.trainer import Trainer
from anygpt_jax.vocabulary.layout import VocabularyLayout

LAYOUT = VocabularyLayout(text_vocab_size=100)
BATCH, LENGTH = 4, 36


def _batch(seed=0):
  """Packed rows with image targets, a padded tail (weight 0, segment 0) and a fully padded row."""
  rng = np.random.default_rng(seed)
  image = LAYOUT.modality("image")
  tokens = rng.integers(1, LAYOUT.vocab_size, (BATCH, LENGTH + 1)).astype(np.int32)
  tokens[:, 8:20] = rng.integers(image.first_code_id, image.last_code_id, (BATCH, 12))
  segments = np.repeat(np.where(np.arange(LENGTH) < 15, 1, 2)[None], BATCH, 0).astype(np.int32)
  segments[:, 30:] = 0
  segments[3] = 0  # a padded row: no target counts
  positions = np.where(segments == 2, np.arange(LENGTH) - 15, np.arange(LENGTH)).astype(np.int32)
  weights = (segments > 0).astype(np.int32)
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": weights, "decoder_segment_ids": segments, "decoder_positions": positions}


def test_chunked_loss_and_gradients_equal_full_logits(dtype="float32"):
  config = get_config("tiny", dtype=dtype).with_vocabulary(LAYOUT)
  model = Transformer(config)
  mesh = partitioning.create_mesh({"data": -1, "fsdp": 2})
  rules = partitioning.logical_axis_rules()
  params, _ = partitioning.init_params(model, jax.random.key(0), mesh, rules, (1, 8))
  batch = _batch()

  def trainer(chunk):
    return Trainer(model, make_optimizer(learning_rate=1e-3), 1e-3, LAYOUT, mesh, partitioning.data_sharding(mesh),
                   lambda: partitioning.use_mesh(mesh, rules), z_loss=1e-3, loss_chunk_length=chunk)

  def sums_and_grads(chunk):
    t = trainer(chunk)
    with t.mesh_context():
      return jax.device_get(jax.jit(jax.grad(t._summed_objective, has_aux=True))(params, batch))

  full_grads, full = sums_and_grads(0)
  # 8 does not divide 36: the last chunk is padded with weight-0 positions.
  chunk_grads, chunked = sums_and_grads(8)
  assert full["tokens"] == chunked["tokens"] == 3 * 30
  for key in full:
    np.testing.assert_allclose(chunked[key], full[key], rtol=2e-6, atol=1e-5, err_msg=key)
  assert full["z_loss"] > 0 and full["modality_tokens"][1] > 0
  for a, b in zip(jax.tree.leaves(full_grads), jax.tree.leaves(chunk_grads)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-6 * np.abs(a).max())


def test_chunked_loss_never_builds_full_logits():
  """The jaxpr of the chunked loss holds no [B, L, V] array; the full one does."""
  config = get_config("tiny").with_vocabulary(LAYOUT)
  hidden = jnp.zeros((BATCH, LENGTH, config.hidden_size))
  kernel = jnp.zeros((config.hidden_size, config.vocab_size))
  batch = _batch()
  chunked = lambda h, k: loss_lib.chunked_loss_sums(h, k, batch["decoder_target_tokens"],
                                                    batch["decoder_loss_weights"], LAYOUT, 1e-3, 12,
                                                    config.predictable_vocab_size, jnp.float32)["cross_entropy"]
  text = str(jax.make_jaxpr(jax.grad(chunked, argnums=(0, 1)))(hidden, kernel))
  assert f"{BATCH},{LENGTH},{config.vocab_size}]" not in text
  assert f"{BATCH},12,{config.vocab_size}]" in text


def test_loss_tiling_rejects_a_negative_chunk():
  with pytest.raises(ValueError, match="loss_tiling.chunk_length"):
    loss_lib.loss_tiling(-1)
