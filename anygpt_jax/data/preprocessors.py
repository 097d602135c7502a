"""SeqIO pieces of an AnyGPT task: reading shards (with their file names), parsing, rendering.

A task's pipeline is: `read_shard_file` (data source) -> cache placeholder -> `render_*`, which
parses and renders batches of records (after SeqIO's repeat, so every epoch draws new directions
and instructions) and gives examples one by one again.
"""

from __future__ import annotations

import functools
from typing import Sequence

import seqio
import tensorflow as tf

from anygpt_jax.data.rendering import PAIR_KINDS, GraphRenderer
from anygpt_jax.data.shards import FEATURE_SPEC


def read_shard_file(filename: tf.Tensor) -> tf.data.Dataset:
  """One TFRecord shard -> {'record', 'shard'}: the file name travels for error messages."""
  return tf.data.TFRecordDataset(filename).map(lambda r: {"record": r, "shard": filename})


@tf.autograph.experimental.do_not_convert
def parse_record(ex: dict) -> dict:
  """One serialized shard record -> dense part lists (the schema of `anygpt_jax.data.shards`); see `parse_batch`."""
  parsed = tf.io.parse_single_example(ex["record"], FEATURE_SPEC)
  out = {"id": parsed["id"], "shard": ex["shard"]}
  for key in ("part_kind", "part_role", "part_text"):
    out[key] = tf.sparse.to_dense(parsed[key], default_value="")
  for key in ("part_codes", "part_code_len"):
    out[key] = tf.sparse.to_dense(parsed[key], default_value=0)
  return out


RENDER_BATCH = 64  # records parsed and rendered together: TF's per-op overhead is paid per batch


@tf.autograph.experimental.do_not_convert
def parse_batch(batch: dict) -> dict:
  """B serialized records {'record', 'shard': [B]} -> ragged [B, None] part lists, 'id' [B]."""
  parsed = tf.io.parse_example(batch["record"], FEATURE_SPEC)
  out = {"id": parsed["id"], "shard": batch["shard"]}
  for key in ("part_kind", "part_role", "part_text", "part_codes", "part_code_len"):
    out[key] = tf.RaggedTensor.from_sparse(parsed[key])
  return out


def _render_in_batches(dataset: tf.data.Dataset, render_batch) -> tf.data.Dataset:
  """Raw records -> rendered examples: `RENDER_BATCH` records parsed and rendered per call."""
  dataset = dataset.batch(RENDER_BATCH)
  dataset = dataset.map(tf.autograph.experimental.do_not_convert(
      lambda b: render_batch(parse_batch(b), skip_invalid=True)), num_parallel_calls=tf.data.AUTOTUNE)
  return unbatch_counting_skipped(dataset)


@tf.autograph.experimental.do_not_convert
def _count_on_first_row(pending: tf.Tensor, batch: dict):
  rows = batch["targets"].nrows(out_type=tf.int32)
  total = pending + batch["num_skipped"]
  out = {k: v for k, v in batch.items() if k != "num_skipped"}
  out["num_skipped"] = tf.one_hot(0, rows, on_value=total, off_value=0, dtype=tf.int32)
  return tf.where(rows > 0, 0, total), out


def unbatch_counting_skipped(batches: tf.data.Dataset) -> tf.data.Dataset:
  """Rendered batches (each with a scalar 'num_skipped') -> examples, each with 'num_skipped' (int32):
  the records skipped since the previous example, so a batch that kept none passes its count on."""
  return batches.scan(tf.constant(0, tf.int32), _count_on_first_row).unbatch()


def render_pairs(dataset: tf.data.Dataset, renderer: GraphRenderer, kind: str, to_text_probability: float,
                 to_text_instructions: Sequence[str], from_text_instructions: Sequence[str]) -> tf.data.Dataset:
  """Raw pair records -> rendered ids; direction X->text with `to_text_probability`, per example.

  The direction and the instruction are drawn from SeqIO's seeds (one pair per batch of
  records, stateless draws per record), so a pipeline seed fixes them.
  """
  if kind not in PAIR_KINDS:
    raise ValueError(f"{kind!r} is not a pair kind; expected one of {tuple(PAIR_KINDS)}")
  if not 0.0 <= to_text_probability <= 1.0:
    raise ValueError(f"to_text_probability={to_text_probability} outside [0, 1]")
  to_text_pool = tf.constant(list(to_text_instructions))
  from_text_pool = tf.constant(list(from_text_instructions))

  @seqio.map_over_dataset(num_seeds=2)
  @tf.autograph.experimental.do_not_convert
  def render(batch, seeds):
    batch = parse_batch(batch)
    n = tf.shape(batch["id"])[:1]
    to_text = tf.random.stateless_uniform(n, seeds[0]) < to_text_probability
    draw = tf.random.stateless_uniform(n, seeds[1])
    to_text_pick = tf.gather(to_text_pool, tf.cast(draw * len(to_text_instructions), tf.int32))
    from_text_pick = tf.gather(from_text_pool, tf.cast(draw * len(from_text_instructions), tf.int32))
    return renderer.render_batch(batch, kind, to_text, tf.where(to_text, to_text_pick, from_text_pick),
                                 skip_invalid=True)

  return unbatch_counting_skipped(render(dataset.batch(RENDER_BATCH)))


def render_unprompted(dataset: tf.data.Dataset, renderer: GraphRenderer, kind: str) -> tf.data.Dataset:
  """Raw interleaved-document or chat records -> rendered ids (no random choices)."""
  return _render_in_batches(dataset, functools.partial(renderer.render_batch, kind=kind))
