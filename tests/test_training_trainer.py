"""The train step: exact gradient accumulation, non-finite step skipping, sharded state."""

import jax
import numpy as np
import pytest

from anygpt_jax import partitioning
from anygpt_jax.model import get_config
from anygpt_jax.training.assembly import build_trainer
from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
from anygpt_jax.training.trainer import Trainer
from anygpt_jax.vocabulary.layout import VocabularyLayout

LAYOUT = VocabularyLayout(text_vocab_size=100)
BATCH, LENGTH = 16, 32


@pytest.fixture(scope="module")
def setup():
  """One trainer, initial state and compiled step shared by the tests (compiling is the slow part)."""
  trainer, state, shardings = _setup()
  return trainer, jax.device_get(state), shardings, trainer.jit_train_step(shardings)


def _fresh(setup):
  trainer, host_state, shardings, step = setup
  return trainer, jax.device_put(host_state, shardings), shardings, step


def _setup():
  mesh = partitioning.create_mesh({"data": -1, "fsdp": 2})
  lr = learning_rate_schedule(peak_learning_rate=1e-3, total_steps=100, warmup_steps=0)
  sharded = build_trainer(get_config("tiny").with_vocabulary(LAYOUT), LAYOUT, make_optimizer(learning_rate=lr), lr,
                          mesh, partitioning.logical_axis_rules(), batch_size=BATCH, sequence_length=LENGTH)
  return sharded.trainer, sharded.fresh_state(sharded.random_params(0)), sharded.state_shardings


def _batch(trainer, seed=0):
  """Packed rows (2 segments each) whose real target tokens differ a lot from row to row."""
  rng = np.random.default_rng(seed)
  image = LAYOUT.modality("image")
  tokens = rng.integers(1, LAYOUT.vocab_size, (BATCH, LENGTH + 1)).astype(np.int32)
  tokens[:, 10:20] = rng.integers(image.first_code_id, image.last_code_id, (BATCH, 10))
  cut = rng.integers(4, LENGTH - 4, BATCH)
  segments = np.where(np.arange(LENGTH)[None] < cut[:, None], 1, 2).astype(np.int32)
  positions = np.where(segments == 1, np.arange(LENGTH), np.arange(LENGTH) - cut[:, None]).astype(np.int32)
  # Row r keeps only its first 2 + r*... tokens in the loss: microbatches carry unequal token counts.
  keep = np.arange(LENGTH)[None] < (2 + 2 * np.arange(BATCH))[:, None]
  batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
           "decoder_loss_weights": keep.astype(np.int32), "decoder_segment_ids": segments,
           "decoder_positions": positions}
  return {k: jax.device_put(v, trainer.batch_sharding) for k, v in batch.items()}


def _copy(state):
  return jax.tree.map(lambda x: x.copy(), state)


def _gradients(trainer, params, batch):
  """Token-normalised gradients and loss sums of `batch`, as the train step computes them."""
  def grads(params, batch):
    g, sums = trainer.summed_gradients(params, batch)
    return jax.tree.map(lambda x: x / sums["tokens"], g), sums
  with trainer.mesh_context():
    return jax.device_get(jax.jit(grads)(params, batch))


def test_gradient_accumulation_equals_the_large_batch(setup):
  big, state, shardings, _ = _fresh(setup)
  accumulated = Trainer(big.model, big.optimizer, big.learning_rate, LAYOUT, big.mesh, big.batch_sharding,
                        big.mesh_context, num_microbatches=4)
  batch = _batch(big)
  grads_big, sums_big = _gradients(big, state.params, batch)
  grads_acc, sums_acc = _gradients(accumulated, state.params, batch)
  assert sums_big["tokens"] == sums_acc["tokens"] == float(batch["decoder_loss_weights"].sum())
  for key in ("cross_entropy", "correct", "modality_cross_entropy", "modality_tokens"):
    np.testing.assert_allclose(sums_acc[key], sums_big[key], rtol=1e-5, err_msg=key)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads_big)[0], jax.tree.leaves(grads_acc)):
    scale = np.abs(a).max()
    assert scale > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def test_train_step_updates_and_keeps_the_declared_shardings(setup):
  trainer, state, shardings, step = _fresh(setup)
  before = jax.device_get(state.params)
  new_state, metrics = step(state, _batch(trainer))
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
  for array, sharding in zip(jax.tree.leaves(new_state), jax.tree.leaves(shardings)):
    assert array.sharding.is_equivalent_to(sharding, array.ndim)
  embedding = new_state.params["embed_tokens"]["embedding"]
  assert len({str(s.index) for s in embedding.addressable_shards}) > 1  # really split, not replicated
  assert not np.allclose(jax.device_get(new_state.params["norm"]["scale"]), before["norm"]["scale"])


def test_non_finite_step_is_skipped_counted_and_the_streak_resets(setup):
  trainer, state, shardings, step = _fresh(setup)
  batch = _batch(trainer)
  good_params = jax.device_get(state.params)
  bad = jax.device_get(state.params)
  bad["norm"]["scale"] = bad["norm"]["scale"] * np.nan
  poisoned = state.replace(params=jax.device_put(bad, shardings.params))
  opt_before = jax.device_get(poisoned.opt_state)
  bad_params = jax.device_get(poisoned.params)

  after_bad, metrics = step(poisoned, batch)
  assert int(metrics["skipped"]) == 1 and int(after_bad.skipped_steps) == 1
  assert int(after_bad.nonfinite_streak) == 1 and int(after_bad.step) == 1
  # Nothing was applied: parameters (NaNs included) and the optimizer state (its count too) are unchanged.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), jax.device_get(after_bad.params), bad_params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), jax.device_get(after_bad.opt_state), opt_before)

  after_bad2, _ = step(after_bad, batch)
  assert int(after_bad2.nonfinite_streak) == 2 and int(after_bad2.skipped_steps) == 2

  # Finite parameters again: the step applies, the streak resets, the total stays.
  healed = after_bad2.replace(params=jax.device_put(good_params, shardings.params))
  after_good, metrics = step(healed, batch)
  assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
  assert int(after_good.nonfinite_streak) == 0 and int(after_good.skipped_steps) == 2
  assert int(after_good.step) == 3
  # The learning rate of the first applied step is the schedule's step 0 (skips do not advance it).
  assert float(metrics["learning_rate"]) == pytest.approx(1e-3)


def test_microbatch_count_must_divide_the_batch(setup):
  big, state, shardings, _ = _fresh(setup)
  trainer = Trainer(big.model, big.optimizer, big.learning_rate, LAYOUT, big.mesh, big.batch_sharding,
                    big.mesh_context, num_microbatches=3)
  with pytest.raises(ValueError, match="num_microbatches=3"):
    trainer.jit_train_step(shardings)(state, _batch(trainer))
