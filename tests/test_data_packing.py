"""Packing: whole samples only, positions restart, segment ids, shifted inputs, overlong policy."""

import numpy as np
import pytest
import tensorflow as tf

from anygpt_jax.data import packing


def samples(lengths, seed=0):
  rng = np.random.default_rng(seed)
  targets = [rng.integers(3, 1000, n).tolist() for n in lengths]
  weights = [rng.integers(0, 2, n).tolist() for n in lengths]
  return targets, weights


def pack(targets, weights, length, overlong="drop"):
  # As inside tf.data: a graph (an eager while_loop runs op by op).
  fn = tf.function(lambda t, w: packing.pack_window(t, w, length, overlong))
  out = fn(tf.ragged.constant(targets, tf.int32), tf.ragged.constant(weights, tf.int32))
  return {k: v.numpy() for k, v in out.items()}


def unpack(rows):
  """Rows -> list of (targets, weights, inputs) per segment, checking positions and ids on the way."""
  found = []
  for r in range(rows["decoder_target_tokens"].shape[0]):
    seg = rows["decoder_segment_ids"][r]
    n = int((seg > 0).sum())
    assert (seg[n:] == 0).all() and (rows["decoder_target_tokens"][r, n:] == 0).all()
    assert (rows["decoder_loss_weights"][r, n:] == 0).all() and (rows["decoder_input_tokens"][r, n:] == 0).all()
    ids = seg[:n]
    assert ids[0] == 1 and (np.diff(ids) >= 0).all() and (np.diff(ids) <= 1).all()
    for s in np.unique(ids):
      where = np.nonzero(seg == s)[0]
      assert (rows["decoder_positions"][r, where] == np.arange(len(where))).all()
      t = rows["decoder_target_tokens"][r, where]
      inputs = rows["decoder_input_tokens"][r, where]
      assert inputs[0] == 0 and (inputs[1:] == t[:-1]).all()
      found.append((t.tolist(), rows["decoder_loss_weights"][r, where].tolist()))
  return found


def test_every_sample_lands_whole_in_one_row():
  lengths = [5, 17, 3, 30, 11, 8, 8, 2, 29, 1, 14]
  targets, weights = samples(lengths)
  rows = pack(targets, weights, 32)
  found = unpack(rows)
  assert sorted(found) == sorted(zip(targets, weights))
  # First-fit decreasing packs these 128 tokens into the minimum of 4 rows of 32.
  assert rows["decoder_target_tokens"].shape == (4, 32)
  assert rows["num_overlong"].sum() == 0


@pytest.mark.parametrize("overlong, kept, count", [("drop", 2, 1), ("trim", 3, 1)])
def test_overlong_samples_are_dropped_or_trimmed_and_counted(overlong, kept, count):
  targets, weights = samples([4, 40, 6])
  rows = pack(targets, weights, 16, overlong)
  found = unpack(rows)
  assert len(found) == kept and rows["num_overlong"].sum() == count
  if overlong == "trim":
    assert (targets[1][:16], weights[1][:16]) in found


def test_efficiency_on_varied_lengths():
  rng = np.random.default_rng(3)
  lengths = rng.integers(40, 1200, 2000).tolist()
  targets, weights = samples(lengths)
  rows = pack(targets, weights, 4500)
  efficiency = (rows["decoder_segment_ids"] > 0).mean()
  assert sum(lengths) / rows["decoder_segment_ids"].size == pytest.approx(efficiency)
  assert efficiency > 0.99


def test_dataset_level_packing_and_padding():
  targets, weights = samples([3, 9, 4, 7, 6, 2, 5])
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(targets, tf.int32),
                                           "loss_weights": tf.ragged.constant(weights, tf.int32)})
  packed = list(packing.pack_dataset(ds, 12, window=4).as_numpy_iterator())
  assert sorted(unpack({k: np.stack([p[k] for p in packed]) for k in packed[0]})) == sorted(zip(targets, weights))
  padded = list(packing.pad_dataset(ds, 8, "drop").as_numpy_iterator())
  assert len(padded) == 6  # the 9-token sample is dropped
  assert all(p["decoder_segment_ids"].max() == 1 for p in padded)
  with pytest.raises(ValueError, match="overlong"):
    packing.pack_dataset(ds, 12, overlong="split")


def test_a_window_of_only_overlong_samples_stops_drop_and_packs_trimmed():
  """'drop' would empty every window forever, so it fails naming the corpus; 'trim' fills the rows."""
  targets, weights = samples([9, 10, 11, 12])
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(targets, tf.int32),
                                           "loss_weights": tf.ragged.constant(weights, tf.int32)})
  with pytest.raises(tf.errors.InvalidArgumentError, match="packing tiny: every sample of a window is longer"):
    list(packing.pack_dataset(ds, 8, window=4, name="tiny").as_numpy_iterator())
  trimmed = list(packing.pack_dataset(ds, 8, window=4, overlong="trim").as_numpy_iterator())
  assert len(trimmed) == 4 and all(r["decoder_segment_ids"].min() == 1 for r in trimmed)
  assert sum(r["num_overlong"] for r in trimmed) == 4


def test_carrying_short_rows_keeps_small_windows_tight():
  rng = np.random.default_rng(4)
  lengths = rng.integers(40, 400, 1500).tolist()
  targets, weights = samples(lengths, seed=4)
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(targets, tf.int32),
                                           "loss_weights": tf.ragged.constant(weights, tf.int32)})
  carried = list(packing.pack_dataset(ds, 1024, window=40).as_numpy_iterator())
  rows = {k: np.stack([r[k] for r in carried]) for k in carried[0]}
  assert sorted(unpack(rows)) == sorted(zip(targets, weights))  # nothing lost or doubled
  efficiency = (rows["decoder_segment_ids"] > 0).mean()
  plain = packing.pack_dataset(ds, 1024, window=40, max_carry_rows=0)
  plain_segments = np.stack([r["decoder_segment_ids"] for r in plain.as_numpy_iterator()])
  plain_efficiency = (plain_segments > 0).mean()
  assert efficiency > 0.99 > plain_efficiency
