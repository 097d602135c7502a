"""Learning-rate schedule and optimizer construction (paper Table 8 settings)."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer


def test_warmup_then_cosine_to_zero():
  lr = learning_rate_schedule(peak_learning_rate=6e-5, total_steps=1000, warmup_fraction=0.03)
  # 30 warmup steps rising linearly from peak/30 (no step trains at 0) to the peak.
  assert float(lr(0)) == pytest.approx(6e-5 / 30, rel=1e-5)
  assert float(lr(15)) < float(lr(28)) < float(lr(29)) == pytest.approx(6e-5)
  assert float(lr(30)) == pytest.approx(6e-5)
  assert float(lr(30 + 485)) == pytest.approx(3e-5, rel=1e-3)  # half-way through the cosine
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-12)
  values = np.array([float(lr(s)) for s in range(30, 1001, 10)])
  assert np.all(np.diff(values) <= 1e-12)


def test_final_fraction_and_linear_and_explicit_warmup():
  lr = learning_rate_schedule(peak_learning_rate=1.0, total_steps=100, warmup_steps=10, kind="linear",
                              final_learning_rate_fraction=0.1)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(100)) == pytest.approx(0.1)
  assert float(lr(55)) == pytest.approx(0.55)


def test_bad_schedule_arguments_are_named():
  with pytest.raises(ValueError, match="kind='exp'"):
    learning_rate_schedule(peak_learning_rate=1.0, total_steps=10, kind="exp")
  with pytest.raises(ValueError, match="total_steps"):
    learning_rate_schedule(peak_learning_rate=1.0, total_steps=0)


def _one_update(tx, grads, params):
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  return updates


def test_clipping_and_adam_vs_adamw():
  params = {"w": jnp.ones((4,))}
  grads = {"w": jnp.full((4,), 100.0)}
  # Clipping to norm 1 before Adam: the first Adam step is lr * sign(g) either way, so compare
  # clipping through optax's own clip.
  clipped = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())[0]
  assert float(optax.global_norm(clipped)) == pytest.approx(1.0)
  adam = _one_update(make_optimizer(learning_rate=0.1, name="adam"), grads, params)
  np.testing.assert_allclose(adam["w"], -0.1, rtol=1e-5)
  adamw = _one_update(make_optimizer(learning_rate=0.1, name="adamw", weight_decay=0.5), grads, params)
  np.testing.assert_allclose(adamw["w"], -0.1 - 0.1 * 0.5, rtol=1e-5)  # decoupled decay on top
  with pytest.raises(ValueError, match="adamw"):
    make_optimizer(learning_rate=0.1, name="adam", weight_decay=0.1)
  with pytest.raises(ValueError, match="sgd"):
    make_optimizer(learning_rate=0.1, name="sgd")


def test_gin_binds_the_paper_settings():
  gin.clear_config()
  try:
    gin.parse_config("""
      learning_rate_schedule.peak_learning_rate = 2e-5
      learning_rate_schedule.total_steps = 5000
      make_optimizer.clip_global_norm = 1.0
    """)
    lr = learning_rate_schedule()
    assert float(lr(150)) == pytest.approx(2e-5)  # 3 % of 5000 = 150 warmup steps
    assert isinstance(make_optimizer(learning_rate=lr), optax.GradientTransformation)
  finally:
    gin.clear_config()


# Clipping happens inside `make_optimizer`, the optimizer every run builds.
def _first_update(tx, grads):
  params = jax.tree.map(jnp.zeros_like, grads)
  return tx.update(grads, tx.init(params), params)[0]["w"]


def test_make_optimizer_clips_the_global_norm():
  # eps=1 makes Adam's first step depend on the gradient's size: -lr * g / (|g| + 1) per element.
  big = {"w": jnp.full((4,), 100.0)}  # global norm 200: clipped to 1, i.e. 0.5 per element
  small = {"w": jnp.full((4,), 0.25)}  # global norm 0.5: left alone
  clipped = make_optimizer(learning_rate=0.1, eps=1.0, clip_global_norm=1.0)
  np.testing.assert_allclose(_first_update(clipped, big), -0.1 * 0.5 / 1.5, rtol=1e-5)
  np.testing.assert_allclose(_first_update(clipped, small), -0.1 * 0.25 / 1.25, rtol=1e-5)
  unclipped = make_optimizer(learning_rate=0.1, eps=1.0, clip_global_norm=None)
  np.testing.assert_allclose(_first_update(unclipped, big), -0.1 * 100 / 101, rtol=1e-5)
  # The default is the paper's clip at 1.0, for Adam and AdamW alike.
  adamw = make_optimizer(learning_rate=0.1, name="adamw", eps=1.0, weight_decay=0.0)
  np.testing.assert_allclose(_first_update(adamw, big), -0.1 * 0.5 / 1.5, rtol=1e-5)
