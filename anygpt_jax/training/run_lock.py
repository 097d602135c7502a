"""One trainer per run directory: a lease file, `{model_dir}/trainer.lock`, kept fresh by a heartbeat.

Two trainers on one run directory would interleave metrics, checkpoints and retention, and one would
die on the other's temporary folders. The lease works wherever the run directory does (a local disk
or an object store through `anygpt_jax.filesystem`): a JSON record of the holder (host, pid, a token,
when it started, its last heartbeat), rewritten every `heartbeat_s`.

A new trainer refuses a lease that is alive, naming its holder. A lease is stale, and is taken over
with a line saying so, when its holder is a process of this host that no longer runs (a SIGKILL), or
its heartbeat is older than `lease_s` (another host that died). Of several processes of one run,
process 0 holds the lease for all of them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from anygpt_jax import filesystem
from anygpt_jax.errors import UserError

LOCK_FILE = "trainer.lock"


def held(model_dir) -> bool:
  """Whether a trainer holds `model_dir` (its lease file exists; one left by a killed trainer counts
  until the next trainer takes it over)."""
  return (filesystem.resolve(model_dir) / LOCK_FILE).exists()


class RunDirectoryBusyError(UserError, RuntimeError):
  """Another trainer holds the run directory; the message names it."""


def _process_gone(holder: dict) -> bool:
  """Whether the holder is a process of this host that no longer runs."""
  if holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, KeyError, ValueError, TypeError):
    return False
  return False


class RunLock:
  """The lease of one run directory. `acquire()` before anything is written there, `release()` at the end.

  Args:
    model_dir: the run directory (local path or URL).
    lease_s: a heartbeat older than this marks a holder on another host dead.
    heartbeat_s: how often the holder refreshes its heartbeat.
    report: where the take-over of a stale lease is said (one line).
  """

  def __init__(self, model_dir, lease_s: float = 120.0, heartbeat_s: float = 15.0, report=print):
    self.path = filesystem.resolve(model_dir) / LOCK_FILE
    self.lease_s, self.heartbeat_s, self.report = lease_s, heartbeat_s, report
    self.record = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                   "started": time.time()}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (json.JSONDecodeError, OSError):  # a record cut mid-write: its heartbeat is unknown
      return {}

  def _write(self) -> None:
    filesystem.write_text(self.path, json.dumps(dict(self.record, heartbeat=time.time())))

  def acquire(self) -> None:
    """Takes the lease, or raises RunDirectoryBusyError naming the live holder."""
    holder = self._read()
    if holder is not None:
      age = time.time() - float(holder.get("heartbeat", 0))
      who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
      if _process_gone(holder):
        self.report(f"[anygpt-train] taking over {self.path}: its holder, {who}, no longer runs")
      elif age > self.lease_s:
        self.report(f"[anygpt-train] taking over {self.path}: its holder, {who}, last beat {age:.0f} s ago "
                    f"(lease {self.lease_s:.0f} s)")
      else:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
        raise RunDirectoryBusyError(
            f"{self.path.parent} is being trained by {who} (started {started}, heartbeat {age:.0f} s ago). "
            f"One trainer per run directory: stop that one first; a trainer that died without releasing its "
            f"lease is taken over {self.lease_s:.0f} s after its last heartbeat.")
    self._write()
    # Two trainers starting at once both wrote; the record left is the one that holds the lease.
    time.sleep(0.2)
    if (self._read() or {}).get("token") != self.record["token"]:
      raise RunDirectoryBusyError(f"{self.path.parent}: another trainer took the lease at the same time")
    self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        self._write()
      except OSError:  # a full disk or lost access: the checkpoint saves report it
        pass

  def release(self) -> None:
    """Stops the heartbeat and removes the lease if this trainer still holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      if (self._read() or {}).get("token") == self.record["token"]:
        self.path.unlink()
