"""TFRecord files without TensorFlow (importing TF would import JAX, see `anygpt_jax.data.shards`).

Framing per record, as TensorFlow writes it: uint64 length, uint32 masked CRC32C of the
length, the data, uint32 masked CRC32C of the data (all little-endian).
"""

from __future__ import annotations

import struct

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (pure Python; records are small next to model time)."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordWriter:
  """Appends records to a new TFRecord file (uncompressed)."""

  def __init__(self, path: str):
    self._f = open(path, "wb")

  def write(self, record: bytes) -> None:
    length = struct.pack("<Q", len(record))
    self._f.write(length + struct.pack("<I", masked_crc32c(length)) + record +
                  struct.pack("<I", masked_crc32c(record)))

  def close(self) -> None:
    self._f.flush()
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_tfrecords(path: str):
  """Yields the records of a TFRecord file, checking both CRCs (raises ValueError on corruption)."""
  with open(path, "rb") as f:
    while header := f.read(12):
      if len(header) < 12:
        raise ValueError(f"{path}: truncated record header")
      (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
      if masked_crc32c(header[:8]) != length_crc:
        raise ValueError(f"{path}: bad length CRC")
      data, footer = f.read(length), f.read(4)
      if len(data) < length or len(footer) < 4 or masked_crc32c(data) != struct.unpack("<I", footer)[0]:
        raise ValueError(f"{path}: truncated or corrupt record")
      yield data
