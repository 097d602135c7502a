"""get_dataset: LM features, one corpus per row, determinism, resume, per-host shards, validation."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from anygpt_jax.data import pipeline
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.data.features import BATCH_FEATURES
from anygpt_jax.data.shards import Part, Sample
from anygpt_jax.vocabulary.layout import target_modality
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

LENGTH, BATCH = 1280, 2
CORPORA = [("demo_image", "image_text", "{name}/{name}-{split}-*", 0.5),
           ("demo_speech", "speech_text", "{name}/{name}-{split}-*", 0.5),
           ("demo_music", "music_text", "{name}/{name}-{split}-*", 0.5)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  spm = train_llama_like_sentencepiece(list(synthetic_corpus.TEXT_SAMPLES) + [" ".join(synthetic_corpus.WORDS)] * 3,
                                       str(root / "spm" / "m"), 600)
  for i, (name, kind, _, _) in enumerate(CORPORA):
    synthetic_corpus.write_corpus(str(root), name, kind, 24, num_shards=2, seed=i)
  synthetic_corpus.write_corpus(str(root), "demo_image", "image_text", 10, split="validation", seed=9)
  reg = pipeline.register_corpora(str(root), spm, CORPORA, default_mixtures=False, mixture_name="demo_mixture",
                                  shuffle_buffer_size=64)
  return root, reg


def batches(name, n, **kw):
  kw.setdefault("sequence_length", LENGTH)
  kw.setdefault("batch_size", BATCH)
  kw.setdefault("rows_per_window", 4)  # tiny corpora: small packing windows keep the test fast
  ds = pipeline.get_dataset(name, **kw)
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_registration_and_token_rates(data):
  _, reg = data
  assert reg.tasks == ["demo_image", "demo_speech", "demo_music"]
  rates = reg.mixtures["demo_mixture"]
  tokens = {t: pipeline.TASK_INFO[t].tokens() for t in reg.tasks}
  assert sum(rates.values()) == pytest.approx(1.0)
  for t in reg.tasks:
    assert rates[t] == pytest.approx(tokens[t] / sum(tokens.values()))
  mixture = seqio.get_mixture_or_task("demo_mixture")
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == pytest.approx(rates)
  info = pipeline.TASK_INFO["demo_music"]
  assert info.stats["train"].records == 24 and info.stats["train"].modality_tokens["music"] > 24 * 500
  assert 1.0 < info.chars_per_token < 10.0 and info.template_tokens_per_record > 10


@pytest.fixture(scope="module")
def resumed_run(data, tmp_path_factory):
  """Pipeline A (seed 5): 2 batches, iterator saved, 3 more. B: a fresh seed-5 pipeline, 5 batches.
  C: a fresh seed-5 pipeline restored from A's state, 3 batches. D: seed 6, 5 batches."""
  # Two corpora keep the four pipelines' set-up (TF tracing) short; the three-corpus mixture
  # is covered by the other tests.
  if "demo_two" not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add("demo_two", [("demo_speech", 0.5), ("demo_music", 0.5)])

  def make(seed):
    return iter(pipeline.get_dataset("demo_two", LENGTH, BATCH, seed=seed, rows_per_window=4))

  def take(it, n):
    return [{k: v.numpy() for k, v in next(it).items()} for _ in range(n)]

  a = make(5)
  first = take(a, 2)
  path = pipeline.save_iterator_state(a, str(tmp_path_factory.mktemp("iterator") / "state"))
  a_batches = first + take(a, 3)
  c = make(5)
  pipeline.restore_iterator_state(c, path)
  return {"a": a_batches, "b": take(make(5), 5), "c": take(c, 3), "d": take(make(6), 5)}


def test_batches_are_lm_features_packed_per_corpus(data, resumed_run):
  _, reg = data
  layout = reg.vocabulary.layout
  got = resumed_run["a"]
  for b in got:
    assert set(b) == set(BATCH_FEATURES)
    for v in b.values():
      assert v.dtype == np.int32 and v.shape == (BATCH, LENGTH)
    modality = target_modality(b["decoder_target_tokens"], layout)
    for row in range(BATCH):
      present = set(np.unique(modality[row])) - {0}
      assert len(present) <= 1  # one corpus (and so one modality) per row
      seg = b["decoder_segment_ids"][row]
      targets = b["decoder_target_tokens"][row]
      # Every segment is one whole rendered sample: <s> first, </s> last.
      for s in set(np.unique(seg)) - {0}:
        t = targets[seg == s]
        assert t[0] == 1 and t[-1] == 2 and (t[1:-1] != 2).all()
      assert (b["decoder_loss_weights"][row] <= (seg > 0)).all()
  seen = {int(m) for b in got for m in np.unique(target_modality(b["decoder_target_tokens"], layout))}
  assert seen >= {2, 3}


def assert_same(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_same_seed_same_batches_other_seed_others(resumed_run):
  assert_same(resumed_run["a"], resumed_run["b"])
  assert any((x["decoder_target_tokens"] != z["decoder_target_tokens"]).any()
             for x, z in zip(resumed_run["a"], resumed_run["d"]))


def test_iterator_state_resumes_with_exactly_the_next_batch(resumed_run):
  assert_same(resumed_run["c"], resumed_run["a"][2:])


def samples_of(name, layout, **kw):
  """The samples a pipeline yields, identified by their image codes (directions are random)."""
  ds = pipeline.get_dataset(name, LENGTH, 1, shuffle=False, pack=False, num_epochs=1, **kw)
  image = layout.modality("image")
  out = []
  for b in ds:
    t = b["decoder_target_tokens"][0].numpy()
    out.append(tuple(t[(t >= image.first_code_id) & (t <= image.last_code_id)].tolist()))
  return out


def test_per_host_shards_split_the_input(data):
  layout = data[1].vocabulary.layout
  whole = samples_of("demo_image", layout)
  first = samples_of("demo_image", layout, shard_index=0, num_shards=2)
  second = samples_of("demo_image", layout, shard_index=1, num_shards=2)
  assert len(whole) == len(set(whole)) == 24 and len(first) == len(second) == 12
  assert not (set(first) & set(second)) and set(first) | set(second) == set(whole)


def test_validation_split(data):
  ds = pipeline.get_dataset("demo_mixture", LENGTH, 1, split="validation", shuffle=False, rows_per_window=4,
                            drop_remainder=False)
  got = [{k: v.numpy() for k, v in b.items()} for b in ds]
  assert got  # finite: reads the validation shards once
  modality = {int(m) for b in got for m in np.unique(target_modality(b["decoder_target_tokens"],
                                                                                 data[1].vocabulary.layout))}
  assert modality == {0, 1}  # only demo_image has validation shards
  tokens = sum(int((b["decoder_segment_ids"] > 0).sum()) for b in got)
  assert tokens > 10 * 60


def test_overlong_samples_are_counted(data):
  ds = pipeline.get_dataset("demo_speech", 300, 1, with_stats=True, shuffle=False, num_epochs=1, overlong="trim",
                            rows_per_window=4)
  counted = sum(int(b["num_overlong"].numpy().sum()) for b in ds)
  over = sum(1 for b in pipeline.get_dataset("demo_speech", 4096, 1, shuffle=False, num_epochs=1, pack=False)
             if int((b["decoder_segment_ids"].numpy() > 0).sum()) > 300)
  assert counted == over > 0


def test_a_corpus_longer_than_the_rows_is_a_clear_error(data):
  # Every music sample (>= 400 tokens) is over 256: dropping all would loop forever; it fails instead.
  with pytest.raises(tf.errors.InvalidArgumentError, match="demo_music: every sample of a window is longer"):
    batches("demo_music", 1, sequence_length=256)


def test_records_the_renderer_cannot_take_are_skipped_and_counted(data, tmp_path):
  """One bad record never stops a run: shards not made by anygpt-tokenize (or by an older one) may
  hold a code out of range, a control token inside text or a pair without its parts; the pipeline
  leaves each out and counts it (`num_skipped`), where the strict renderer raises naming it
  (tests/test_data_rendering.py)."""
  root, reg = data
  good = [Sample(f"good-{i}", [Part("image", codes=[i]), Part("text", f"fine {i}")]) for i in range(3)]
  bad = [Sample("bad-code", [Part("image", codes=[9000]), Part("text", "oops")]),
         Sample("bad-text", [Part("image", codes=[1]), Part("text", "alt text <soim> here")]),
         Sample("bad-role", [Part("image", codes=[1]), Part("text", "a [MMGPT] inside")]),
         Sample("bad-parts", [Part("text", "no image"), Part("image", codes=[1])])]
  synthetic_corpus.write_shards(str(tmp_path / "bad"), "bad", "train", [good[0]] + bad + good[1:])
  pipeline.register_corpora(str(tmp_path), reg.vocabulary.spm_path, [("bad", "image_text", "bad/bad-{split}-*")],
                            default_mixtures=False)
  out = batches("bad", 10, num_epochs=1, drop_remainder=False, with_stats=True)
  assert sum(int(b["num_skipped"].sum()) for b in out) == len(bad)
  image = reg.vocabulary.layout.modality("image")
  kept = sorted(int(t[i + 1]) - image.first_code_id for b in out for t in b["decoder_target_tokens"]
                for i in np.flatnonzero(t == image.start_id))
  assert kept == [0, 1, 2]  # the three good records, each once


def test_target_modality_is_vectorised(data):
  layout = data[1].vocabulary.layout
  ids = np.array([[0, 1, layout.human_id, layout.modality("image").first_code_id, layout.modality("image").end_id],
                  [layout.modality("speech").start_id, layout.modality("music").last_code_id, 5, 2,
                   layout.modality("speech").last_code_id]], np.int32)
  want = np.array([[0, 0, 0, 1, 1], [2, 3, 0, 0, 2]])
  np.testing.assert_array_equal(target_modality(ids, layout), want)
  import jax.numpy as jnp
  np.testing.assert_array_equal(np.asarray(target_modality(jnp.asarray(ids), layout)), want)
