"""Writing a safetensors file one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
byte offsets) and the tensors' bytes in header order. The header is known from shapes and
dtypes alone, so it is written first and each tensor's bytes follow as soon as the tensor
exists: a shard of any size never has to be in memory at once.
"""

from __future__ import annotations

import json
import struct
from typing import Sequence

import numpy as np
from etils import epath

_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def dtype_code(dtype) -> str:
  name = np.dtype(dtype).name
  if name not in _DTYPES:
    raise ValueError(f"no safetensors dtype for {name}; expected one of {sorted(_DTYPES)}")
  return _DTYPES[name]


def header_bytes(tensors: Sequence[tuple[str, tuple[int, ...], str]], metadata: dict | None = None) -> bytes:
  """The length-prefixed header for (name, shape, numpy dtype name) in file order."""
  header, offset = {}, 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for name, shape, dtype in tensors:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
  return struct.pack("<Q", len(text)) + text


class SafetensorsWriter:
  """Writes the tensors declared up front, in that order, as they come.

  Usage:
    with SafetensorsWriter(path, [(name, shape, dtype), ...]) as w:
      w.write(name, array)   # once per declared tensor, in order
  """

  def __init__(self, path: epath.PathLike, tensors: Sequence[tuple[str, tuple[int, ...], str]],
               metadata: dict | None = None):
    self.path = epath.Path(path)
    self._expected = list(tensors)
    self._next = 0
    self._file = self.path.open("wb")
    self._file.write(header_bytes(self._expected, metadata))

  def write(self, name: str, array: np.ndarray, block_bytes: int = 64 * 2**20) -> None:
    """Writes the next declared tensor from `array` (any layout, any float dtype): converted to
    the declared dtype and made contiguous in blocks of rows of about `block_bytes`, so a
    transposed view of a large table is never copied whole."""
    want_name, shape, dtype = self._expected[self._next]
    if name != want_name or tuple(array.shape) != tuple(shape):
      raise ValueError(f"{self.path}: tensor {self._next} should be {want_name} {tuple(shape)}, got "
                       f"{name} {tuple(array.shape)}")
    target = np.dtype(dtype)
    row_bytes = max(1, array[:1].size * target.itemsize) if array.ndim else target.itemsize
    rows = max(1, block_bytes // row_bytes)
    for start in range(0, max(1, array.shape[0] if array.ndim else 1), rows):
      block = array[start:start + rows] if array.ndim else array
      block = np.ascontiguousarray(block).astype(target, copy=False)
      # Raw bytes (a uint8 view: memoryviews refuse ml_dtypes bf16); little-endian like every supported host.
      self._file.write(block.reshape(-1).view(np.uint8).data)
    self._next += 1

  def close(self) -> None:
    self._file.close()
    if self._next != len(self._expected):
      raise ValueError(f"{self.path}: {len(self._expected) - self._next} declared tensors were never written")

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self._file.close()
