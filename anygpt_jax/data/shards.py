"""The pretokenized shard schema shared by the tokenization job and the SeqIO tasks.

One `tf.train.Example` per sample; a sample is an ordered list of parts (text or
modality codes), which fits pairs, interleaved documents and chats alike. Modality
codes are stored modality-local (image [0, 8192), speech [0, 1024), music [0, 8192)
with codebook offsets already applied); text is stored as UTF-8 and tokenized by the
data pipeline, so a new SentencePiece model needs no re-tokenization.

TensorFlow is imported lazily (for FEATURE_SPEC and reading): `import tensorflow` imports
JAX whenever JAX is installed (tensorflow/lite/python/util.py), and the PyTorch tokenizer
workers, which write shards through `serialize_sample`, must not load JAX. Writing is pure
Python: the tf.train.Example wire format is encoded directly.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from typing import Sequence

from anygpt_jax.vocabulary.layout import CONTENT_KINDS

PART_KINDS = CONTENT_KINDS  # text, then the modalities in id order
PART_ROLES = ("", "system", "user", "assistant")


def _feature_specs() -> tuple[dict, dict]:
  import tensorflow as tf
  # Feature spec for `tf.io.parse_single_example`: what every shard record carries.
  required = {
      "id": tf.io.FixedLenFeature([], tf.string),
      "part_kind": tf.io.VarLenFeature(tf.string),
      "part_role": tf.io.VarLenFeature(tf.string),
      "part_text": tf.io.VarLenFeature(tf.string),
      "part_codes": tf.io.VarLenFeature(tf.int64),
      "part_code_len": tf.io.VarLenFeature(tf.int64),
  }
  optional = {
      "duration_s": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
      "source": tf.io.FixedLenFeature([], tf.string, default_value=b""),
  }
  return required, optional


def __getattr__(name):
  """FEATURE_SPEC / OPTIONAL_FEATURE_SPEC, built (and TF imported) on first access."""
  if name in ("FEATURE_SPEC", "OPTIONAL_FEATURE_SPEC"):
    required, optional = _feature_specs()
    globals().update(FEATURE_SPEC=required, OPTIONAL_FEATURE_SPEC=optional)
    return globals()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_SHARD_NAME = re.compile(r"^(?P<corpus>.+)-(?P<split>[^-]+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")


class ShardError(ValueError):
  """A record that does not follow the shard schema."""


@dataclasses.dataclass
class Part:
  """One piece of a sample: text, or one modality item's local codes."""

  kind: str
  text: str = ""
  codes: Sequence[int] = ()
  role: str = ""

  def __post_init__(self):
    if self.kind not in PART_KINDS:
      raise ShardError(f"part kind {self.kind!r} not in {PART_KINDS}")
    if self.role not in PART_ROLES:
      raise ShardError(f"part role {self.role!r} not in {PART_ROLES}")
    if self.kind == "text" and len(self.codes):
      raise ShardError("a text part carries no codes")
    if self.kind != "text" and self.text:
      raise ShardError(f"a {self.kind} part carries no text")


@dataclasses.dataclass
class Sample:
  """A pretokenized sample: its source key, its parts, optional metadata."""

  id: str
  parts: list[Part]
  duration_s: float = 0.0
  source: str = ""


def shard_filename(corpus: str, split: str, index: int, count: int) -> str:
  """`{corpus}-{split}-{i:05d}-of-{n:05d}`: the shard name every reader and the data pipeline globs for."""
  if not 0 <= index < count:
    raise ShardError(f"shard index {index} outside [0, {count})")
  return f"{corpus}-{split}-{index:05d}-of-{count:05d}"


def parse_shard_filename(name: str) -> dict:
  """Inverse of `shard_filename`: {'corpus', 'split', 'index', 'count'}."""
  m = _SHARD_NAME.match(name)
  if not m:
    raise ShardError(f"{name!r} is not a shard name of the form corpus-split-00000-of-00001")
  return {"corpus": m["corpus"], "split": m["split"], "index": int(m["index"]), "count": int(m["count"])}


# --- tf.train.Example wire format (Example{1: Features{1: map<string, Feature>}}) -------------
def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # negative int64 values are ten-byte two's complement varints
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes(values) -> bytes:  # Feature.bytes_list (1) = BytesList{repeated bytes value = 1}
  return _field(1, b"".join(_field(1, v) for v in values))


def _floats(values) -> bytes:  # Feature.float_list (2) = FloatList{packed float value = 1}
  return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)) if len(values) else b"")


def _ints(values) -> bytes:  # Feature.int64_list (3) = Int64List{packed int64 value = 1}
  packed = b"".join(_varint(int(v)) for v in values)
  return _field(3, _field(1, packed) if packed else b"")


def serialize_sample(sample: Sample) -> bytes:
  """A `Sample` as a serialized `tf.train.Example` in the shard schema (no TensorFlow needed)."""
  codes, code_len = [], []
  for part in sample.parts:
    codes.extend(int(c) for c in part.codes)
    code_len.append(len(part.codes))
  features = {
      "id": _bytes([sample.id.encode()]),
      "part_kind": _bytes([p.kind.encode() for p in sample.parts]),
      "part_role": _bytes([p.role.encode() for p in sample.parts]),
      "part_text": _bytes([p.text.encode() for p in sample.parts]),
      "part_codes": _ints(codes),
      "part_code_len": _ints(code_len),
  }
  if sample.duration_s:
    features["duration_s"] = _floats([sample.duration_s])
  if sample.source:
    features["source"] = _bytes([sample.source.encode()])
  entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v)) for k, v in features.items())
  return _field(1, entries)


def deserialize_sample(record: bytes) -> Sample:
  """Inverse of `serialize_sample`; raises ShardError naming the record on schema violations."""
  import tensorflow as tf
  ex = tf.train.Example.FromString(record)
  f = ex.features.feature

  def strings(key):
    return [v.decode() for v in f[key].bytes_list.value] if key in f else []

  sample_id = strings("id")[0] if strings("id") else "<no id>"
  kinds, roles, texts = strings("part_kind"), strings("part_role"), strings("part_text")
  code_len = list(f["part_code_len"].int64_list.value) if "part_code_len" in f else []
  codes = list(f["part_codes"].int64_list.value) if "part_codes" in f else []
  if not (len(kinds) == len(roles) == len(texts) == len(code_len)):
    raise ShardError(f"record {sample_id!r}: part lists differ in length "
                     f"(kind {len(kinds)}, role {len(roles)}, text {len(texts)}, code_len {len(code_len)})")
  if sum(code_len) != len(codes):
    raise ShardError(f"record {sample_id!r}: part_code_len sums to {sum(code_len)}, "
                     f"part_codes has {len(codes)}")
  parts, offset = [], 0
  for kind, role, text, n in zip(kinds, roles, texts, code_len):
    try:
      parts.append(Part(kind, text, codes[offset:offset + n], role))
    except ShardError as e:
      raise ShardError(f"record {sample_id!r}: {e}") from None
    offset += n
  duration = f["duration_s"].float_list.value[0] if "duration_s" in f else 0.0
  source = strings("source")[0] if "source" in f else ""
  return Sample(sample_id, parts, duration, source)
