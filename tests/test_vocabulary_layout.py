"""The vocabulary layout: AnyGPT-base ids exactly, string forms both ways, errors, anygpt-vocab."""

import json

import pytest

from anygpt_jax.vocabulary.layout import (ADDED_TOKEN_PATTERN, CHAT_TOKENS, CONTENT_KINDS, MODALITIES, ROLE_TOKENS,
                                          VocabularyError, VocabularyLayout, modality_codes_from_string,
                                          split_added_tokens)
from tools import vocab as vocab_tool

SPEECH = "\U0001F5E3\uFE0F"


def test_anygpt_base_ids_match_the_published_layout():
  layout = VocabularyLayout(32000)
  assert [layout.role_id(t) for t in ROLE_TOKENS] == [32000, 32001, 32002, 32003]
  image, speech, music = layout.modality_ranges[:3]  # a modality added to the table comes after these
  assert (image.first_code_id, image.last_code_id, image.start_id, image.end_id) == (32004, 40195, 40196, 40197)
  assert (speech.first_code_id, speech.last_code_id, speech.start_id, speech.end_id) == (40198, 41221, 41222, 41223)
  assert (music.first_code_id, music.last_code_id, music.start_id, music.end_id) == (41224, 49415, 49416, 49417)
  assert layout.vocab_size == 49418
  assert layout.padded_vocab_size == 49536
  chat = VocabularyLayout(32000, chat_tokens=True)
  assert [chat.special_token_to_id(t) for t in CHAT_TOKENS] == [49418, 49419]
  assert chat.special_token_to_id("<-Res->") == 49418 and chat.special_token_to_id("<-Ins->") == 49419
  assert chat.vocab_size == 49420


def test_the_modality_table_is_consistent_and_drives_the_token_pattern():
  assert CONTENT_KINDS == ("text",) + tuple(m.name for m in MODALITIES)
  assert len({m.tag for m in MODALITIES}) == len({m.symbol for m in MODALITIES}) == len(MODALITIES)
  for m in MODALITIES:
    assert m.num_codes % m.codebooks == 0 and m.codebook_size * m.codebooks == m.num_codes
    for token in (m.start_token, m.end_token, m.code_string(0), m.code_string(m.num_codes - 1)):
      assert ADDED_TOKEN_PATTERN.fullmatch(token), token
  # AnyGPT's facts, in the table: span tokens, 50 Hz speech, 4 x 2048 music at 50 frames/s, 32 codes per image.
  image, speech, music = MODALITIES[:3]
  assert [m.start_token + m.end_token for m in MODALITIES[:3]] == ["<soim><eoim>", "<sosp><eosp>", "<somu><eomu>"]
  assert (image.item_length, speech.codes_per_second, music.codes_per_second, music.codebooks,
          music.codebook_size) == (32, 50, 200, 4, 2048)
  every_added = VocabularyLayout(100, chat_tokens=True).added_tokens()
  assert all(ADDED_TOKEN_PATTERN.fullmatch(t) for t in every_added)


def test_added_tokens_are_in_id_order():
  layout = VocabularyLayout(32000, chat_tokens=True)
  tokens = layout.added_tokens()
  assert len(tokens) == layout.vocab_size - 32000
  assert tokens[:5] == ["[Human]", "[MMGPT]", "<eoh>", "<eos>", "<\U0001F4400>"]
  assert tokens[8192 + 4:8192 + 6] == ["<soim>", "<eoim>"]
  assert tokens[-2:] == list(CHAT_TOKENS)
  for offset in (0, 3, 4, 8195, 8196, 8197, 9222, 17418, len(tokens) - 1):
    assert layout.special_token_to_id(tokens[offset]) == 32000 + offset
    assert layout.id_to_special_token(32000 + offset) == tokens[offset]


def test_small_text_vocabulary_shifts_every_id_by_the_same_offset():
  big, small = VocabularyLayout(32000), VocabularyLayout(400)
  assert big.vocab_size - small.vocab_size == 32000 - 400
  for name in ("image", "speech", "music"):
    assert big.modality(name).start_id - small.modality(name).start_id == 31600


def test_string_forms_round_trip():
  layout = VocabularyLayout(32000)
  for token, token_id in ((f"<{SPEECH}7>", 40205), ("<\U0001F44012>", 32016), ("<\U0001F3B64095>", 45319),
                          ("<soim>", 40196), ("<eomu>", 49417), ("[MMGPT]", 32001)):
    assert layout.special_token_to_id(token) == token_id
    assert layout.id_to_special_token(token_id) == token
  text = f"[Human]: hi <sosp><{SPEECH}1><{SPEECH}1023><eosp><eoh> [MMGPT]: yes<eos>"
  chunks = split_added_tokens(text)
  assert "".join(p for _, p in chunks) == text
  assert [p for t, p in chunks if not t] == [": hi ", " ", ": yes"]
  assert modality_codes_from_string(layout, "speech", "<sosp><%s1><%s1023><eosp>" % (SPEECH, SPEECH)) == [1, 1023]
  assert layout.code_to_id("music", [0, 8191]) == [41224, 49415]
  assert layout.id_to_code(41225) == ("music", 1)
  assert layout.id_to_code(100) is None


def test_modality_of_id():
  layout = VocabularyLayout(32000)
  assert [layout.modality_of_id(i) for i in (0, 31999, 32000, 32004, 40197, 40198, 49417, 49418)] == [
      "text", "text", "special", "image", "image", "speech", "music", "padding"]


@pytest.mark.parametrize("call, message", [
    (lambda l: l.code_to_id("image", [8192]), "outside"),
    (lambda l: l.code_to_id("speech", [-1]), "outside"),
    (lambda l: l.special_token_to_id(f"<{SPEECH}1024>"), "outside"),
    (lambda l: l.special_token_to_id("<\U0001F440x>"), "malformed"),
    (lambda l: l.special_token_to_id("<-Ins->"), "chat_tokens"),
    (lambda l: l.special_token_to_id("<foo>"), "not an AnyGPT added token"),
    (lambda l: l.modality("smell"), "unknown modality"),
    (lambda l: l.id_to_special_token(5), "not an added token"),
    (lambda l: l.modality_of_id(10**6), "outside the padded vocabulary"),
    (lambda l: modality_codes_from_string(l, "image", "<soim><\U0001F3B61><eoim>"), "not a image code"),
    (lambda l: modality_codes_from_string(l, "image", "<soim>oops<eoim>"), "unexpected text"),
])
def test_errors_are_clear(call, message):
  with pytest.raises(VocabularyError, match=message):
    call(VocabularyLayout(32000))


def test_bad_sizes_and_json_round_trip():
  with pytest.raises(VocabularyError):
    VocabularyLayout(2)
  with pytest.raises(VocabularyError):
    VocabularyLayout(32000, pad_multiple=0)
  layout = VocabularyLayout(32000, chat_tokens=True, pad_multiple=256)
  assert VocabularyLayout.from_json_dict(layout.to_json_dict()) == layout
  with pytest.raises(VocabularyError, match="vocab_size"):
    VocabularyLayout.from_json_dict({**layout.to_json_dict(), "vocab_size": 5})


def test_anygpt_vocab_prints_the_layout(capsys):
  assert vocab_tool.main(["--text_vocab_size", "32000", "--chat_tokens", "--pad_multiple", "256"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["vocab_size"] == 49420 and printed["padded_vocab_size"] == 49664
  assert printed["groups"]["image_codes"] == {"first": 32004, "last": 40195}
  assert printed["groups"]["<-Res->"] == {"first": 49418, "last": 49418}
  assert printed["groups"]["<-Ins->"] == {"first": 49419, "last": 49419}
  assert printed["groups"]["padding"] == {"first": 49420, "last": 49663}
  assert vocab_tool.main(["--text_vocab_size", "1"]) == 2
