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


@pytest.fixture(scope="session")
def models(tmp_path_factory):
  """The tiny tokenizer checkpoints the tokenization job loads, in their published layouts:
  {"speech": SpeechTokenizer dir, "music": Encodec 32 kHz dir, "image": SEED dir}."""
  from anygpt_jax.testing import tiny_tokenizers as tiny

  root = tmp_path_factory.mktemp("tokenizer_models")
  return {"speech": str(tiny.save_tiny_speech_tokenizer(root / "st")),
          "music": str(tiny.save_tiny_encodec(root / "enc")),
          "image": str(tiny.save_tiny_seed(root / "seed"))}
