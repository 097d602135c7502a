"""AnyGPT's conversation format: the one definition that training, generation and the export share.

A conversation is rendered as AnyGPT's "MMGPT" template (`m_utils/conversation.py`), which its SFT
code trains on and its chat CLI prompts with:

    {system}\\n[Human]: {user}<eoh>\\n[MMGPT]: {assistant}<eos>\\n[Human]: ...

`{system}` is the conversation's own system message or AnyGPT's system line (`SYSTEM_PROMPT`).
Consecutive messages of one role form one turn, their contents concatenated as they are. Modality
spans are written inside the content as token strings (`<soim><👀12>...<eoim>`).

Users of this module:
  - `anygpt_jax.data.rendering` builds training strings from shard parts (in Python and TF);
  - `anygpt_jax.generation.requests` builds chat prompts, up to `GENERATION_PROMPT`;
  - `anygpt_jax.export.hf` writes `jinja_chat_template()` as the export's chat template, so
    `tokenizer.apply_chat_template` and OpenAI-compatible engines render the same ids.

Pure Python: the tokenizer workers import it without JAX or TensorFlow.
"""

from __future__ import annotations

import json
from typing import Sequence

from anygpt_jax.vocabulary.layout import ROLE_TOKENS

ROLES = ("system", "user", "assistant")
# AnyGPT's system line ("MMGPT" conversation template), put before every conversation that has none.
SYSTEM_PROMPT = ("You are an AI assistant named MMGPT who can understand and generate multimodal content, "
                 "including text, speech, images and audio.")
TURN_SEPARATOR = "\n"
TURN_OPEN = {"system": "", "user": "[Human]: ", "assistant": "[MMGPT]: "}
TURN_CLOSE = {"system": "", "user": "<eoh>", "assistant": "<eos>"}
# Where a prompt for the assistant's reply ends: AnyGPT's chat CLI stops at `[MMGPT]:`, and the
# model writes the space (legacy SentencePiece gives `▁:` either way, so the ids are a prefix).
GENERATION_PROMPT = TURN_SEPARATOR + TURN_OPEN["assistant"].rstrip()


class ConversationError(ValueError):
  """A conversation AnyGPT's format cannot render; the message names the problem and message."""


def check_roles(roles: Sequence[str], add_generation_prompt: bool = False) -> None:
  """Raises ConversationError for what the chat template refuses (the same problems, in the same
  order): no messages, an unknown role, a system message that is not the only first one, an
  assistant turn before any user turn, a generation prompt after anything but a user turn."""
  if not roles:
    raise ConversationError("a conversation needs at least one message")
  seen_user = False
  for i, role in enumerate(roles):
    if role not in ROLES:
      raise ConversationError(f"message {i}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role == "system" and i > 0:
      raise ConversationError(f"message {i}: a second system message, or one after the first turn; "
                              "a conversation has at most one, first")
    if role == "assistant" and not seen_user:
      raise ConversationError(f"message {i}: an assistant turn before any user turn")
    seen_user = seen_user or role == "user"
  if add_generation_prompt and roles[-1] != "user":
    raise ConversationError(f"a generation prompt needs the last message to be the user's, not {roles[-1]!r}")


def render_turns(turns: Sequence[tuple[str, str]]) -> str:
  """(role, body) pairs, already merged per turn -> the conversation string, system line first."""
  texts = [TURN_OPEN[role] + body + TURN_CLOSE[role] for role, body in turns]
  if not turns or turns[0][0] != "system":
    texts.insert(0, SYSTEM_PROMPT)
  return TURN_SEPARATOR.join(texts)


def merge_turns(messages: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
  """(role, text) messages -> (role, body) turns: consecutive messages of one role concatenated."""
  turns: list[tuple[str, str]] = []
  for role, text in messages:
    if turns and turns[-1][0] == role:
      turns[-1] = (role, turns[-1][1] + text)
    else:
      turns.append((role, text))
  return turns


# --- the Jinja chat template of the export ---------------------------------------------------------
# Written for jinja2 as transformers and vLLM run it (`raise_exception`, `bos_token` and
# `eos_token` are theirs). Content is a string or a list of text items: OpenAI's
# {"type": "text", "text": ...} or anygpt-generate's {"text": ...}.
_TEMPLATE_BODY = """\
{%- if not messages %}{{ raise_exception("AnyGPT chat: a conversation needs at least one message") }}{% endif %}
{%- set state = namespace(seen_user=false) %}
{{- bos_token ~ text_start }}
{%- if messages[0]["role"] != "system" %}{{ system_prompt ~ separator }}{% endif %}
{%- for message in messages %}
  {%- set role = message["role"] %}
  {%- set index = loop.index0 %}
  {%- if role not in turn_open %}
    {{- raise_exception("AnyGPT chat: message " ~ index ~ ": unknown role '" ~ role ~ "'; expected one of system, user, assistant") }}
  {%- endif %}
  {%- if role == "system" and not loop.first %}
    {{- raise_exception("AnyGPT chat: message " ~ index ~ ": a second system message, or one after the first turn; a conversation has at most one, first") }}
  {%- endif %}
  {%- if role == "assistant" and not state.seen_user %}
    {{- raise_exception("AnyGPT chat: message " ~ index ~ ": an assistant turn before any user turn") }}
  {%- endif %}
  {%- if role == "user" %}{% set state.seen_user = true %}{% endif %}
  {%- if message["content"] is string %}
    {%- set body = message["content"] %}
  {%- elif message["content"] is iterable and message["content"] is not mapping %}
    {%- set text = namespace(value="") %}
    {%- for item in message["content"] %}
      {%- if item is mapping and item["text"] is string and (item["type"] is not defined or item["type"] == "text") %}
        {%- set text.value = text.value ~ item["text"] %}
      {%- else %}
        {{- raise_exception("AnyGPT chat: message " ~ index ~ ": content items must be text; write media as their token strings (<soim>...<eoim>, <sosp>...<eosp>, <somu>...<eomu>)") }}
      {%- endif %}
    {%- endfor %}
    {%- set body = text.value %}
  {%- else %}
    {{- raise_exception("AnyGPT chat: message " ~ index ~ ": content must be a string or a list of text items") }}
  {%- endif %}
  {%- for token in role_tokens if token in body %}
    {{- raise_exception("AnyGPT chat: message " ~ index ~ ": " ~ token ~ " is a control token, not text") }}
  {%- endfor %}
  {%- set opens = loop.first or loop.previtem["role"] != role %}
  {%- set closes = loop.last or loop.nextitem["role"] != role %}
  {%- if opens %}{% if not loop.first %}{{ separator }}{% endif %}{{ turn_open[role] }}{% endif %}
  {{- body }}
  {%- if closes %}{{ turn_close[role] }}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
  {%- if messages[-1]["role"] != "user" %}
    {{- raise_exception("AnyGPT chat: a generation prompt needs the last message to be the user's, not '" ~ messages[-1]["role"] ~ "'") }}
  {%- endif %}
  {{- generation_prompt }}
{%- elif messages[-1]["role"] == "assistant" %}
  {{- eos_token }}
{%- endif %}
"""


def jinja_chat_template(legacy: bool = True) -> str:
  """AnyGPT's conversation format as a HuggingFace chat template (Jinja source).

  `apply_chat_template(messages)` renders `<s>` + the training string (the format above), and `</s>`
  when the last message is the assistant's: the ids the training pipeline renders for that
  conversation. `add_generation_prompt=True` ends at `GENERATION_PROMPT` (`...\\n[MMGPT]:`), where
  anygpt-generate's chat prompt ends. Bad conversations raise (`raise_exception`) with the
  problem named, as `check_roles` does, and so does a message holding a role token (text is text:
  `layout.control_token_in_text`; media are written as their token strings, so spans pass).

  legacy: the export's text mode. The pipeline gives the first text of a sample SentencePiece's
  dummy prefix. A template writes `<s>` as text, and a non-legacy tokenizer gives no prefix to
  text after an added token, so there the template writes the prefix's space itself (`<s> You`);
  a legacy tokenizer prefixes every chunk already (`<s>You`).
  """
  constants = {"system_prompt": SYSTEM_PROMPT, "separator": TURN_SEPARATOR, "turn_open": TURN_OPEN,
               "turn_close": TURN_CLOSE, "generation_prompt": GENERATION_PROMPT,
               "text_start": "" if legacy else " ", "role_tokens": ROLE_TOKENS}
  header = "".join(f"{{%- set {name} = {json.dumps(value)} %}}\n" for name, value in constants.items())
  return header + _TEMPLATE_BODY
