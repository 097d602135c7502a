"""OpenAI's request shapes, read into the project's requests (`generation.requests.Task`).

Chat completions (`POST /v1/chat/completions`), as OpenAI's clients send them:

    {"model": "...", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        {"type": "input_audio", "input_audio": {"data": "<base64 wav>", "format": "wav"}}]}],
     "modalities": ["speech"], "audio": {"voice": "data:audio/wav;base64,..."},
     "temperature": 0.7, "top_p": 0.9, "max_tokens": 200, "seed": 1, "stream": false}

- content is a string or a list of parts: `text`, `image_url` (an image), `input_audio` (speech),
  and `input_music` (music, shaped as `input_audio`: AnyGPT tells speech from music, OpenAI does not);
- a media part's data is base64 (`data:` URLs, or `input_audio.data`), a `file://` URL or a path,
  read only under the server's allowed directories;
- `modalities` names the answer's modality: `text` (the default), `image`, `speech` (OpenAI's
  `audio` means speech) or `music`; a media answer opens with its span, kept legal by the constraints;
- `audio.voice` is the voice prompt of a speech answer (a wav, as data or an allowed path);
- decoding fields: `temperature` (0: greedy, as OpenAI), `top_p`, `top_k`, `repetition_penalty`,
  `max_tokens` or `max_completion_tokens`, `min_tokens`, `do_sample`, `num_beams`, `length_penalty`,
  `seed`; unset fields take AnyGPT's defaults for the answer's modality (`generation.settings`).

Completions (`POST /v1/completions`) take a base model's task string as `prompt`
(`text|image|a dog`, `image|text|<path or data: URL>`), with the same decoding fields.

Everything a request gets wrong raises `BadRequest` with a status and a message naming the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import mimetypes
import os
import tempfile
import urllib.parse
from typing import Any, Sequence

from anygpt_jax.generation.requests import TASK_MODALITIES, RequestError, Task, parse_task


class BadRequest(ValueError):
  """A request the server refuses; `status` is its HTTP status (400, 404, 413)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


# OpenAI's content part -> the modality it carries and where its data is.
PART_MODALITIES = {"image_url": "image", "input_audio": "speech", "input_music": "music"}
# OpenAI's names of the answer modalities -> ours ("audio" is speech, as in OpenAI's audio models).
OUTPUT_ALIASES = {"audio": "speech"}
# Request fields -> (DecodingSettings name, type).
SETTING_FIELDS = {"top_p": ("top_p", float), "top_k": ("top_k", int),
                  "repetition_penalty": ("repetition_penalty", float), "max_tokens": ("max_new_tokens", int),
                  "max_completion_tokens": ("max_new_tokens", int), "min_tokens": ("min_new_tokens", int),
                  "do_sample": ("do_sample", bool), "num_beams": ("num_beams", int),
                  "length_penalty": ("length_penalty", float)}


@dataclasses.dataclass
class ParsedRequest:
  """A request, read: the task, the answer's modality (None: free), decoding overrides, the seed."""

  task: Task
  output: str | None
  overrides: dict[str, Any]
  seed: int | None
  stream: bool


class MediaInputs:
  """Media of requests as local files: base64 data written under `scratch`, paths confined.

  Args:
    allowed_dirs: `file://` URLs and paths are read only inside these (after resolving symlinks
      and `..`); none: no path is readable, only inline data.
    scratch: the directory inline data is written to (one file per item).
    max_bytes: the largest media item accepted (decoded bytes).
  """

  def __init__(self, allowed_dirs: Sequence[str], scratch: str, max_bytes: int = 32 << 20):
    self.allowed_dirs = [os.path.realpath(d) for d in allowed_dirs]
    self.scratch = scratch
    self.max_bytes = max_bytes

  def local_path(self, reference: str, field: str, suffix: str = "") -> str:
    """A local file holding `reference` (a data: URL, bare base64 when `suffix` is given, a file://
    URL or a path); raises BadRequest for a remote URL, a path outside the allowed directories, a
    missing file or an oversize item."""
    if not isinstance(reference, str) or not reference:
      raise BadRequest(f"{field}: expected a data: URL, a file:// URL or a path")
    if reference.startswith("data:"):
      header, _, data = reference.partition(",")
      if ";base64" not in header:
        raise BadRequest(f"{field}: only base64 data: URLs are read")
      mime = header[5:].split(";")[0]
      return self._write(data, field, mimetypes.guess_extension(mime) or suffix or ".bin")
    if suffix:  # input_audio.data: bare base64, as OpenAI's clients send it
      return self._write(reference, field, suffix)
    scheme = urllib.parse.urlparse(reference).scheme
    if scheme == "file":
      reference = urllib.parse.unquote(urllib.parse.urlparse(reference).path)
    elif scheme and len(scheme) > 1:
      raise BadRequest(f"{field}: {scheme}:// URLs are not fetched; send the data (base64) or an allowed path")
    return self.confined(reference, field)

  def confined(self, path: str, field: str) -> str:
    """`path` resolved, if it lies in an allowed directory and exists; BadRequest otherwise."""
    resolved = os.path.realpath(path)
    if not any(os.path.commonpath([resolved, d]) == d for d in self.allowed_dirs):
      raise BadRequest(f"{field}: {path!r} is outside the server's media directories"
                       + (f" ({', '.join(self.allowed_dirs)})" if self.allowed_dirs else " (none are allowed)"),
                       status=403)
    if not os.path.isfile(resolved):
      raise BadRequest(f"{field}: {path!r} does not exist", status=404)
    if os.path.getsize(resolved) > self.max_bytes:
      raise BadRequest(f"{field}: {path!r} is larger than {self.max_bytes} bytes", status=413)
    return resolved

  def _write(self, data: str, field: str, suffix: str) -> str:
    if len(data) * 3 // 4 > self.max_bytes:
      raise BadRequest(f"{field}: larger than {self.max_bytes} bytes", status=413)
    try:
      raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
      raise BadRequest(f"{field}: not valid base64") from None
    os.makedirs(self.scratch, exist_ok=True)
    fd, path = tempfile.mkstemp(suffix=suffix, dir=self.scratch)
    with os.fdopen(fd, "wb") as f:
      f.write(raw)
    return path


def _settings(body: dict) -> dict[str, Any]:
  """Decoding overrides of a request body, by DecodingSettings name."""
  out: dict[str, Any] = {}
  for field, (name, kind) in SETTING_FIELDS.items():
    value = body.get(field)
    if value is None:
      continue
    if kind is bool and not isinstance(value, bool) or kind is not bool and isinstance(value, bool) \
        or not isinstance(value, (int, float, bool)) or kind is int and value != int(value):
      raise BadRequest(f"{field}: expected {kind.__name__}, got {value!r}")
    out[name] = kind(value)
  temperature = body.get("temperature")
  if temperature is not None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
      raise BadRequest(f"temperature: expected a number >= 0, got {temperature!r}")
    if temperature == 0:  # OpenAI's greedy
      out["do_sample"] = False
    else:
      out.update(temperature=float(temperature), do_sample=out.get("do_sample", True))
  return out


def _seed(body: dict) -> int | None:
  seed = body.get("seed")
  if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
    raise BadRequest(f"seed: expected an integer, got {seed!r}")
  return seed


def _output_modality(body: dict) -> str | None:
  """The answer's modality from `modalities` (None: text)."""
  modalities = body.get("modalities")
  if modalities is None:
    return None
  if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
    raise BadRequest("modalities: expected a list of names, e.g. [\"text\"] or [\"image\"]")
  names = {OUTPUT_ALIASES.get(m, m) for m in modalities}
  unknown = names - set(TASK_MODALITIES)
  if unknown:
    raise BadRequest(f"modalities: unknown {sorted(unknown)}; expected some of {list(TASK_MODALITIES)} "
                     "(or 'audio' for speech)")
  media = sorted(names - {"text"})
  if len(media) > 1:
    raise BadRequest(f"modalities: one media answer at a time, got {media}")
  return media[0] if media else None


def _content_item(part: Any, index: int, j: int, media: MediaInputs) -> dict[str, str]:
  """One OpenAI content part -> our chat content item ({'text': ...} or {'image': path}, ...)."""
  field = f"messages[{index}].content[{j}]"
  if not isinstance(part, dict) or not isinstance(part.get("type"), str):
    raise BadRequest(f"{field}: expected an object with a 'type'")
  kind = part["type"]
  if kind == "text":
    if not isinstance(part.get("text"), str):
      raise BadRequest(f"{field}.text: expected a string")
    return {"text": part["text"]}
  if kind not in PART_MODALITIES:
    raise BadRequest(f"{field}: unknown content type {kind!r}; expected text, {', '.join(PART_MODALITIES)}")
  value = part.get(kind)
  if kind == "image_url":
    url = value.get("url") if isinstance(value, dict) else value
    return {"image": media.local_path(url, f"{field}.image_url.url")}
  if not isinstance(value, dict) or not isinstance(value.get("data"), str):
    raise BadRequest(f"{field}.{kind}: expected {{'data': base64, 'format': 'wav'}}")
  fmt = value.get("format", "wav")
  if not isinstance(fmt, str) or not fmt.isalnum():
    raise BadRequest(f"{field}.{kind}.format: expected a name such as 'wav', got {fmt!r}")
  data = value["data"]
  path = (media.local_path(data, f"{field}.{kind}.data") if data.startswith(("data:", "file:", "/"))
          else media.local_path(data, f"{field}.{kind}.data", suffix="." + fmt))
  return {PART_MODALITIES[kind]: path}


def parse_chat_completion(body: Any, media: MediaInputs) -> ParsedRequest:
  """A chat-completions body -> ParsedRequest (a chat Task whose media items are local files)."""
  if not isinstance(body, dict):
    raise BadRequest("the request body must be a JSON object")
  messages = body.get("messages")
  if not isinstance(messages, list) or not messages:
    raise BadRequest("messages: expected a non-empty list")
  converted = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
      raise BadRequest(f"messages[{i}]: expected an object with a 'role'")
    content = message.get("content")
    if isinstance(content, str):
      items = [{"text": content}]
    elif isinstance(content, list):
      items = [_content_item(part, i, j, media) for j, part in enumerate(content)]
    else:
      raise BadRequest(f"messages[{i}].content: expected a string or a list of parts")
    converted.append({"role": message["role"], "content": items})
  output = _output_modality(body)
  # A chat whose answer must be a media span names it as the task's target (`Prompts.chat`).
  task = Task(raw="chat", source="chat", target=output or "chat", messages=converted)
  voice = (body.get("audio") or {}).get("voice") if isinstance(body.get("audio"), dict) else None
  if voice is not None:
    if output != "speech":
      raise BadRequest("audio.voice: a voice prompt goes with a speech answer (modalities: [\"speech\"])")
    task.voice_prompt = media.local_path(voice, "audio.voice")
  return ParsedRequest(task, output, _settings(body), _seed(body), bool(body.get("stream", False)))


def parse_completion(body: Any, media: MediaInputs) -> ParsedRequest:
  """A completions body whose `prompt` is a base model's task string -> ParsedRequest."""
  if not isinstance(body, dict):
    raise BadRequest("the request body must be a JSON object")
  prompt = body.get("prompt")
  if not isinstance(prompt, str):
    raise BadRequest("prompt: expected one task string such as 'text|image|a red car'")
  try:
    task = parse_task(prompt)
  except RequestError as e:
    raise BadRequest(str(e)) from None
  if task.source != "text":
    task.data = media.local_path(task.data, f"prompt's {task.source} input")
  if task.voice_prompt:
    task.voice_prompt = media.local_path(task.voice_prompt, "prompt's voice prompt")
  output = task.target if task.target != "text" else None
  return ParsedRequest(task, output, _settings(body), _seed(body), bool(body.get("stream", False)))
