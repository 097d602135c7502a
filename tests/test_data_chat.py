"""AnyGPT's chat format id for id: golden ids and loss masks produced by AnyGPT's own code.

How the golden values were made (a scratch environment, never a dependency of this project):
a venv with transformers 4.34.1, tokenizers 0.14.1 and sentencepiece (AnyGPT's pins), the
SentencePiece model that `spm_path` below trains, an AnyGPT-base tokenizer built as AnyGPT's
pretraining does (`LlamaTokenizer(vocab_file)`, `add_tokens` of `[Human] [MMGPT] <eoh> <eos>`,
then each modality's codes and start/end tokens), saved and reloaded with
`LlamaTokenizer.from_pretrained(..., use_fast=False)` and given `<-Res->`, `<-Ins->` as
OpenMOSS/AnyGPT `anygpt/src/train/stage2_sft.py` does; each record of `RECORDS` went through
that file's `preprocess` (conversation template "MMGPT" of `anygpt/src/m_utils/conversation.py`,
the one `anygpt/src/infer/cli_infer_chat_model.py` uses), giving `input_ids` (`<s>` ... `</s>`)
and `labels` (here 1 where a label is kept, 0 where it is -100). No record hit AnyGPT's
"tokenization mismatch" branch. The pair strings are `prompter.py`'s two templates.

Our path is the real one: the record -> `anygpt_data.record_to_sample` (what `anygpt-tokenize
--anygpt_data` stores) -> shard bytes -> the SeqIO renderer in TensorFlow.
"""

import json

import pytest
import tensorflow as tf

from anygpt_jax.data import preprocessors, rendering
from anygpt_jax.vocabulary import chat_format
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.data.shards import serialize_sample
from anygpt_jax.tokenizers.anygpt_data import record_to_sample
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary, train_llama_like_sentencepiece

RECORDS = json.loads(r"""
[
 {
  "id": "text_multi_turn",
  "conversation": [
   [
    {
     "role": "user",
     "message": "Hello! Who are you?"
    },
    {
     "role": "assistant",
     "message": "I am a small red cat."
    },
    {
     "role": "user",
     "message": "What do you do?"
    },
    {
     "role": "assistant",
     "message": "I sit on the sofa."
    }
   ]
  ]
 },
 {
  "id": "image_in",
  "conversation": [
   [
    {
     "role": "user",
     "message": "<soim><👀12><👀7><eoim> What is in this picture?"
    },
    {
     "role": "assistant",
     "message": "A dog runs in the park."
    }
   ]
  ]
 },
 {
  "id": "image_out",
  "conversation": [
   [
    {
     "role": "user",
     "message": "Draw a blue cat."
    },
    {
     "role": "assistant",
     "message": "Here is a blue cat. <soim><👀3><👀8191><eoim>"
    }
   ]
  ]
 },
 {
  "id": "speech_reply",
  "conversation": [
   [
    {
     "role": "user",
     "message": "<sosp><🗣️5><🗣️9><eosp>"
    },
    {
     "role": "assistant",
     "message": "<-Ins-> What is the weather like?\n <-Res-> It is sunny today.<sosp><🗣️1><🗣️1023><eosp>"
    }
   ]
  ]
 },
 {
  "id": "music_two_turns",
  "conversation": [
   [
    {
     "role": "user",
     "message": "<somu><🎶0><🎶2048><🎶4096><🎶6144><eomu> Describe this music."
    },
    {
     "role": "assistant",
     "message": "A calm piano piece."
    },
    {
     "role": "user",
     "message": "Now compose a happy song."
    },
    {
     "role": "assistant",
     "message": "Sure. <somu><🎶1><🎶2049><🎶4097><🎶6145><eomu>"
    }
   ]
  ]
 },
 {
  "id": "spaces_around_spans",
  "conversation": [
   [
    {
     "role": "user",
     "message": "<sosp><🗣️2><eosp> Please answer. <soim><👀1><eoim> and this"
    },
    {
     "role": "assistant",
     "message": "Okay <sosp><🗣️3><eosp> done."
    }
   ]
  ]
 },
 {
  "id": "mixed_speech_reply",
  "conversation": [
   [
    {
     "role": "user",
     "message": "Look: <soim><👀4><eoim><soim><👀5><eoim> two images"
    },
    {
     "role": "assistant",
     "message": "<-Ins-> Two images\n <-Res-> Both show cats. <sosp><🗣️7><eosp>"
    },
    {
     "role": "user",
     "message": "<sosp><🗣️8><🗣️9><eosp> And the music? <somu><🎶7><eomu>"
    },
    {
     "role": "assistant",
     "message": "It is slow. <somu><🎶8><🎶2050><eomu>"
    }
   ]
  ]
 }
]
""")

# AnyGPT's input_ids per record (text vocabulary of 600 pieces: <-Res-> = 18018, <-Ins-> = 18019).
GOLDEN_IDS = {
    "text_multi_turn": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 75, 563, 570, 266, 589, 561, 90, 287,
      561, 263, 563, 363, 565, 575, 66, 602, 561, 13, 601, 561, 595, 561, 76, 288, 574, 288, 452, 333, 332,
      584, 603, 561, 13, 600, 561, 595, 561, 90, 572, 273, 276, 565, 363, 565, 575, 276, 565, 66, 602, 561, 13,
      601, 561, 595, 561, 76, 335, 314, 308, 523, 584, 603, 2,
    ), 
    "image_in": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 8796, 616, 611, 8797, 561, 561, 90, 572,
      273, 504, 313, 525, 468, 66, 602, 561, 13, 601, 561, 595, 490, 315, 430, 313, 308, 340, 584, 603, 2,
    ), 
    "image_out": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 71, 564, 562, 580, 288, 418, 332, 584,
      602, 561, 13, 601, 561, 595, 561, 75, 563, 271, 504, 288, 418, 332, 584, 561, 8796, 607, 8795, 8797, 603,
      2,
    ), 
    "speech_reply": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 9822, 8803, 8807, 9823, 602, 561, 13,
      601, 561, 595, 561, 18019, 561, 561, 90, 572, 273, 504, 308, 282, 563, 273, 572, 275, 362, 568, 582, 563,
      66, 13, 561, 18018, 561, 561, 76, 567, 504, 412, 566, 579, 267, 565, 571, 548, 584, 9822, 8799, 9821,
      9823, 603, 2,
    ), 
    "music_two_turns": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 18016, 9824, 11872, 13920, 15968, 18017,
      561, 561, 71, 563, 569, 517, 525, 448, 584, 602, 561, 13, 601, 561, 595, 490, 339, 342, 329, 563, 557,
      584, 603, 561, 13, 600, 561, 595, 561, 81, 484, 261, 298, 577, 565, 569, 563, 288, 444, 434, 584, 602,
      561, 13, 601, 561, 595, 561, 86, 575, 271, 584, 561, 18016, 9825, 11873, 13921, 15969, 18017, 603, 2,
    ), 
    "spaces_around_spans": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 9822, 8800, 9823, 561, 534, 561, 492,
      580, 275, 584, 561, 8796, 605, 8797, 561, 502, 571, 525, 602, 561, 13, 601, 561, 595, 561, 82, 582, 548,
      561, 9822, 8801, 9823, 561, 276, 565, 566, 563, 584, 603, 2,
    ), 
    "mixed_speech_reply": (
      # ids
      1, 561, 92, 565, 575, 561, 263, 563, 502, 490, 76, 288, 569, 569, 568, 357, 270, 567, 300, 562, 574, 294,
      561, 80, 80, 74, 587, 585, 282, 287, 261, 270, 455, 357, 270, 571, 502, 571, 538, 269, 575, 570, 567,
      568, 574, 565, 571, 284, 261, 565, 566, 567, 479, 567, 586, 313, 559, 299, 278, 524, 586, 344, 586, 530,
      569, 502, 571, 288, 299, 568, 565, 584, 13, 600, 561, 595, 561, 79, 565, 565, 582, 595, 561, 8796, 608,
      8797, 8796, 609, 8797, 561, 267, 580, 565, 530, 569, 602, 561, 13, 601, 561, 595, 561, 18019, 561, 361,
      580, 565, 530, 569, 13, 561, 18018, 561, 561, 69, 565, 567, 572, 259, 287, 580, 332, 569, 584, 561, 9822,
      8805, 9823, 603, 561, 13, 600, 561, 595, 561, 9822, 8806, 8807, 9823, 561, 490, 566, 571, 308, 448, 66,
      561, 18016, 9831, 18017, 602, 561, 13, 601, 561, 595, 561, 76, 567, 504, 432, 584, 561, 18016, 9832,
      11874, 18017, 603, 2,
    ), 
}

# AnyGPT's loss mask per record as run lengths, starting with a run of 0 (untrained).
GOLDEN_MASK_RUNS = {
    "text_multi_turn": [98, 10, 23, 9],
    "image_in": [97, 9],
    "image_out": [91, 16],
    "speech_reply": [87, 41],
    "music_two_turns": [98, 8, 24, 14],
    "spaces_around_spans": [101, 16],
    "mixed_speech_reply": [101, 28, 27, 13],
}

# prompter.py's X->text and text->X templates: transformers 4.34.1 ids (with <s>).
GOLDEN_PAIRS = [
    ('[Human]: Describe this image. <soim><👀1><👀2><eoim><eoh> [MMGPT]: A red cat sits on the sofa.<eos>',
     [1, 600, 561, 595, 561, 71, 563, 569, 517, 525, 530, 584, 561, 8796, 605, 606, 8797, 602, 561, 561, 601, 561, 595, 490, 333, 332, 431, 314, 308, 523, 584, 603]),
    ('[Human]: Draw this. This is input: A red cat sits on the sofa.<eoh> [MMGPT]: <soim><👀1><👀2><eoim><eos>',
     [1, 600, 561, 595, 561, 71, 564, 562, 580, 525, 584, 519, 504, 531, 595, 490, 333, 332, 431, 314, 308, 523, 584, 602, 561, 561, 601, 561, 595, 561, 8796, 605, 606, 8797, 603]),
]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  texts = list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3
  spm = train_llama_like_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "m"), 600)
  return AnyGPTVocabulary(spm, chat_tokens=True)  # the default mode: AnyGPT's (legacy=True)


def mask_from_runs(runs):
  out, value = [], 0
  for n in runs:
    out += [value] * n
    value = 1 - value
  return out


def render(vocab, sample):
  ex = preprocessors.parse_record({"record": tf.constant(serialize_sample(sample)), "shard": tf.constant("s")})
  out = rendering.GraphRenderer(vocab).render(ex, "chat")
  return out["targets"].numpy().tolist(), out["loss_weights"].numpy().tolist()


def test_chat_token_ids_follow_anygpt_sft(vocab):
  assert vocab.layout.text_vocab_size == 600
  assert vocab.layout.special_token_to_id("<-Res->") == 18018
  assert vocab.layout.special_token_to_id("<-Ins->") == 18019


@pytest.mark.parametrize("record", RECORDS, ids=[r["id"] for r in RECORDS])
def test_chat_ids_and_loss_mask_equal_anygpt(vocab, record):
  sample = record_to_sample(record, "x", "")
  ids, weights = render(vocab, sample)
  assert ids == list(GOLDEN_IDS[record["id"]])
  assert weights == mask_from_runs(GOLDEN_MASK_RUNS[record["id"]])
  # The Python string form says the same (system line, turns, spaces next to spans).
  string = rendering.render_reference_string(vocab.layout, "chat", sample.parts)
  assert string.startswith(chat_format.SYSTEM_PROMPT + "\n[Human]: ")
  assert [1] + vocab.encode(string) + [2] == ids


def test_final_eos_is_trained_and_the_colon_is_not(vocab):
  ids, weights = render(vocab, record_to_sample(RECORDS[0], "x", ""))
  assert ids[-1] == 2 and weights[-1] == 1
  marker = ids.index(vocab.layout.mmgpt_id)
  colon = vocab.encode_text(":", dummy_prefix=True)
  assert ids[marker + 1:marker + 1 + len(colon)] == colon
  assert weights[marker:marker + 1 + len(colon)] == [0] * (1 + len(colon)) and weights[marker + 1 + len(colon)] == 1


@pytest.mark.parametrize("string, golden", GOLDEN_PAIRS)
def test_pretraining_templates_equal_transformers_4_34(vocab, string, golden):
  assert [1] + vocab.encode(string) == golden
