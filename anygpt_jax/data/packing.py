"""Packing rendered samples of one corpus into rows of SeqIO's LM features, whole samples only.

SeqIO's own `trim_and_pack_dataset` fills one row at a time (a long sample that does not fit
closes the row) and trims its features by counting non-zero values, which breaks a loss-weight
feature with zeros inside. Here a window of samples is packed first-fit-decreasing into rows of
`length` tokens, entirely with TF ops (deterministic and checkpointable with the iterator):

  * samples are never split; a sample longer than `length` is trimmed to `length` or dropped
    (`overlong=`), and each window reports how many it had (`num_overlong` on its first row);
  * `decoder_segment_ids` number the samples of a row from 1, `decoder_positions` restart at 0
    for each sample, `decoder_input_tokens` are the targets shifted right within each sample
    (0 at a sample's first position), padding is 0 everywhere;
  * the window (`window` samples) bounds memory; the least-filled rows of a window (its short
    tail) are carried into the next window once instead of being emitted, so small windows pack
    as tightly as big ones; `tools/bench_pipeline.py` measures the efficiency.
"""

from __future__ import annotations

import functools

import tensorflow as tf

OVERLONG_POLICIES = ("drop", "trim")


def _trim_or_drop(targets: tf.RaggedTensor, weights: tf.RaggedTensor, length: int, overlong: str):
  lengths = targets.row_lengths()
  too_long = lengths > length
  if overlong == "trim":
    targets, weights = targets[:, :length], weights[:, :length]
  else:
    keep = tf.logical_not(too_long)
    targets, weights = tf.ragged.boolean_mask(targets, keep), tf.ragged.boolean_mask(weights, keep)
  return targets, weights, tf.reduce_sum(tf.cast(too_long, tf.int32))


@tf.autograph.experimental.do_not_convert
def first_fit_decreasing(lengths: tf.Tensor, length: int) -> tf.Tensor:
  """Row index per sample (int32 [n]) packing `lengths` (int32 [n], each <= length) first-fit decreasing."""
  n = tf.size(lengths)
  order = tf.argsort(lengths, direction="DESCENDING", stable=True)
  # First fit never leaves two rows at most half full, so it needs at most 2*ceil(total/L)+1
  # rows: the fill vector need not be n long (the loop is O(n * rows)).
  max_rows = tf.minimum(n, 2 * (tf.reduce_sum(lengths) // length + 1) + 1)

  def body(i, fill, assign):
    sample = order[i]
    size = lengths[sample]
    row = tf.argmax(tf.cast(fill + size <= length, tf.int32), output_type=tf.int32)
    fill = tf.tensor_scatter_nd_add(fill, [[row]], [size])
    assign = tf.tensor_scatter_nd_update(assign, [[sample]], [row])
    return i + 1, fill, assign

  _, _, assign = tf.while_loop(lambda i, *_: i < n, body,
                               (tf.constant(0), tf.zeros([max_rows], tf.int32), tf.zeros([n], tf.int32)),
                               parallel_iterations=1)
  return assign


def _rows(targets: tf.RaggedTensor, weights: tf.RaggedTensor, assign: tf.Tensor, num_rows, length: int) -> dict:
  """Samples (ragged [n, None]) placed in rows by `assign` (int32 [n]) -> LM features [num_rows, length]."""
  lengths = tf.cast(targets.row_lengths(), tf.int32)
  n = tf.size(lengths)
  # Samples in row order, keeping their window order inside a row.
  order = tf.argsort(assign * (n + 1) + tf.range(n), stable=True)
  sorted_lengths = tf.gather(lengths, order)
  sorted_rows = tf.gather(assign, order)
  row_lengths = tf.math.unsorted_segment_sum(lengths, assign, num_rows)
  first_sample_of_row = tf.cumsum(tf.math.unsorted_segment_sum(tf.ones_like(assign), assign, num_rows),
                                  exclusive=True)
  segment_of_sample = tf.range(n) - tf.gather(first_sample_of_row, sorted_rows) + 1

  # validate=False here and in `_pack_window_carrying`: the lengths are our own sums, and a
  # validation Assert would make the traced step stateful, which tf.data refuses to checkpoint.
  def rows(flat_values):
    ragged = tf.RaggedTensor.from_row_lengths(flat_values, row_lengths, validate=False)
    return ragged.to_tensor(0, shape=[num_rows, length])

  flat_targets = tf.gather(targets, order).flat_values
  flat_weights = tf.gather(weights, order).flat_values
  positions = tf.ragged.range(sorted_lengths).flat_values
  segments = tf.repeat(segment_of_sample, sorted_lengths)
  # Shifted within each sample: a sample's first input is 0, never the previous sample's token.
  previous = tf.concat([[0], flat_targets[:-1]], 0)
  inputs = tf.where(positions == 0, 0, previous)
  return {
      "decoder_input_tokens": rows(inputs),
      "decoder_target_tokens": rows(flat_targets),
      "decoder_loss_weights": rows(flat_weights),
      "decoder_segment_ids": rows(segments),
      "decoder_positions": rows(positions),
  }


def _num_rows(assign: tf.Tensor) -> tf.Tensor:
  return tf.reduce_max(tf.concat([assign + 1, [0]], 0))


@tf.autograph.experimental.do_not_convert
def pack_window(targets: tf.RaggedTensor, weights: tf.RaggedTensor, length: int, overlong: str = "drop") -> dict:
  """A window of samples (ragged [n, None] int32) -> packed rows, each feature int32 [rows, length]."""
  targets, weights, num_overlong = _trim_or_drop(targets, weights, length, overlong)
  assign = first_fit_decreasing(tf.cast(targets.row_lengths(), tf.int32), length)
  num_rows = _num_rows(assign)
  out = _rows(targets, weights, assign, num_rows, length)
  out["num_overlong"] = tf.one_hot(0, num_rows, on_value=num_overlong, off_value=0, dtype=tf.int32)
  return out


def empty_carry() -> tuple:
  """The carried samples between windows: flat targets, flat weights, lengths, ages; and the count
  of skipped records not yet reported (a window that emits no row passes it on)."""
  return (tf.zeros([0], tf.int32), tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), tf.zeros([0], tf.int32),
          tf.zeros([], tf.int32))


def window_check(window: dict, length: int, overlong: str, name: str = "") -> tf.Operation:
  """Fails (InvalidArgumentError naming `name`) when every sample of a window of 2 or more is
  longer than `length` and `overlong` drops them: such a corpus would otherwise loop forever, silently."""
  window_size = window["targets"].nrows()
  too_long = tf.reduce_sum(tf.cast(window["targets"].row_lengths() > length, window_size.dtype))
  stuck = tf.logical_and(tf.logical_and(overlong == "drop", too_long >= window_size), window_size >= 2)
  return tf.debugging.Assert(
      tf.logical_not(stuck),
      [f"packing {name or 'a task'}: every sample of a window is longer than the row length {length}; "
       "use a longer sequence_length or overlong='trim'. Samples in the window:", window_size])


@tf.autograph.experimental.do_not_convert
def pack_window_carrying(carry: tuple, window: dict, length: int, overlong: str = "drop", max_carry_rows: int = 4,
                         min_fill: float = 0.99, max_carries: int = 16, name: str = ""):
  """One step of `tf.data.Dataset.scan`: packs carried samples + a window, carries the worst rows.

  Rows filled below `min_fill` (the `max_carry_rows` least filled of them) are not emitted: their
  samples go into the next window, at most `max_carries` times (a row holding a sample carried
  that often is emitted), so a window's short tail rows do not cost efficiency and no sample
  waits long. A window with `final` set carries nothing. The window is checked (`window_check`) first.
  Returns (new carry, rows as in `pack_window`).
  """
  with tf.control_dependencies([window_check(window, length, overlong, name)]):
    return _pack_window_carrying(carry, window, length, overlong, max_carry_rows, min_fill, max_carries)


def _pack_window_carrying(carry: tuple, window: dict, length: int, overlong: str, max_carry_rows: int,
                          min_fill: float, max_carries: int):
  carry_targets, carry_weights, carry_lengths, carry_age, carry_skipped = carry
  targets, weights, num_overlong = _trim_or_drop(window["targets"], window["loss_weights"], length, overlong)
  targets = tf.concat([tf.RaggedTensor.from_row_lengths(carry_targets, carry_lengths, validate=False), targets], 0)
  weights = tf.concat([tf.RaggedTensor.from_row_lengths(carry_weights, carry_lengths, validate=False), weights], 0)
  age = tf.concat([carry_age + 1, tf.zeros([window["targets"].nrows()], tf.int32)], 0)[:targets.nrows()]
  lengths = tf.cast(targets.row_lengths(), tf.int32)
  assign = first_fit_decreasing(lengths, length)
  num_rows = _num_rows(assign)
  fill = tf.math.unsorted_segment_sum(lengths, assign, num_rows)
  holds_carried = tf.math.unsorted_segment_max(age, assign, num_rows) >= max_carries
  candidate = tf.logical_and(tf.cast(fill, tf.float32) < min_fill * length, tf.logical_not(holds_carried))
  candidate = tf.logical_and(candidate, tf.logical_not(window["final"]))
  by_fill = tf.argsort(tf.where(candidate, fill, length + 1), stable=True)
  num_carried = tf.minimum(max_carry_rows, tf.reduce_sum(tf.cast(candidate, tf.int32)))
  carried_row = tf.scatter_nd(by_fill[:num_carried, None], tf.ones([num_carried], tf.bool), [num_rows])
  carried_sample = tf.gather(carried_row, assign)
  emitted = tf.logical_not(carried_sample)
  new_index = tf.cumsum(tf.cast(tf.logical_not(carried_row), tf.int32)) - 1
  out = _rows(tf.ragged.boolean_mask(targets, emitted), tf.ragged.boolean_mask(weights, emitted),
              tf.gather(new_index, tf.boolean_mask(assign, emitted)), num_rows - num_carried, length)
  out["num_overlong"] = tf.one_hot(0, num_rows - num_carried, on_value=num_overlong, off_value=0, dtype=tf.int32)
  skipped = carry_skipped + tf.reduce_sum(window["num_skipped"])
  out["num_skipped"] = tf.one_hot(0, num_rows - num_carried, on_value=skipped, off_value=0, dtype=tf.int32)
  kept_targets = tf.ragged.boolean_mask(targets, carried_sample)
  new_carry = (kept_targets.flat_values, tf.ragged.boolean_mask(weights, carried_sample).flat_values,
               kept_targets.row_lengths(), tf.boolean_mask(age, carried_sample),
               tf.where(num_rows - num_carried > 0, 0, skipped))
  return new_carry, out


def pack_dataset(dataset: tf.data.Dataset, length: int, window: int = 1024, overlong: str = "drop",
                 max_carry_rows: int = 4, min_fill: float = 0.99, max_carries: int = 16,
                 name: str = "") -> tf.data.Dataset:
  """Rendered samples {'targets', 'loss_weights'} -> packed rows of LM features (+ 'num_overlong' and
  'num_skipped': the overlong samples and the skipped records of a window, on its first row).

  Windows of `window` samples are packed first-fit decreasing; up to `max_carry_rows` rows
  filled below `min_fill` move to the next window, a sample at most `max_carries` times
  (`pack_window_carrying`). A finite input ends
  with a final window that flushes what is carried.
  """
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f"overlong={overlong!r}; expected one of {OVERLONG_POLICIES}")
  if window < 1 or length < 2:
    raise ValueError(f"window={window} and length={length} must be positive (length >= 2)")
  dataset = dataset.map(_packed_features)
  windows = dataset.ragged_batch(window).map(lambda w: {**w, "final": tf.constant(False)})
  if windows.cardinality() != tf.data.INFINITE_CARDINALITY:
    empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    windows = windows.concatenate(tf.data.Dataset.from_tensors(
        {"targets": empty, "loss_weights": empty, "num_skipped": tf.zeros([0], tf.int32),
         "final": tf.constant(True)}))
  packed = _traced_pack_step(length, overlong, max_carry_rows, min_fill, max_carries)

  def step(carry, w):
    with tf.control_dependencies([window_check(w, length, overlong, name)]):
      return packed(carry, w)

  return windows.scan(empty_carry(), step).flat_map(tf.data.Dataset.from_tensor_slices)


@functools.lru_cache(maxsize=None)
def _traced_pack_step(length: int, overlong: str, max_carry_rows: int, min_fill: float, max_carries: int):
  """The packing of `pack_window_carrying` (without its check) as a `tf.function`, one per packing
  configuration.

  Tracing it builds thousands of graph ops (about a second on a CPU core); tf.data would trace it
  again for every dataset, so a mixture of many corpora, each with a train and a validation split,
  paid that once per dataset at start-up. Traced once per process here, every dataset's scan calls
  the same graph function. It holds no stateful op (the check, an Assert, stays outside), so the
  iterator still checkpoints.
  """
  @tf.function(autograph=False)
  def step(carry, window):
    return _pack_window_carrying(carry, window, length, overlong, max_carry_rows, min_fill, max_carries)
  return step


@tf.autograph.experimental.do_not_convert
def _packed_features(ex: dict) -> dict:
  """What packing reads of a rendered sample; 'num_skipped' (records the renderer skipped before
  it, `preprocessors.unbatch_counting_skipped`) is 0 for a dataset without it."""
  return {"targets": ex["targets"], "loss_weights": ex["loss_weights"],
          "num_skipped": ex.get("num_skipped", tf.constant(0, tf.int32))}


def pad_dataset(dataset: tf.data.Dataset, length: int, overlong: str = "drop") -> tf.data.Dataset:
  """Unpacked rows: one sample per row, padded with 0 (same features as `pack_dataset`)."""
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f"overlong={overlong!r}; expected one of {OVERLONG_POLICIES}")

  def one(ex):
    targets, weights = ex["targets"], ex["loss_weights"]
    too_long = tf.size(targets) > length
    targets, weights = targets[:length], weights[:length]
    n = tf.size(targets)
    pad = [[0, length - n]]
    positions = tf.range(n)
    return {
        "decoder_input_tokens": tf.pad(tf.concat([[0], targets[:-1]], 0)[:n], pad),
        "decoder_target_tokens": tf.pad(targets, pad),
        "decoder_loss_weights": tf.pad(weights, pad),
        "decoder_segment_ids": tf.pad(tf.ones_like(targets), pad),
        "decoder_positions": tf.pad(positions, pad),
        "num_overlong": tf.cast(too_long, tf.int32),
        "num_skipped": ex.get("num_skipped", tf.constant(0, tf.int32)),
        "keep": tf.logical_or(overlong == "trim", tf.logical_not(too_long)),
    }

  dataset = dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE)
  if overlong == "drop":
    dataset = dataset.filter(lambda ex: ex["keep"])
  return dataset.map(lambda ex: {k: v for k, v in ex.items() if k != "keep"})
