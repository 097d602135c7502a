"""Multi-host set-up: `jax.distributed` from flags or the environment, and a bounded-time stop.

On a TPU pod or a SLURM/Open MPI GPU cluster JAX finds the coordinator itself; elsewhere pass
`coordinator_address`, `num_processes` and `process_id` (flags of `anygpt-train`) or set
`ANYGPT_COORDINATOR_ADDRESS`, `ANYGPT_NUM_PROCESSES`, `ANYGPT_PROCESS_ID`.

A process that dies must not leave the others hanging in a collective forever: JAX's
coordination service notices the missing heartbeats within `heartbeat_timeout_s` and ends the
survivors; in addition `StepWatchdog` ends this process with a clear message when no training
step completes within `step_timeout_s` (a hung collective that the service cannot see).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import jax

ENV_COORDINATOR = "ANYGPT_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "ANYGPT_NUM_PROCESSES"
ENV_PROCESS_ID = "ANYGPT_PROCESS_ID"

# Exit status of a process stopped by the watchdog (distinct from Python's 1 and signals).
WATCHDOG_EXIT_CODE = 75


class DistributedError(RuntimeError):
  """Inconsistent multi-host settings."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = 60,
               initialization_timeout_s: int = 300, auto_detect: bool = False) -> bool:
  """Starts `jax.distributed` when the flags, the environment or `auto_detect` ask for it.

  Must run before any JAX computation. Returns whether the run is multi-process.

  Args:
    coordinator_address: 'host:port' of process 0's coordination service.
    num_processes: processes in the job.
    process_id: this process's index in [0, num_processes).
    heartbeat_timeout_s: after this long without a heartbeat from a process, the
      coordination service declares it dead and the others stop.
    initialization_timeout_s: how long to wait for every process to join.
    auto_detect: let JAX detect the cluster (TPU pod, SLURM, Open MPI) without an address.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  if coordinator_address is None and not auto_detect:
    if num_processes not in (None, 1):
      raise DistributedError(f"num_processes={num_processes} needs a coordinator address "
                             f"(--coordinator_address or ${ENV_COORDINATOR})")
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise DistributedError("a coordinator address needs num_processes and process_id too "
                           f"(flags or ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise DistributedError(f"process_id={process_id} outside [0, num_processes={num_processes})")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, initialization_timeout=initialization_timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1


class StepWatchdog:
  """Ends the process with a clear error when no step completes within `timeout_s`.

  `kick()` after each completed step; `pause()`/`resume()` around work that may legitimately
  take long without steps (compilation, restoring, the final save).
  """

  def __init__(self, timeout_s: float | None, what: str = "training step"):
    self.timeout_s = timeout_s
    self.what = what
    self._deadline = None
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None
    if timeout_s:
      self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
      self._thread.start()

  def kick(self) -> None:
    with self._lock:
      self._deadline = time.monotonic() + self.timeout_s if self.timeout_s else None

  def pause(self) -> None:
    with self._lock:
      self._deadline = None

  resume = kick

  def close(self) -> None:
    self._stop.set()

  def _watch(self) -> None:
    while not self._stop.wait(min(1.0, self.timeout_s / 4)):
      with self._lock:
        expired = self._deadline is not None and time.monotonic() > self._deadline
      if expired:
        message = (f"process {jax.process_index()} of {jax.process_count()}: no {self.what} completed in "
                   f"{self.timeout_s:.0f} s; another process has probably died or hung. Stopping. "
                   "Restart the job with the same command to resume from the last checkpoint.")
        print(f"FATAL: {message}", file=sys.stderr, flush=True)
        logging.error(message)
        os._exit(WATCHDOG_EXIT_CODE)
