"""What the front does around an engine: requests into prompt ids, answers into text and media.

`Service.prepare` renders a parsed request exactly as `anygpt-generate` does (`generation.requests`:
the data pipeline's templates, the chat format, AnyGPT's per-modality settings), encoding its media
with the tokenizer workers. `Service.finish` turns the answer's ids into the text a user reads and
its spans into media (SEED -> unCLIP, SoundStorm -> SpeechTokenizer, Encodec). Both are blocking and
run on the web server's worker threads, apart from the engine's decoding thread, so a slow
de-tokenizer never holds up other requests' decoding. The media models are shared, loaded on first
use, and used by one thread at a time.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
import uuid
from typing import Any, Sequence

from anygpt_jax.generation.requests import Prompts, RequestError, answer_text, checked_spans, decoding_request
from anygpt_jax.generation.settings import SettingsError
from anygpt_jax.serving.protocol import BadRequest, ParsedRequest

MIME_TYPES = {".jpg": "image/jpeg", ".wav": "audio/wav"}


@dataclasses.dataclass
class Prepared:
  """A request ready for the engine: its rendered prompt and `generation.Request`, and the seed."""

  prompt: str
  request: Any
  seed: int


@dataclasses.dataclass
class Answer:
  """What the client reads: the text, the media (one dict per span), why decoding ended, the ids."""

  text: str
  media: list[dict[str, Any]]
  finish_reason: str
  tokens: list[int]


class Service:
  """The model's vocabulary, media workers and decoding defaults, in front of an engine.

  Args:
    vocabulary: the model's `AnyGPTVocabulary` (in the text mode its data was tokenized in).
    media: `generation.media.Media` (tokenizers and de-tokenizers by local path).
    engine: a `serving.engine.Engine`.
    tables: the constraint tables the engine decodes with (`generation.build_tables`).
    max_positions: the model's max_position_embeddings.
    stop_ids: the ids that end an answer.
    overrides: {modality: {setting: value}}, the server's defaults over AnyGPT's.
    output_dir: where answers' media files are written (`media/`) before they are sent.
    seed: the seed of requests that give none.
  """

  def __init__(self, vocabulary, media, engine, tables, max_positions: int, stop_ids: Sequence[int],
               overrides: dict[str, dict[str, Any]], output_dir: str, seed: int = 0):
    self.vocabulary = vocabulary
    self.media = media
    self.engine = engine
    self.tables = tables
    self.max_positions = max_positions
    self.stop_ids = tuple(stop_ids)
    self.overrides = overrides
    self.media_dir = os.path.join(output_dir, "media")
    self.seed = seed
    self._media_lock = threading.Lock()

  def prepare(self, parsed: ParsedRequest) -> Prepared:
    """Prompt ids and settings of `parsed` (media inputs encoded); raises BadRequest."""
    seed = self.seed if parsed.seed is None else parsed.seed
    if parsed.output and not self.media.available(parsed.output):
      raise BadRequest(f"this server cannot make {parsed.output} (its de-tokenizer was not given at start-up)")
    overrides = {m: {**o, **parsed.overrides} for m, o in self.overrides.items()}
    # Prompts per request: its instruction draw depends on the request's seed only, as the first
    # request of `anygpt-generate --seed` does.
    prompts = Prompts(self.vocabulary, self.media, seed)
    try:
      with self._media_lock:
        prompt, request = decoding_request(parsed.task, prompts, self.tables, self.max_positions, self.stop_ids,
                                           overrides)
    except (RequestError, SettingsError) as e:
      raise BadRequest(str(e)) from None
    return Prepared(prompt, request, seed)

  def finish(self, parsed: ParsedRequest, output, inline: bool = True) -> Answer:
    """The answer of `output` (`generation.Output`): text, and each span as media (base64 data when
    `inline`, else a file:// URL under output_dir/media); raises BadRequest for a span that did not
    close within max_new_tokens."""
    tokens = list(output.tokens)
    try:
      spans = checked_spans(self.vocabulary.layout, parsed.output or "text", tokens, self.media.music_codebooks)
    except RequestError as e:
      raise BadRequest(str(e), status=422) from None
    media = []
    os.makedirs(self.media_dir, exist_ok=True)
    for span in spans:
      if not self.media.available(span.modality):  # a span the model opened freely, no de-tokenizer here
        media.append({"modality": span.modality, "codes": list(span.codes)})
        continue
      stem = os.path.join(self.media_dir, uuid.uuid4().hex)
      with self._media_lock:
        written = self.media.write(span.modality, list(span.codes), stem, parsed.task.voice_prompt)
      path = written.pop("file")
      item = {"modality": span.modality, "mime_type": MIME_TYPES[os.path.splitext(path)[1]], **written}
      if inline:
        with open(path, "rb") as f:
          item["data"] = base64.b64encode(f.read()).decode("ascii")
        os.remove(path)
      else:
        item["url"] = "file://" + os.path.abspath(path)
      media.append(item)
    text = answer_text(self.vocabulary, tokens, self.stop_ids)
    return Answer(text, media, output.finish_reason, tokens)

  def text_deltas(self, tokens: Sequence[int]):
    """The answer text of `tokens` as it grows token by token: pieces whose concatenation is
    `answer_text(tokens)` (a piece is held back until the text so far is a prefix of the whole)."""
    final = answer_text(self.vocabulary, tokens, self.stop_ids)
    sent = 0
    for i in range(1, len(tokens) + 1):
      so_far = answer_text(self.vocabulary, tokens[:i], self.stop_ids)
      if len(so_far) > sent and final.startswith(so_far):
        yield final[sent:len(so_far)]
        sent = len(so_far)
    if sent < len(final):
      yield final[sent:]
