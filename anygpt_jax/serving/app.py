"""The HTTP front: OpenAI's chat-completions and completions routes over a `Service`.

Routes: `GET /` (the chat page, `chat.html`: a static page over this API), `GET /health` (no key
needed: the engine's state, 503 when it is down), `GET /v1/models`,
`POST /v1/chat/completions` and `POST /v1/completions` (`serving.protocol` says what they read),
with `"stream": true` as server-sent events in OpenAI's chunk shape. Answers carry OpenAI's fields
(`choices[0].message.content` or `.text`, `finish_reason`, `usage`), the answer's media as
`message.media` (or `choices[0].media`): [{"modality", "mime_type", "data" (base64) or "url", ...}],
and the ids as vLLM returns them (`prompt_token_ids`, `choices[0].token_ids`).

Failures are answered in OpenAI's error shape {"error": {"message", "type", "code"}}: a bad request
400 (403 for a path outside the media directories, 404 a missing file, 413 an oversize item, 422 a
span that did not close), a missing or wrong key 401, a full queue 429, an engine that is down 503,
a request past the timeout 504. No request's failure stops the server. A client that disconnects
cancels its engine request. Each request is logged as a JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import importlib.resources
import json
import shutil
import tempfile
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from anygpt_jax.serving.engine import EngineBusy, EngineError
from anygpt_jax.serving.protocol import BadRequest, MediaInputs, parse_chat_completion, parse_completion
from anygpt_jax.serving.service import Answer, Service

OPEN_PATHS = ("/", "/health")  # the chat page and the health check need no key; the page asks for it
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}


class RequestFailed(Exception):
  """A request answered with an error status and message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def error_response(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                                 "code": status}}, status_code=status)


class RequestLog:
  """Request records as JSON lines (None: not logged)."""

  def __init__(self, path: str | None):
    self.path = path

  def write(self, record: dict[str, Any]) -> None:
    if self.path:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


async def _unless_disconnected(request: Request, awaitable, timeout_s: float):
  """`awaitable`'s result; cancels it when the client disconnects or `timeout_s` passes (504)."""
  task = asyncio.ensure_future(awaitable)
  deadline = time.monotonic() + timeout_s
  try:
    while True:
      done, _ = await asyncio.wait({task}, timeout=min(0.25, max(0.0, deadline - time.monotonic())))
      if done:
        return task.result()
      if time.monotonic() >= deadline:
        raise RequestFailed(504, f"no answer within the server's timeout of {timeout_s:g} s")
      if await request.is_disconnected():
        raise RequestFailed(499, "the client disconnected")
  finally:
    task.cancel()


class AuthorizeAndLog:
  """ASGI middleware: the bearer key check, and a JSON line per request once its answer is sent.

  A plain ASGI wrapper, not Starlette's `BaseHTTPMiddleware`, whose wrapped `receive` hides the
  client's disconnect from `Request.is_disconnected` (a hung-up client's engine request would run on).
  The route's `request.state.record` is this request's log line (`scope['state']`).
  """

  def __init__(self, app, api_key: str | None, log: RequestLog):
    self.app, self.api_key, self.log = app, api_key, log

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start = time.monotonic()
    record = {"id": uuid.uuid4().hex[:16], "method": scope["method"], "path": scope["path"]}
    scope.setdefault("state", {})["record"] = record
    status = {"code": 500}

    async def send_noting_status(message):
      if message["type"] == "http.response.start":
        status["code"] = message["status"]
      await send(message)

    headers = dict(scope.get("headers") or [])
    if self.api_key and scope["path"] not in OPEN_PATHS and \
        headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.api_key}":
      record["error"] = "unauthorized"
      response = error_response(401, "a valid 'Authorization: Bearer <key>' header is required")
      await response(scope, receive, send_noting_status)
    else:
      await self.app(scope, receive, send_noting_status)
    self.log.write({"time": time.time(), **record, "status": status["code"],
                    "latency_s": round(time.monotonic() - start, 4)})


def create_app(service: Service, model_name: str, media_dirs: tuple[str, ...] = (), api_key: str | None = None,
               timeout_s: float = 600.0, log_path: str | None = None, max_media_bytes: int = 32 << 20) -> FastAPI:
  """The FastAPI application serving `service` as `model_name`.

  media_dirs: the directories whose files requests may name (file:// URLs or paths).
  api_key: when given, every route but /health needs `Authorization: Bearer <api_key>`.
  """
  @contextlib.asynccontextmanager
  async def lifespan(app: FastAPI):
    yield
    service.engine.close()  # the server is stopping: no request is waiting on the engine any more

  app = FastAPI(title="anygpt-serve", docs_url=None, redoc_url=None, lifespan=lifespan)
  app.state.service = service
  app.add_middleware(AuthorizeAndLog, api_key=api_key, log=RequestLog(log_path))

  @app.exception_handler(RequestFailed)
  async def failed(request: Request, e: RequestFailed):
    request.state.record["error"] = str(e)
    return error_response(e.status, str(e))

  page = (importlib.resources.files("anygpt_jax.serving") / "chat.html").read_text(encoding="utf-8")
  page = page.replace("__MODEL__", html.escape(model_name))

  @app.get("/", response_class=HTMLResponse)
  async def chat_page():
    return page

  @app.get("/health")
  async def health():
    state = await run_in_threadpool(service.engine.health)  # an engine over HTTP asks its server
    return JSONResponse({**state, "model": model_name}, status_code=200 if state["ok"] else 503)

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "anygpt-jax"}]}

  async def answer(request: Request, parse, chat: bool):
    try:
      body = await request.json()
    except ValueError:
      raise RequestFailed(400, "the request body is not JSON") from None
    scratch = tempfile.mkdtemp(prefix="anygpt-serve-")
    try:
      try:
        # Decoding base64 media and writing them out is file work: off the event loop, as is `prepare`.
        parsed = await run_in_threadpool(parse, body, MediaInputs(media_dirs, scratch, max_media_bytes))
        if isinstance(body, dict) and body.get("model") not in (None, model_name):
          raise BadRequest(f"model {body.get('model')!r} is not served here; this server serves {model_name!r}",
                           status=404)
        prepared = await run_in_threadpool(service.prepare, parsed)
      except BadRequest as e:
        raise RequestFailed(e.status, str(e)) from None
      try:
        output = await _unless_disconnected(request, service.engine.generate(prepared.request, prepared.seed),
                                            timeout_s)
      except EngineBusy as e:
        raise RequestFailed(429, str(e)) from None
      except EngineError as e:
        raise RequestFailed(503, str(e)) from None
      except ValueError as e:  # the engine refused the request itself
        raise RequestFailed(400, str(e)) from None
      inline = body.get("media_format", "base64") != "url"
      try:
        result = await run_in_threadpool(service.finish, parsed, output, inline)
      except BadRequest as e:
        raise RequestFailed(e.status, str(e)) from None
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    request.state.record.update(prompt_tokens=len(prepared.request.prompt), completion_tokens=len(result.tokens))
    ids = {"id": ("chatcmpl-" if chat else "cmpl-") + request.state.record["id"], "created": int(time.time()),
           "model": model_name}
    if parsed.stream:
      return StreamingResponse(_events(service, ids, result, chat), media_type="text/event-stream")
    return _completion(ids, prepared, result, chat)

  @app.post("/v1/chat/completions")
  async def chat_completions(request: Request):
    return await answer(request, parse_chat_completion, chat=True)

  @app.post("/v1/completions")
  async def completions(request: Request):
    return await answer(request, parse_completion, chat=False)

  return app


def _usage(prompt_ids, tokens) -> dict[str, int]:
  return {"prompt_tokens": len(prompt_ids), "completion_tokens": len(tokens),
          "total_tokens": len(prompt_ids) + len(tokens)}


def _completion(ids: dict, prepared, result: Answer, chat: bool) -> dict[str, Any]:
  """The non-streamed answer, in OpenAI's shape."""
  if chat:
    choice = {"index": 0, "message": {"role": "assistant", "content": result.text, "media": result.media}}
  else:
    choice = {"index": 0, "text": result.text, "media": result.media}
  choice.update(finish_reason=result.finish_reason, token_ids=result.tokens)
  return {**ids, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
          "usage": _usage(prepared.request.prompt, result.tokens), "prompt": prepared.prompt,
          "prompt_token_ids": list(prepared.request.prompt)}


async def _events(service: Service, ids: dict, result: Answer, chat: bool) -> AsyncIterator[str]:
  """Server-sent events: the text as it grows, then the media and finish reason, then [DONE]."""
  kind = "chat.completion.chunk" if chat else "text_completion"

  def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    choice = ({"index": 0, "delta": delta} if chat else {"index": 0, **delta}) | {"finish_reason": finish_reason}
    return f"data: {json.dumps({**ids, 'object': kind, 'choices': [choice]}, ensure_ascii=False)}\n\n"

  if chat:
    yield chunk({"role": "assistant", "content": ""})
  for piece in service.text_deltas(result.tokens):
    yield chunk({"content": piece} if chat else {"text": piece})
  yield chunk({"media": result.media} if chat else {"text": "", "media": result.media}, result.finish_reason)
  yield "data: [DONE]\n\n"
