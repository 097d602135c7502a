"""Where one medium's bytes are: a whole file, a member of a plain tar, or a time span of an audio file.

Readers describe media with a `MediaRef` and never unpack anything: a tar member is read by
seeking to its data inside the tar (img2dataset, AnyInstruct and MMC4 image tars are plain,
uncompressed tars), a GigaSpeech segment by seeking inside its long opus file. A `MediaRef` is
a small picklable value, so the Ray engine ships references, not bytes, to its actors (except for
webdataset tars, which Ray Data's read tasks stream: their members travel as `data`). Paths may be
local or URLs (`gs://...`): files are opened through `anygpt_jax.filesystem`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from typing import BinaryIO

from anygpt_jax import filesystem


class MediaError(ValueError):
  """A medium (or record) that cannot be tokenized.

  `reason` is the short category counted in the stats; `detail` says which file, member,
  token or field, and why (the decoder's own message where there is one).
  """

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class MediaRef:
  """A medium's location.

  path: the file, or the tar that holds it; member/offset/size: the tar member's name and
  the byte range of its data (offset -1: the whole file); start/end: a span in seconds of an
  audio file (None: all of it); data: the member's bytes themselves, when a reader already
  holds them (Ray Data's read tasks stream a tar and ship its members this way).
  """

  path: str
  member: str = ""
  offset: int = -1
  size: int = -1
  start: float | None = None
  end: float | None = None
  data: bytes | None = dataclasses.field(default=None, repr=False)

  @property
  def name(self) -> str:
    """`file`, `tar::member`, with `[start-end s]` for a span: what rejections and errors cite."""
    name = f"{self.path}::{self.member}" if self.member else self.path
    if self.start is not None or self.end is not None:
      name += f"[{self.start or 0.0:.3f}-{'' if self.end is None else f'{self.end:.3f}'}s]"
    return name

  @property
  def is_whole_file(self) -> bool:
    return self.offset < 0

  def _open_file(self) -> BinaryIO:
    """The file (or the tar holding the member), opened; MediaError('missing_file') when absent.

    Opening is the existence check: one request, not two, on an object store.
    """
    try:
      return filesystem.resolve(self.path).open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
      raise MediaError("missing_file", self.name) from None

  def read_bytes(self) -> bytes:
    """The medium's bytes (the member's data for a tar member). Raises MediaError."""
    if self.data is not None:
      return self.data
    with self._open_file() as f:
      if self.is_whole_file:
        return f.read()
      f.seek(self.offset)
      data = f.read(self.size)
    if len(data) < self.size:
      raise MediaError("truncated_member", f"{self.name}: {len(data)} of {self.size} bytes in the tar")
    return data

  def open(self) -> BinaryIO:
    """A binary file object over the medium (a whole file is opened, a member read into memory)."""
    if self.is_whole_file and self.data is None:
      return self._open_file()
    return io.BytesIO(self.read_bytes())

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "MediaRef":
    return cls(**d)


def check_plain_tar(path: str, head: bytes) -> None:
  """Raises MediaError('compressed_tar') when a tar's first bytes are a gzip, bzip2 or xz header."""
  if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:3] == b"\xfd7z":
    raise MediaError("compressed_tar", f"{path}: compressed; media are read at offsets in plain tars")


class TarIndex:
  """The regular members of one plain tar: name -> (offset of data, size), in tar order.

  Only headers are read (tarfile seeks over the data). Compressed tars cannot be read at an
  offset and raise MediaError('compressed_tar').
  """

  def __init__(self, path: str):
    self.path = str(path)
    self.members: dict[str, tuple[int, int]] = {}
    self.truncated = ""
    with filesystem.resolve(self.path).open("rb") as f:
      check_plain_tar(self.path, f.read(3))
      f.seek(0)
      try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
          for m in tar:
            if m.isfile():
              self.members[m.name] = (m.offset_data, m.size)
      except (tarfile.TarError, EOFError, OSError) as e:  # a cut-off download: keep the members before the cut
        self.truncated = f"{self.path}: {type(e).__name__}: {e}"

  def ref(self, member: str) -> MediaRef:
    offset, size = self.members[member]
    return MediaRef(self.path, member=member, offset=offset, size=size)


_TAR_INDEXES: dict[str, TarIndex] = {}


def tar_index(path: str) -> TarIndex:
  """A process-wide cache of `TarIndex`es (a conversation corpus looks members up many times)."""
  key = str(filesystem.resolve(path))
  if key not in _TAR_INDEXES:
    _TAR_INDEXES[key] = TarIndex(key)
  return _TAR_INDEXES[key]


class MediaStore:
  """Finds media by name in folders and plain tars (MMC4 image folders, AnyInstruct's media tars).

  A name is looked up as a path relative to each folder, then as a tar member, first by its
  full name and then by its base name (tars are often packed one directory up or down).
  """

  def __init__(self, locations):
    self.folders, self.tars = [], []
    for loc in locations:
      loc = str(loc)
      if filesystem.resolve(loc).is_dir():
        self.folders.append(loc)
      elif filesystem.resolve(loc).is_file():
        self.tars.append(tar_index(loc))
      else:
        raise FileNotFoundError(f"media location not found: {loc}")
    self._by_base: dict[str, tuple[TarIndex, str]] | None = None

  def describe(self) -> str:
    return ", ".join(self.folders + [t.path for t in self.tars]) or "(no media locations)"

  def find(self, name: str) -> MediaRef | None:
    """The medium called `name`, or None when no location holds it."""
    for folder in self.folders:
      path = os.path.join(folder, name)
      if filesystem.resolve(path).is_file():
        return MediaRef(path)
    for tar in self.tars:
      if name in tar.members:
        return tar.ref(name)
    if self.tars:
      if self._by_base is None:
        self._by_base = {}
        for tar in self.tars:
          for member in tar.members:
            self._by_base.setdefault(os.path.basename(member), (tar, member))
      hit = self._by_base.get(os.path.basename(name))
      if hit:
        return hit[0].ref(hit[1])
    return None
