"""Fuzz: a few thousand random and mutated AnyGPT records through the real job and the renderer.

Every record must end either in the shard, where the strict renderer takes it, or in the rejects
with a category and a detail; the job itself never fails (exit 0 or 3, never 1). The records are
AnyGPT's three shapes (pairs, chats, interleaved documents), then mutated: control-token strings
spliced into text, codes out of range or of another modality, spans left open or empty, random
nesting and types, truncated JSON and bytes that are not UTF-8.
"""

import json
import random

import pytest
import tensorflow as tf

from anygpt_jax.data import preprocessors, rendering
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.tokenizers.tfrecord import read_tfrecords
from anygpt_jax.vocabulary.layout import CHAT_TOKENS, MODALITIES, ROLE_TOKENS
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary, train_llama_like_sentencepiece
from tools import tokenize_media

RECORDS_PER_SHAPE = 700
SIZES = {"image": 8192, "speech": 1024, "music": 8192}


def span(rng: random.Random, name: str, n: int | None = None) -> str:
  m = next(m for m in MODALITIES if m.name == name)
  n = rng.randint(1, 6) if n is None else n
  return m.start_token + "".join(f"<{m.symbol}{rng.randrange(SIZES[name])}>" for _ in range(n)) + m.end_token


def words(rng: random.Random) -> str:
  return " ".join(rng.choice(synthetic_corpus.WORDS) for _ in range(rng.randint(1, 8)))


def noise_token(rng: random.Random) -> str:
  """A string the vocabulary would read as a token, or nearly."""
  m = rng.choice(MODALITIES)
  return rng.choice([*ROLE_TOKENS, *CHAT_TOKENS, m.start_token, m.end_token, f"<{m.symbol}{rng.randrange(9000)}>",
                     f"<{m.symbol}x>", f"<{m.symbol}-1>", "<", ">", "[Human", "<eos"])


def mutate_text(rng: random.Random, text: str, p: float = 0.5) -> str:
  """`text`, or with probability `p` with a token-like string spliced in."""
  if rng.random() >= p:
    return text
  cut = rng.randint(0, len(text))
  return text[:cut] + noise_token(rng) + text[cut:]


def pair(rng: random.Random) -> dict:
  record = {"text": mutate_text(rng, words(rng)), "image": span(rng, "image", rng.choice([0, 1, 32]))}
  if rng.random() < 0.2:
    record["image"] = mutate_text(rng, record["image"])
  return record


def chat(rng: random.Random) -> dict:
  messages = []
  for _ in range(rng.randint(1, 4)):
    for role in ("user", "assistant"):
      body = words(rng) + (" " + span(rng, rng.choice(list(SIZES))) if rng.random() < 0.5 else "")
      if role == "assistant" and rng.random() < 0.3:
        body = f"<-Ins-> {words(rng)}\n <-Res-> {body}"
      messages.append({"role": role, "message": mutate_text(rng, body, p=0.1)})
  nesting = rng.random()
  if nesting < 0.1:
    return {"conversation": [messages[:1], messages[1:]]}
  if nesting < 0.2:
    return {"conversation": messages}  # flat
  if nesting < 0.25:
    messages[0] = rng.choice([None, 3, "text", [messages[0]]])
  if nesting < 0.3:
    messages[-1]["role"] = rng.choice(["robot", "", None])
  return {"id": rng.randrange(10 ** 6), "conversation": [messages]}


def document(rng: random.Random) -> dict:
  pieces = [words(rng)]
  for _ in range(rng.randint(0, 3)):
    pieces += [span(rng, rng.choice(list(SIZES)), rng.choice([0] + [3] * 9)), words(rng)]
  text = mutate_text(rng, " ".join(pieces), p=0.2)
  if rng.random() < 0.1:  # a span left open
    text = text.replace("<eoim>", "", 1)
  return {"text": text}


def lines(rng: random.Random, make) -> bytes:
  out = []
  for _ in range(RECORDS_PER_SHAPE):
    r = rng.random()
    if r < 0.03:
      out.append(b"\xff" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))).replace(b"\n", b" "))
    elif r < 0.06:
      out.append(json.dumps(make(rng), ensure_ascii=False).encode()[:rng.randint(1, 30)])  # truncated JSON
    elif r < 0.08:
      out.append(json.dumps(rng.choice([None, 1, [], "x", {"text": 5}])).encode())
    else:
      out.append(json.dumps(make(rng), ensure_ascii=False).encode())
  return b"\n".join(out) + b"\n"


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  texts = list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3
  spm = train_llama_like_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "m"), 600)
  return AnyGPTVocabulary(spm, chat_tokens=True)


@pytest.mark.parametrize("shape, make, kind", [("pairs", pair, "image_text"), ("chats", chat, "chat"),
                                               ("documents", document, "interleaved")])
def test_every_record_is_written_and_renderable_or_rejected_with_a_category(tmp_path, vocab, shape, make, kind):
  rng = random.Random(shape)
  data = tmp_path / f"{shape}.jsonl"
  data.write_bytes(lines(rng, make))
  out = tmp_path / "out"
  rc = tokenize_media.main(["--anygpt_data", str(data), "--corpus", shape, "--output_dir", str(out), "--no_progress"])
  assert rc in (tokenize_media.EXIT_OK, tokenize_media.EXIT_REJECTS)  # never 1: bad data is never a crash
  stats = json.loads(next(out.glob("*.stats.json")).read_text())
  rejects = [json.loads(l) for l in next(out.glob("*.rejects.jsonl")).read_text().splitlines()]
  assert stats["records_in"] == RECORDS_PER_SHAPE == stats["records_out"] + len(rejects)
  assert all(r["reason"] and r["detail"] for r in rejects)
  assert stats["records_out"] > RECORDS_PER_SHAPE // 4 and len({r["reason"] for r in rejects}) >= 3

  shard = next(p for p in out.iterdir() if p.name.endswith("-of-00001"))
  records = list(read_tfrecords(str(shard)))
  assert len(records) == stats["records_out"]
  renderer = rendering.GraphRenderer(vocab)
  for start in range(0, len(records), 64):  # the strict renderer raises on any record it cannot take
    batch = preprocessors.parse_batch({"record": tf.constant(records[start:start + 64]),
                                       "shard": tf.constant([shard.name] * len(records[start:start + 64]))})
    n = len(records[start:start + 64])
    directions = (tf.ones([n], tf.bool), tf.fill([n], "describe")) if kind == "image_text" else (None, None)
    assert bool(tf.reduce_all(renderer.valid_rows(batch, kind)))
    rendered = renderer.render_batch(batch, kind, *directions)
    assert rendered["targets"].nrows() == n
