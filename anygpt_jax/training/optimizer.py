"""Optimizer and learning-rate schedule (paper Table 8: Adam, warmup 3 %, cosine, clip 1.0)."""

from __future__ import annotations

import gin
import optax


@gin.configurable
def learning_rate_schedule(
    peak_learning_rate: float = 6e-5,
    total_steps: int = gin.REQUIRED,
    warmup_fraction: float = 0.03,
    warmup_steps: int | None = None,
    final_learning_rate_fraction: float = 0.0,
    kind: str = "cosine",
) -> optax.Schedule:
  """Linear warmup to `peak_learning_rate`, then `kind` decay to the end of training.

  The warmup starts at peak / warmup_steps on step 0 (not 0: no step trains with a zero learning
  rate) and reaches the peak on step warmup_steps - 1; the decay starts from the peak on step
  warmup_steps.

  Args:
    peak_learning_rate: the learning rate after warmup.
    total_steps: optimizer steps of the whole run (warmup included).
    warmup_fraction: warmup length as a fraction of `total_steps` (used when `warmup_steps` is None).
    warmup_steps: explicit warmup length in steps.
    final_learning_rate_fraction: the learning rate at `total_steps`, as a fraction of the peak.
    kind: 'cosine', 'linear' or 'constant' (after warmup).
  """
  if total_steps is None or total_steps < 1:
    raise ValueError(f"learning_rate_schedule.total_steps={total_steps} must be a positive step count")
  if warmup_steps is None:
    warmup_steps = int(round(warmup_fraction * total_steps))
  warmup_steps = max(0, min(warmup_steps, total_steps))
  end_value = peak_learning_rate * final_learning_rate_fraction
  decay_steps = max(1, total_steps - warmup_steps)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak_learning_rate, decay_steps, alpha=final_learning_rate_fraction)
  elif kind == "linear":
    decay = optax.linear_schedule(peak_learning_rate, end_value, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(peak_learning_rate)
  else:
    raise ValueError(f"learning_rate_schedule.kind={kind!r}: expected 'cosine', 'linear' or 'constant'")
  if warmup_steps == 0:
    return decay
  # Steps 0 .. warmup_steps - 1 rise linearly from peak/warmup_steps to the peak, so the first step
  # trains with peak/warmup_steps rather than 0 and no step is wasted.
  warmup = optax.linear_schedule(peak_learning_rate / warmup_steps, peak_learning_rate, warmup_steps - 1)
  return optax.join_schedules([warmup, decay], [warmup_steps])


@gin.configurable
def make_optimizer(
    learning_rate: optax.Schedule | float = gin.REQUIRED,
    name: str = "adam",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    clip_global_norm: float | None = 1.0,
) -> optax.GradientTransformation:
  """Adam (the paper's choice) or AdamW, after global-norm clipping.

  The betas default to HuggingFace's Trainer values, which AnyGPT trained with.
  """
  if name == "adam":
    if weight_decay:
      raise ValueError("make_optimizer: weight_decay needs name='adamw' (plain Adam has none)")
    core = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  elif name == "adamw":
    core = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    raise ValueError(f"make_optimizer.name={name!r}: expected 'adam' or 'adamw'")
  if clip_global_norm is None:
    return core
  return optax.chain(optax.clip_by_global_norm(clip_global_norm), core)
