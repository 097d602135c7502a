"""Engines that decode the front's requests: one interface, the JAX generator in-process behind it.

An engine takes a `generation.Request` (prompt ids, decoding settings, the modality the answer must
be) and a seed, and returns a `generation.Output` (the generated ids). It knows nothing of media,
prompts or HTTP: the front (`serving.service`) renders prompts and turns answers into media.

`JaxEngine` batches the requests that arrive within a short window (at most `batch_size`, all of
one seed, since a batch draws from one random stream) and decodes them with `Generator.generate`
on a thread of its own, so the event loop and the media work never wait on XLA. Its queue is
bounded: a full queue is `EngineBusy` (HTTP 429) at once, never an unbounded wait. A request
cancelled before its batch starts is dropped; one already decoding finishes and is discarded (the
compiled `while_loop` cannot be interrupted).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Any


class EngineError(RuntimeError):
  """The engine cannot serve now (stopped, unreachable, crashed); the front answers 503."""


class EngineBusy(EngineError):
  """The engine's queue is full; the front answers 429 and the client retries later."""


class Engine(abc.ABC):
  """What the front needs of an engine. Subclasses implement `submit`, `health` and `close`."""

  name = "engine"

  @abc.abstractmethod
  def submit(self, request, seed: int) -> concurrent.futures.Future:
    """Queues `request` (`generation.Request`); the future's result is a `generation.Output`.
    Raises EngineBusy when the queue is full and EngineError when the engine is down."""

  async def generate(self, request, seed: int):
    """`submit`, awaited; cancelling the awaiting task cancels the engine request."""
    return await asyncio.wrap_future(self.submit(request, seed))

  @abc.abstractmethod
  def health(self) -> dict[str, Any]:
    """{'ok': bool, ...} with what an operator needs to see (queue depth, the reason when not ok)."""

  @abc.abstractmethod
  def close(self) -> None:
    """Stops the engine; requests still queued fail."""


@dataclasses.dataclass
class _Job:
  request: Any
  seed: int
  future: concurrent.futures.Future


class JaxEngine(Engine):
  """The project's `Generator` on this process's devices, batched by a bounded window.

  Args:
    generator: a `generation.Generator` (model, parameters, constraint tables). A batch's rows are
      rounded up to a power of two (unless the generator has buckets of its own), so a server
      compiles a handful of programs, not one per batch size.
    batch_size: at most this many requests are decoded together.
    window_s: after the first request of a batch arrives, wait this long for others to join.
    max_queue: requests waiting beyond this many are refused with EngineBusy.
  """

  name = "jax"

  def __init__(self, generator, batch_size: int = 8, window_s: float = 0.02, max_queue: int = 64):
    self.generator = generator
    if hasattr(generator, "row_buckets") and not generator.row_buckets:
      generator.row_buckets = tuple(2 ** k for k in range(max(1, batch_size - 1).bit_length() + 1))
    self.batch_size = batch_size
    self.window_s = window_s
    self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
    self._held: _Job | None = None  # a job taken from the queue that belongs to the next batch
    self._error: str | None = None
    self._closed = False
    self.batches = 0
    self.dropped = 0  # requests cancelled before their batch started
    self._thread = threading.Thread(target=self._loop, name="jax-engine", daemon=True)
    self._thread.start()

  def submit(self, request, seed: int) -> concurrent.futures.Future:
    if self._closed or self._error:
      raise EngineError(self._error or "the JAX engine is closed")
    job = _Job(request, seed, concurrent.futures.Future())
    try:
      self._queue.put_nowait(job)
    except queue.Full:
      raise EngineBusy(f"the JAX engine's queue is full ({self._queue.maxsize} requests waiting)") from None
    return job.future

  def health(self) -> dict[str, Any]:
    ok = not self._closed and self._error is None and self._thread.is_alive()
    return {"ok": ok, "engine": self.name, "queued": self._queue.qsize(), "batches": self.batches,
            "dropped": self.dropped,
            **({} if ok else {"reason": self._error or "the JAX engine is closed"})}

  def close(self) -> None:
    self._closed = True
    try:
      self._queue.put_nowait(None)
    except queue.Full:
      pass
    self._thread.join(timeout=30)

  # --- the decoding thread --------------------------------------------------------------------
  def _next_batch(self) -> list[_Job] | None:
    """The next batch: the first live job, then jobs of its seed that arrive within the window."""
    first = self._held or self._queue.get()
    self._held = None
    if first is None:
      return None
    batch, deadline = [first], time.monotonic() + self.window_s
    while len(batch) < self.batch_size:
      try:
        job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if job is None or job.seed != first.seed:  # the end, or the start of the next batch
        self._held = job
        break
      batch.append(job)
    return batch

  def _loop(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      live = [job for job in batch if job.future.set_running_or_notify_cancel()]
      self.dropped += len(batch) - len(live)
      if not live:
        continue
      try:
        outputs = self.generator.generate([job.request for job in live], seed=live[0].seed)
      except (ValueError, TypeError) as e:  # a request the generator refuses: fail those requests only
        for job in live:
          job.future.set_exception(e)
        continue
      except BaseException as e:  # noqa: BLE001 - the device or runtime failed: the engine is down
        self._error = f"the JAX engine failed: {type(e).__name__}: {e}"
        for job in live:
          job.future.set_exception(EngineError(self._error))
        self._fail_waiting()
        return
      self.batches += 1
      for job, output in zip(live, outputs):
        job.future.set_result(output)

  def _fail_waiting(self) -> None:
    while True:
      try:
        job = self._held or self._queue.get_nowait()
      except queue.Empty:
        return
      self._held = None
      if job is not None and job.future.set_running_or_notify_cancel():
        job.future.set_exception(EngineError(self._error))
