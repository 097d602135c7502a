"""Shard discovery takes shards only; hosts get their share of records or a clear error first."""

import numpy as np
import pytest
import seqio

from anygpt_jax.data import pipeline, preprocessors, sources
from anygpt_jax.testing import synthetic_corpus
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece


def test_only_shard_names_are_read(tmp_path):
  shards = synthetic_corpus.write_corpus(str(tmp_path), "c", "image_text", 6, num_shards=2)
  directory = tmp_path / "c"
  for name in ("c-train-00000-of-00002.rejects.jsonl", "c-train-00001-of-00002.tmp",
               "c-train-00002-of-00004.rejects.jsonl.tmp", "c-train-notes.txt", "c-validation-00000-of-00001"):
    (directory / name).write_text("not a shard")
  pattern = pipeline.CorpusSpec("c", "image_text").split_pattern(str(tmp_path), "train")
  assert sources.shard_files(pattern) == sorted(shards)
  assert sources.shard_files(pattern, corpus="other") == []
  assert pipeline.corpus_files(pipeline.CorpusSpec("c", "image_text"), str(tmp_path)) == {
      "train": sorted(shards), "validation": [str(directory / "c-validation-00000-of-00001")]}


def test_hosts_get_whole_files_balanced_by_records():
  files = [f"f{i}" for i in range(5)]
  plans = sources.plan_hosts(files, [10, 1, 1, 9, 1], 2)
  assert [p.records for p in plans] == [11, 11]
  assert sorted(f for p in plans for f in p.files) == files and all(p.record_stride == 1 for p in plans)


def test_hosts_share_records_when_files_are_too_few_or_empty():
  plans = sources.plan_hosts(["a", "b"], [5, 0], 2)  # whole files would leave host 1 an empty file
  assert [(p.files, p.record_offset, p.record_stride, p.records) for p in plans] == [
      (("a", "b"), 0, 2, 3), (("a", "b"), 1, 2, 2)]
  plans = sources.plan_hosts(["a"], [3], 4)
  assert [p.records for p in plans] == [1, 1, 1, 0]
  with pytest.raises(sources.HostShareError) as e:
    sources.check_plans("mls", "validation", ["a"], [3], plans)
  assert "'mls'" in str(e.value) and "'validation'" in str(e.value) and "[3] of 4" in str(e.value)
  assert "a (3 records)" in str(e.value)


@pytest.mark.parametrize("num_shards, records", [(1, 7), (3, 7), (2, 1)])
def test_every_record_read_by_exactly_one_host(tmp_path, num_shards, records):
  spm = train_llama_like_sentencepiece(list(synthetic_corpus.TEXT_SAMPLES) * 2, str(tmp_path / "spm" / "m"), 300)
  synthetic_corpus.write_corpus(str(tmp_path), "c", "image_text", records, num_shards=num_shards)
  (tmp_path / "c" / f"c-train-00000-of-{num_shards:05d}.rejects.jsonl").write_text("")  # the job always writes it
  pipeline.register_corpora(str(tmp_path), spm, [("c", "image_text")])
  task = seqio.get_mixture_or_task("c")
  hosts = 2

  def ids(index):
    ds = task.source.get_dataset("train", shuffle=True, seed=3, shard_info=seqio.ShardInfo(index, hosts))
    return [preprocessors.parse_record(ex)["id"].numpy() for ex in ds]

  if records < hosts:
    with pytest.raises(sources.HostShareError, match="'c'"):
      ids(1)
    return
  seen = [ids(h) for h in range(hosts)]
  assert all(seen) and sorted(np.concatenate(seen).tolist()) == sorted(
      f"c/{i:08d}".encode() for i in range(records))
