"""Test session set-up: 8 virtual CPU devices, so mesh tests run on any machine."""

import os

# Must happen before jax is first imported by any test module.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on CPU. With libtpu installed (the 'tpu' extra, for the AOT tests) JAX would also
# probe for a TPU and libtpu logs an ERROR about TPU_WORKER_HOSTNAMES on a machine without one;
# naming the platform skips that probe. Compiling for TPU topologies works either way.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
