"""Loading pickled PyTorch files (`.bin`, `.pth`, `.pt`) without ever running code from them."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any


class UnsafePickleError(ValueError):
  """A pickled file holds more than tensors and plain containers (it could run code)."""


def load_pickled_tensors(path: str | os.PathLike | io.BytesIO, mmap: bool = True) -> Any:
  """`torch.load(path, weights_only=True)` on the CPU, with a clear refusal.

  `weights_only=True` restricts unpickling to tensors, numbers, strings and containers: a file
  from the internet whose pickle calls a function (`os.system`, ...) is refused before anything
  runs. `mmap=True` maps the zip-format file instead of reading it whole (a 7B `.bin` is 13 GB).

  Raises:
    UnsafePickleError: naming the file, when the pickle asks for anything else.
  """
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{getattr(path, 'name', path)}: reading a pickled PyTorch file (.bin/.pth/.pt) needs torch, "
                      "which this install lacks; install the 'tokenize' or 'test' extra (pip install "
                      "'anygpt_jax[tokenize]'), or convert the weights to safetensors first") from e

  if isinstance(path, io.BytesIO):
    mmap = False  # a remote file's bytes
  else:
    path = os.fspath(path)
  try:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
  except pickle.UnpicklingError as e:
    raise UnsafePickleError(f"{getattr(path, 'name', path)}: refused to load: the pickle holds more than tensors (loaded with "
                            f"weights_only=True, a checkpoint must never run code): {str(e)[:300]}") from e
  except RuntimeError as e:
    if mmap and "mmap" in str(e):  # the legacy (non-zip) format cannot be mapped
      return load_pickled_tensors(path, mmap=False)
    raise
