"""Test session set-up: 8 virtual CPU devices, so mesh tests run on any machine; shared fixtures."""

import os

import pytest

# Must happen before jax is first imported by any test module.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on CPU. With libtpu installed (the 'tpu' extra, for the AOT tests) JAX would also
# probe for a TPU and libtpu logs an ERROR about TPU_WORKER_HOSTNAMES on a machine without one;
# naming the platform skips that probe. Compiling for TPU topologies works either way.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="module")
def gcs():
  """A local GCS emulator with one bucket `anygpt-test`: (its reader, the environment that points
  gcsfs, tensorstore and epath at it). See `tests/gcs_emulator.py`."""
  from gcs_emulator import GcsEmulator

  with GcsEmulator() as emulator:
    yield emulator.bucket("anygpt-test"), emulator.env()
