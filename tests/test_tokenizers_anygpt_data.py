"""AnyGPT data files (token strings) -> shard samples."""

import pytest

from anygpt_jax.data.shards import Part
from anygpt_jax.tokenizers.anygpt_data import AnyGPTDataError, message_parts, record_to_sample


def test_pair_puts_the_modality_first_then_the_text():
  s = record_to_sample({"text": "hello there", "speech": "<sosp><🗣️65><🗣️65><🗣️1023><eosp>"}, "f:1", "mls.jsonl")
  assert s.id == "f:1" and s.source == "mls.jsonl"
  assert s.parts == [Part("speech", codes=[65, 65, 1023]), Part("text", text="hello there")]


def test_image_and_music_pairs():
  s = record_to_sample({"id": 7, "text": "a cat", "image": "<soim><👀1736><👀0><eoim>"}, "x", "src")
  assert s.id == "7" and s.parts[0] == Part("image", codes=[1736, 0])
  s = record_to_sample({"text": "jazz", "music": "<somu><🎶8191><🎶2048><eomu>"}, "x", "src")
  assert s.parts[0] == Part("music", codes=[8191, 2048])


def test_chat_parts_follow_message_order_with_roles():
  record = {"id": 1, "conversation": [[
      {"role": "user", "message": "<sosp><🗣️1><🗣️1><🗣️1><eosp> Please acknowledge the user's vocal input"},
      {"role": "assistant", "message": "<-Ins-> hello, how are you\n <-Res-> I am fine <sosp><🗣️2><🗣️2><eosp> "},
  ]]}
  s = record_to_sample(record, "d:1", "anyinstruct.jsonl")
  assert s.parts == [
      Part("speech", codes=[1, 1, 1], role="user"),
      Part("text", text=" Please acknowledge the user's vocal input", role="user"),
      Part("text", text="<-Ins-> hello, how are you\n <-Res-> I am fine ", role="assistant"),
      Part("speech", codes=[2, 2], role="assistant"),
      Part("text", text=" ", role="assistant"),
  ]


def test_interleaved_document():
  s = record_to_sample({"text": "look <soim><👀5><eoim> and listen <sosp><🗣️9><eosp>"}, "i", "src")
  assert [(p.kind, p.text, list(p.codes)) for p in s.parts] == [
      ("text", "look ", []), ("image", "", [5]), ("text", " and listen ", []), ("speech", "", [9])]


@pytest.mark.parametrize("record, reason, named", [
    ({"text": "t", "speech": "<sosp><🗣️1024><eosp>"}, "bad_token_string", "<🗣️1024>"),  # out of range
    ({"text": "t", "image": "<soim><👀12><🗣️3><eoim>"}, "bad_token_string", "<🗣️3>"),  # another modality's code
    ({"text": "t", "music": "<somu><🎶x1><eomu>"}, "bad_token_string", "<🎶x1>"),  # malformed
    ({"text": "t", "speech": "<sosp><eosp>"}, "bad_token_string", "'speech'"),  # empty
    ({"text": "t", "speech": "<sosp><🗣️12><🗣️13>"}, "unclosed_span", "<sosp>"),  # a pair never closed
    ({"text": "t", "speech": "<sosp><🗣️1><soim><👀2><eoim><eosp>"}, "nested_span", "<soim>"),
    ({"conversation": [[{"role": "user", "message": "<soim><👀1>"}]]}, "unclosed_span", "conversation[0]"),
    ({"conversation": [[{"role": "user", "message": "stray <👀1> code"}]]}, "bad_token_string", "<👀1>"),
    ({"text": "a <eoim> b <soim><👀1><eoim>"}, "bad_token_string", "<eoim>"),  # closes nothing
    # Text is text: a control token inside text is rejected, never re-read as that token.
    ({"text": "alt text <soim> here", "image": "<soim><👀1><eoim>"}, "special_token_in_text", "<soim>"),
    ({"text": "a <-Ins-> b", "speech": "<sosp><🗣️1><eosp>"}, "special_token_in_text", "<-Ins->"),
    ({"text": "see [Human] <soim><👀1><eoim>"}, "special_token_in_text", "[Human]"),
    ({"conversation": [[{"role": "user", "message": "hi [MMGPT] : yes"}, {"role": "assistant", "message": "ok"}]]},
     "special_token_in_text", "conversation[0]"),
    ({"conversation": [[{"role": "user", "message": "hi"}, {"role": "assistant", "message": "ok <eos> more"}]]},
     "special_token_in_text", "<eos>"),
])
def test_bad_token_strings_name_the_token_and_field(record, reason, named):
  with pytest.raises(AnyGPTDataError) as e:
    record_to_sample(record, "id", "src")
  assert e.value.reason == reason
  assert named in e.value.detail and "field" in e.value.detail


@pytest.mark.parametrize("record", [
    {"conversation": [[{"role": "narrator", "message": "hi"}]]},
    {"speech": "<sosp><🗣️1><eosp>"},
    {"text": "t", "speech": "<sosp><🗣️1><eosp>", "image": "<soim><👀1><eoim>"},
    {"text": "no modality here"},
    # Several conversations in one record: AnyGPT trains each inner list as its own sample.
    {"conversation": [[{"role": "user", "message": "a"}], [{"role": "user", "message": "b"}]]},
])
def test_malformed_records(record):
  with pytest.raises(AnyGPTDataError) as e:
    record_to_sample(record, "id", "src")
  assert e.value.reason == "malformed_record"


def test_message_parts_keep_text_verbatim():
  """AnyGPT's template keeps the spaces next to modality spans (tests/test_data_chat.py pins the ids)."""
  assert message_parts("  <sosp><🗣️3><eosp>   ", "user") == [
      Part("text", text="  ", role="user"), Part("speech", codes=[3], role="user"),
      Part("text", text="   ", role="user")]


def test_pair_fields_may_carry_surrounding_spaces():
  s = record_to_sample({"text": "t", "speech": " <sosp><🗣️3><eosp> "}, "x", "src")
  assert s.parts[0] == Part("speech", codes=[3])
