"""The training loop's guarantees the README states, at a size the fast suite affords:

- a run stopped after a save and started again with the same command restores the parameters,
  optimizer and data position and reaches the same losses, bit for bit (the real `anygpt-train`
  in this process; the SIGKILL variants are the slow tests of test_training_resume.py);
- the evaluator on 2 hosts' worth of shards: each host reads its own validation file, and the two
  hosts together evaluate every held-out record exactly once (the hosts are the evaluator's
  `jax.process_index()`/`process_count()`, set per host; the real 2-process run with
  `jax.distributed` is the slow tests/test_distributed_data.py; `Evaluator.evaluate` itself runs in
  test_train_cli.py's short run).
"""

import shutil

import gin
import jax
import numpy as np
import pytest

from test_train_cli import losses_by_step, run_gin_text, write_run_inputs
from tools import train as train_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  directory = tmp_path_factory.mktemp("guarantees")
  inputs = write_run_inputs(directory, records=48)
  inputs["dir"] = directory
  return inputs


def test_stop_and_restore_gives_the_same_losses_bit_for_bit(inputs, capsys):
  run_file = inputs["dir"] / "resume.gin"
  run_file.write_text(run_gin_text(inputs, steps=3, extra="CheckpointConfig.save_every_steps = 1\n"))
  model_dir = inputs["dir"] / "resume"
  command = [f"--gin_file={run_file}", f"--gin.MODEL_DIR={model_dir}"]
  try:
    gin.clear_config()
    assert train_cli.main(command) == 0
    # As if the first run had stopped right after its step-1 save: the later checkpoints are gone.
    for step in (2, 3):
      shutil.rmtree(model_dir / "checkpoints" / str(step))
    gin.clear_config()
    assert train_cli.main(command) == 0
  finally:
    gin.clear_config()
  assert f"resumed from step 1 of {model_dir}" in capsys.readouterr().out
  losses = losses_by_step((model_dir / "tensorboard" / "metrics.jsonl").read_text())
  assert [len(losses[s]) for s in (1, 2, 3)] == [1, 2, 2]  # steps 2 and 3 ran in both sessions
  for step in (2, 3):
    assert losses[step][0] == losses[step][1], (step, losses[step])
  assert len({losses[1][0], losses[2][0], losses[3][0]}) == 3  # the steps saw different data and weights


def _images(batches, layout) -> list[tuple]:
  """The image code spans of the rows' targets: one per held-out record (an image-text pair)."""
  image = layout.modality("image")
  out = []
  for batch in batches:
    for row in batch["decoder_target_tokens"]:
      starts = np.flatnonzero(row == image.start_id)
      ends = np.flatnonzero(row == image.end_id)
      out += [tuple(row[a + 1:b]) for a, b in zip(starts, ends)]
  return out


def test_evaluator_on_two_hosts_shards_reads_every_record_once(inputs, monkeypatch):
  from anygpt_jax.data import pipeline
  from anygpt_jax.testing import synthetic_corpus
  from anygpt_jax.training import evaluation

  data_dir = inputs["dir"] / "eval_shards"
  synthetic_corpus.write_corpus(str(data_dir), "heldout", "image_text", 8, split="train", seed=3)
  synthetic_corpus.write_corpus(str(data_dir), "heldout", "image_text", 14, split="validation", num_shards=2, seed=4)
  rng = np.random.default_rng(4)  # the records write_corpus drew, in order
  written = [tuple(s.parts[0].codes) for s in (synthetic_corpus.make_sample("image_text", i, rng, "heldout")
                                               for i in range(14))]
  layout = pipeline.register_corpora(str(data_dir), inputs["spm"], [("heldout", "image_text")],
                                     shuffle_buffer_size=8).vocabulary.layout
  evaluator = evaluation.Evaluator(["heldout"], {"targets": 256}, batch_size=4, num_batches=None)

  hosts = []
  for index in range(2):  # what each of 2 processes reads: its half of each batch, from its own file
    monkeypatch.setattr(evaluation.jax, "process_count", lambda: 2)
    monkeypatch.setattr(evaluation.jax, "process_index", lambda index=index: index)
    hosts.append(evaluator._local_batches("heldout"))
    monkeypatch.undo()
  assert all(b["decoder_target_tokens"].shape == (2, 256) for host in hosts for b in host)
  first, second = _images(hosts[0], layout), _images(hosts[1], layout)
  assert first and second and not set(first) & set(second)
  first_code = layout.modality("image").first_code_id
  local = sorted(tuple(int(c) - first_code for c in codes) for codes in first + second)
  assert local == sorted(written)  # every held-out record once, on one host or the other

  # A bounded evaluator reads its fixed batches once: later evaluations reuse them, not the pipeline.
  bounded = evaluation.Evaluator(["heldout"], {"targets": 256}, batch_size=4, num_batches=2)
  reads = []
  read = pipeline.get_dataset
  monkeypatch.setattr(pipeline, "get_dataset", lambda *a, **k: reads.append(a) or read(*a, **k))
  once = bounded._local_batches("heldout")
  assert len(once) == 2 and bounded._local_batches("heldout") is once and len(reads) == 1
