"""TFRecord files written without TensorFlow read back with TensorFlow and the shard schema."""

import pytest

from anygpt_jax.data.shards import FEATURE_SPEC, OPTIONAL_FEATURE_SPEC, Part, Sample, deserialize_sample, \
    serialize_sample
from anygpt_jax.tokenizers.tfrecord import TFRecordWriter, crc32c, read_tfrecords


def test_crc32c_check_value():
  assert crc32c(b"123456789") == 0xE3069283


def test_tensorflow_reads_our_records(tmp_path):
  import tensorflow as tf
  samples = [
      Sample("a", [Part("music", codes=[0, 2048, 8191]), Part("text", text="jazz 🎶")], duration_s=5.0, source="x.wav"),
      Sample("b", [Part("text", text="hi", role="user"), Part("speech", codes=[1, 2], role="assistant")]),
      Sample("c", []),
  ]
  path = tmp_path / "shard"
  with TFRecordWriter(str(path)) as w:
    for s in samples:
      w.write(serialize_sample(s))
  records = [r.numpy() for r in tf.data.TFRecordDataset([str(path)])]
  assert [serialize_sample(deserialize_sample(r)) for r in records] == [serialize_sample(s) for s in samples]
  assert [deserialize_sample(r).id for r in records] == ["a", "b", "c"]
  assert list(read_tfrecords(str(path))) == records
  parsed = tf.io.parse_single_example(records[0], {**FEATURE_SPEC, **OPTIONAL_FEATURE_SPEC})
  assert parsed["part_codes"].values.numpy().tolist() == [0, 2048, 8191]
  assert float(parsed["duration_s"]) == 5.0


def test_corruption_is_detected(tmp_path):
  path = tmp_path / "shard"
  with TFRecordWriter(str(path)) as w:
    w.write(b"payload")
  data = bytearray(path.read_bytes())
  data[14] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="corrupt"):
    list(read_tfrecords(str(path)))
