"""Loss sums: normalisation by real target tokens, z-loss, per-modality loss and accuracy."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anygpt_jax.training.loss import loss_sums, summarize
from anygpt_jax.vocabulary.layout import CONTENT_KINDS, VocabularyLayout, target_modality

LAYOUT = VocabularyLayout(text_vocab_size=100)


def test_target_modality_follows_the_layout():
  image, speech, music = (LAYOUT.modality(m) for m in ("image", "speech", "music"))
  ids = jnp.array([0, 99, LAYOUT.human_id, LAYOUT.eos_id, image.first_code_id, image.start_id, image.end_id,
                   speech.first_code_id, speech.end_id, music.last_code_id, music.end_id])
  assert target_modality(ids, LAYOUT).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
  assert CONTENT_KINDS[:4] == ("text", "image", "speech", "music")  # AnyGPT's id order


def test_loss_and_trainer_import_without_tensorflow():
  """The trainer's math needs no TF: the loss and the Trainer import neither TF nor SeqIO."""
  code = ("import sys, anygpt_jax.training.loss, anygpt_jax.training.trainer; "
          "print(sorted(m for m in ('tensorflow', 'seqio') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _reference(logits, targets, weights):
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return nll, log_z


def test_loss_is_normalised_by_real_target_tokens_and_split_by_modality():
  rng = np.random.default_rng(0)
  vocab = LAYOUT.padded_vocab_size
  image_id = LAYOUT.modality("image").first_code_id + 5
  music_id = LAYOUT.modality("music").first_code_id + 7
  targets = np.array([[3, 4, image_id, image_id, 0, 0], [music_id, 5, 6, music_id, music_id, 0]], np.int32)
  weights = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0]], np.int32)
  logits = rng.normal(size=(2, 6, vocab)).astype(np.float32)
  sums = jax.device_get(loss_sums(jnp.asarray(logits), targets, weights, LAYOUT, z_loss=1e-3))
  nll, log_z = _reference(logits, targets, weights)
  w = weights.astype(bool)
  assert sums["tokens"] == 8
  np.testing.assert_allclose(sums["cross_entropy"], nll[w].sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["z_loss"], 1e-3 * (log_z[w] ** 2).sum(), rtol=1e-5)
  modality = np.asarray(target_modality(jnp.asarray(targets), LAYOUT))
  for m in range(4):
    mask = w & (modality == m)
    assert sums["modality_tokens"][m] == mask.sum()
    np.testing.assert_allclose(sums["modality_cross_entropy"][m], nll[mask].sum(), rtol=1e-5)
  summary = jax.device_get(summarize(sums))
  np.testing.assert_allclose(summary["cross_entropy"], nll[w].mean(), rtol=1e-5)
  np.testing.assert_allclose(summary["loss"], nll[w].mean() + 1e-3 * (log_z[w] ** 2).mean(), rtol=1e-5)
  np.testing.assert_allclose(summary["image/loss"], nll[w & (modality == 1)].mean(), rtol=1e-5)
  assert np.isnan(summary["speech/loss"])  # no speech target in the batch: a gap, not a fake zero
  assert summary["speech/tokens"] == 0


def test_accuracy_counts_argmax_hits_on_weighted_positions_only():
  vocab = LAYOUT.padded_vocab_size
  targets = np.array([[1, 2, 3]], np.int32)
  logits = np.zeros((1, 3, vocab), np.float32)
  logits[0, 0, 1] = 5.0  # hit
  logits[0, 1, 7] = 5.0  # miss
  logits[0, 2, 3] = 5.0  # hit but weight 0
  sums = jax.device_get(loss_sums(jnp.asarray(logits), targets, np.array([[1, 1, 0]]), LAYOUT))
  assert sums["correct"] == 1 and sums["tokens"] == 2
  assert float(summarize(sums)["accuracy"]) == pytest.approx(0.5)
