"""AnyGPT's requests: base-model task strings, chat requests, their prompts and their answers.

A base task string is `{input modality}|{output modality}|{text or media}[|{voice prompt wav}]`
as AnyGPT's CLI takes it (`text|image|a dog`, `image|text|cat.jpg`, `text|speech|hello|voice.wav`,
`speech|text|a.wav`, `text|music|calm piano`, `music|text|song.wav`); a medium is a file path or its
own token string (`image|text|<soim><👀12>...<eoim>`), which needs no tokenizer. `Prompts` renders a request
into prompt ids with the data pipeline's own templates (`anygpt_jax.data.rendering`), so a prompt
is exactly the training string up to where the answer starts. `answer_text` is what a user reads
of an answer: AnyGPT's CLI decodes with special tokens skipped and keeps what lies between
`[MMGPT] :` and `<eos>`; here the answer ids are cut at the first stop id and role, chat and
modality tokens are dropped before decoding.

Used by `anygpt-generate` (`tools/generate.py`) and by the trainer's samples
(`anygpt_jax.training.samples`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Sequence

from anygpt_jax.generation import constraints as cons
from anygpt_jax.vocabulary import chat_format
from anygpt_jax.vocabulary.layout import (CONTENT_KINDS, VocabularyError, control_token_in_text,
                                         modality_codes_from_string)

TASK_MODALITIES = CONTENT_KINDS  # text and every modality of the vocabulary's table
PLACEHOLDER = "\x00"  # marks where the answer starts in a rendered training string


class RequestError(ValueError):
  """One request that cannot be served; the message says why."""


@dataclasses.dataclass
class Task:
  """One request: a base-model task string or a chat (`messages`, target 'chat')."""

  raw: str
  source: str = "text"
  target: str = "text"
  data: str = ""
  voice_prompt: str | None = None
  messages: list | None = None


def parse_task(raw: str) -> Task:
  """`in|out|data[|voice prompt]` -> Task; raises RequestError naming what is wrong."""
  fields = raw.split("|")
  if len(fields) < 3:
    raise RequestError(f"task {raw!r}: expected 'input|output|data', e.g. 'text|image|a red car'")
  source, target, data = fields[0].strip(), fields[1].strip(), fields[2].strip()
  voice = fields[3].strip() if len(fields) > 3 and fields[3].strip() else None
  pairs = {("text", m) for m in TASK_MODALITIES[1:]} | {(m, "text") for m in TASK_MODALITIES[1:]}
  if (source, target) not in pairs:
    raise RequestError(f"task {raw!r}: unknown direction {source}|{target}; the base model knows "
                       + ", ".join(f"{a}|{b}" for a, b in sorted(pairs)))
  if voice and (source, target) != ("text", "speech"):
    raise RequestError(f"task {raw!r}: a voice prompt only goes with text|speech")
  if not data:
    raise RequestError(f"task {raw!r}: no input")
  return Task(raw, source, target, data, voice)


def parse_chat(line: str) -> Task:
  """A chat request, one JSON object: {"messages": [{"role": ..., "content": [...]}, ...]}."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise RequestError(f"chat request is not JSON: {e}") from None
  if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
    raise RequestError("chat request needs a non-empty 'messages' list")
  return Task(line, source="chat", target="chat", messages=obj["messages"])


class Prompts:
  """Prompt ids in AnyGPT's templates, rendered by the data pipeline's own functions.

  Args:
    vocabulary: the run's `AnyGPTVocabulary`.
    media: encodes media inputs (`generation.media.Media`); only media requests need it.
    seed: picks the instruction of each prompt from the instruction pools.
  """

  def __init__(self, vocabulary, media, seed: int):
    from anygpt_jax.data import rendering
    self.rendering = rendering
    self.vocabulary = vocabulary
    self.layout = vocabulary.layout
    self.media = media
    self.rng = random.Random(seed)

  def _instruction(self, modality: str, direction: str) -> str:
    return self.rng.choice(self.rendering.load_instructions(modality, direction))

  def _encode(self, text: str) -> list[int]:
    from anygpt_jax.vocabulary.seqio_vocabulary import BOS_ID
    return [BOS_ID] + list(self.vocabulary.encode(text))

  def _media_codes(self, kind: str, value: str, chat: bool = False) -> list[int]:
    """Local codes of a media input: `value` is a file (tokenized by `media`) or the medium's own token
    string (`<soim><👀12>...<eoim>`, as anygpt-tokenize and `anygpt-eval prompts` write it), which
    needs no tokenizer, so a process without torch can make the request."""
    modality = self.layout.modality(kind).modality
    if value.lstrip().startswith(modality.start_token):
      try:
        return modality_codes_from_string(self.layout, kind, value)
      except VocabularyError as e:
        raise RequestError(f"{kind} input {value[:60]!r}...: {e}") from None
    if self.media is None:
      raise RequestError(f"a {kind} input needs the {kind} tokenizer (or its token string)")
    return [int(c) for c in self.media.encode(kind, value, chat=chat)]

  def base(self, task: Task) -> tuple[str, list[int], str | None]:
    """(prompt string, ids, the modality the answer must be or None)."""
    r = self.rendering
    if task.source == "text":  # text -> X: the prompt is the training string up to X's start token
      _check_text(task.data, f"task {task.raw!r}")
      item = r.modality_string(self.layout, task.target, [])
      full = r.pair_string(self._instruction(task.target, "from_text"), item, task.data, to_text=False)
      ids = self._encode(full)
      start = ids.index(self.layout.modality(task.target).start_id)
      return self.vocabulary.decode(ids[1:start]), ids[:start], task.target
    codes = self._media_codes(task.source, task.data)
    item = r.modality_string(self.layout, task.source, codes)
    full = r.pair_string(self._instruction(task.source, "to_text"), item, PLACEHOLDER, to_text=True)
    text = full[:full.index(PLACEHOLDER)].rstrip()  # "... [MMGPT]:" as AnyGPT prompts
    return text, self._encode(text), None

  def chat(self, task: Task) -> tuple[str, list[int], str | None]:
    """(prompt string, ids, the answer's modality) of a chat request, up to the assistant's reply;
    the modality is None (free decoding) unless the task's target names one (a media answer)."""
    from anygpt_jax.data.shards import Part
    try:  # the problems the export's chat template refuses, refused here too
      chat_format.check_roles([m.get("role") if isinstance(m, dict) else None for m in task.messages],
                              add_generation_prompt=True)
    except chat_format.ConversationError as e:
      raise RequestError(f"chat request: {e}") from None
    from anygpt_jax.tokenizers.anygpt_data import AnyGPTDataError, message_parts
    parts = []
    for index, message in enumerate(task.messages):
      role = message["role"]
      content = message.get("content", [])
      content = [{"text": content}] if isinstance(content, str) else content
      for item in content:
        (kind, value), = item.items()
        if kind == "text":  # AnyGPT's message format: text with modality spans, parsed as the data job does
          try:
            parts.extend(message_parts(value, role=role, field=f"messages[{index}]"))
          except AnyGPTDataError as e:
            raise RequestError(f"chat request: {e}") from None
        elif kind in TASK_MODALITIES:
          parts.append(Part(kind, codes=self._media_codes(kind, value, chat=True), role=role))
        else:
          raise RequestError(f"chat content item {item!r}: expected text, image, speech or music")
    parts.append(Part("text", text=PLACEHOLDER, role="assistant"))
    full = self.rendering.chat_string(self.layout, parts)
    text = full[:full.index(PLACEHOLDER)].rstrip()  # ends with chat_format.GENERATION_PROMPT
    return text, self._encode(text), task.target if task.target in TASK_MODALITIES[1:] else None

  def prompt(self, task: Task) -> tuple[str, list[int], str | None]:
    """`chat` or `base`, whichever the task is."""
    return self.chat(task) if task.messages is not None else self.base(task)


def decoding_request(task: Task, prompts: "Prompts", tables, max_positions: int, stop_ids: Sequence[int],
                     overrides: dict[str, dict]):
  """(prompt string, `decoding.Request`) of `task`: its prompt ids, the answer modality's default
  settings with `overrides[modality]` and `stop_ids`, checked against the model; raises RequestError
  or SettingsError naming the problem.

  A media answer must hold its whole span and a stop id within max_new_tokens, and is sampled (beam
  search is text only); prompt and answer must fit the model's `max_positions`."""
  from anygpt_jax.generation import Request, defaults_for
  prompt, ids, requested = prompts.prompt(task)
  target = task.target if task.target != "chat" else "text"
  settings = defaults_for(requested or target, stop_ids, **overrides.get(requested or target, {}))
  if requested and settings.max_new_tokens < tables.min_span_tokens(requested) + 1:
    raise RequestError(f"max_new_tokens={settings.max_new_tokens} cannot hold a {requested} span "
                       f"({tables.min_span_tokens(requested)} tokens) and the stop token")
  if len(ids) + settings.max_new_tokens > max_positions:
    raise RequestError(f"prompt ({len(ids)} tokens) + max_new_tokens ({settings.max_new_tokens}) exceed the "
                       f"model's max_position_embeddings={max_positions}")
  if requested and settings.num_beams > 1:
    settings = settings.replace(num_beams=1)
  return prompt, Request(ids, settings, requested)


def _check_text(text: str, where: str) -> None:
  """Text is text, in prompts as in training data (`layout.control_token_in_text`)."""
  found = control_token_in_text(text)
  if found:
    raise RequestError(f"{where}: char {found[0]}: {found[1]!r} is a control token, not text; the model was never "
                       "trained on text that holds one (the tokenization job rejects such records)")


def answer_text(vocabulary, tokens: Sequence[int], stop_ids: Sequence[int]) -> str:
  """The text a user reads of an answer (generated ids, int): the ids before the first stop id,
  without role markers (`[Human]`, `[MMGPT]`, `<eoh>`, `<eos>`), chat markers or modality tokens,
  decoded and stripped (AnyGPT's CLI: special tokens skipped, the text up to `<eos>`)."""
  layout = vocabulary.layout
  kept = []
  for t in tokens:
    if t in stop_ids:
      break
    if t < layout.text_vocab_size:
      kept.append(int(t))
  return vocabulary.decode(kept).strip()


def checked_spans(layout, target: str, tokens: Sequence[int], music_codebooks: int) -> list[cons.Span]:
  """The modality spans of an answer, checked: a media task's answer opens with its span, every
  span is closed and music spans hold whole frames; raises RequestError otherwise."""
  spans = cons.find_spans(layout, tokens)
  if target not in ("text", "chat") and (not spans or spans[0].modality != target):
    raise RequestError(f"no {target} span in the output")
  if any(not s.closed for s in spans):
    raise RequestError(f"the {spans[-1].modality} span was not closed within max_new_tokens={len(tokens)}; "
                       "raise max_new_tokens")
  for span in spans:
    if span.modality == "music" and len(span.codes) % music_codebooks:
      raise RequestError(f"a music span of {len(span.codes)} codes is not whole frames of {music_codebooks}")
  return spans
