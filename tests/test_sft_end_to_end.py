"""SFT end to end: a chat corpus (shards as the tokenization job writes them) -> the SeqIO pipeline
(chat template, packing, batching) -> the training loss. Only the assistant's tokens carry weight,
for every modality: the user's image, speech and music codes are read but never trained on, the
assistant's are, and the loss counts them under their modality."""

import numpy as np
import pytest

from anygpt_jax.data import pipeline
from anygpt_jax.data.shards import Part, Sample
from anygpt_jax.testing.synthetic_corpus import write_shards
from anygpt_jax.training.loss import loss_sums
from anygpt_jax.vocabulary.layout import CONTENT_KINDS
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

WORDS = "a the red blue cat dog sits runs on under sofa park song calm piano bird sings loud".split()
# User codes come from [0, 50), the assistant's from [500, 550): a weighted code tells whose it is.
USER, ASSISTANT = range(0, 50), range(500, 550)


def _conversation(index: int, asked: str, answered: str, rng) -> Sample:
  """A system line, a user turn with `asked` codes, an assistant reply with `answered` codes."""
  def codes(pool, n):
    return [int(c) for c in rng.choice(list(pool), n)]
  reply = "<-Ins-> say it <-Res-> here it is " if answered == "speech" else "Here it is: "
  return Sample(f"chat/{index:08d}", [
      Part("text", "You are a helpful assistant.", role="system"),
      Part("text", f"Make {answered} from this {asked}. ", role="user"),
      Part(asked, codes=codes(USER, 6), role="user"),
      Part("text", reply, role="assistant"),
      Part(answered, codes=codes(ASSISTANT, 5), role="assistant")])


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
  root = tmp_path_factory.mktemp("sft")
  rng = np.random.default_rng(0)
  pairs = [("image", "speech"), ("speech", "music"), ("music", "image")] * 2
  samples = [_conversation(i, asked, answered, rng) for i, (asked, answered) in enumerate(pairs)]
  write_shards(str(root / "shards" / "chats"), "chats", "train", samples)
  spm = train_llama_like_sentencepiece([" ".join(rng.choice(WORDS, 8)) for _ in range(200)] + [
      "You are a helpful assistant. Make image speech music from this. Here it is: say it"] * 3,
      str(root / "spm"), 300)
  registration = pipeline.register_corpora(str(root / "shards"), spm, [("chats", "chat")], chat_tokens=True,
                                           shuffle_buffer_size=8)
  dataset = pipeline.get_dataset("chats", 256, 2, split="train", shuffle=False, num_epochs=1,
                                 drop_remainder=False)
  return registration.vocabulary.layout, [{k: v.numpy() for k, v in b.items()} for b in dataset], samples


def test_only_assistant_tokens_carry_weight_in_every_modality(batches):
  layout, rows, samples = batches
  targets = np.concatenate([b["decoder_target_tokens"] for b in rows])
  weights = np.concatenate([b["decoder_loss_weights"] for b in rows])
  assert len(set(np.concatenate([b["decoder_segment_ids"] for b in rows]).ravel()) - {0}) > 1  # packed rows
  for modality in ("image", "speech", "music"):
    first = layout.modality(modality).first_code_id
    codes = (targets >= first) & (targets <= layout.modality(modality).last_code_id)
    local = targets - first
    user, assistant = codes & (local < USER.stop), codes & (local >= ASSISTANT.start)
    expected = sum(len(p.codes) for s in samples for p in s.parts if p.kind == modality)
    assert user.sum() + assistant.sum() == expected, modality  # every code came through the pipeline
    assert user.sum() > 0 and not weights[user].any(), modality  # read, never trained on
    assert assistant.sum() > 0 and weights[assistant].all(), modality
  # The roles' markers and the system line are not trained either: weighted targets are few.
  assert 0 < weights.sum() < (targets > 0).sum() / 2


def test_the_loss_counts_the_assistant_tokens_per_modality(batches):
  layout, rows, samples = batches
  batch = {k: np.concatenate([b[k] for b in rows]) for k in rows[0]}
  logits = np.zeros(batch["decoder_target_tokens"].shape + (layout.padded_vocab_size,), np.float32)
  sums = loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], layout)
  per_modality = np.asarray(sums["modality_tokens"])
  np.testing.assert_allclose(float(sums["cross_entropy"]), float(sums["tokens"]) * np.log(layout.padded_vocab_size),
                             rtol=1e-5)
  for modality in ("image", "speech", "music"):
    # The assistant's codes plus its span's start and end tokens (they count as the modality).
    answers = sum(len(p.codes) + 2 for s in samples for p in s.parts if p.kind == modality and p.role == "assistant")
    assert per_modality[CONTENT_KINDS.index(modality)] == answers, modality
  assert per_modality[CONTENT_KINDS.index("text")] > 0  # the replies' words and the final </s>
