"""Orbax checkpoints of a run: contents, retention, data iterator state, restore onto another mesh."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec

from anygpt_jax import partitioning
from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.training.optimizer import make_optimizer
from anygpt_jax.training.train_state import TrainState, abstract_train_state, train_state_shardings
from anygpt_jax.vocabulary.layout import VocabularyLayout

LAYOUT = VocabularyLayout(text_vocab_size=100)


class TfIterator:
  """A real tf.data iterator with the checkpoint protocol (tf.train.Checkpoint, as the pipeline does)."""

  def __init__(self, start=0):
    self.iterator = iter(tf.data.Dataset.range(start, 10**6).shuffle(64, seed=1).batch(4).prefetch(2))

  def __next__(self):
    return next(self.iterator).numpy().tolist()

  def save_state(self, path):
    tf.train.Checkpoint(iterator=self.iterator).write(path)

  def restore_state(self, path):
    tf.train.Checkpoint(iterator=self.iterator).read(path).assert_consumed()


@pytest.fixture(scope="module")
def saved_state():
  """(state, abstract target, shardings) on a data x fsdp mesh, built once for the module."""
  return _state_on({"data": -1, "fsdp": 2})


def _state_on(mesh_axes):
  config = get_config("tiny").with_vocabulary(LAYOUT)
  model = Transformer(config)
  mesh = partitioning.create_mesh(mesh_axes)
  rules = partitioning.logical_axis_rules()
  params, param_shardings = partitioning.init_params(model, jax.random.key(1), mesh, rules, (1, 8))
  tx = make_optimizer(learning_rate=1e-3)
  params_abstract = jax.eval_shape(lambda: params)
  shardings = train_state_shardings(tx, params_abstract, param_shardings, mesh)
  state = TrainState.create(params, jax.jit(tx.init, out_shardings=shardings.opt_state)(params))
  # Make the optimizer moments non-trivial so a wrong restore would show.
  state = state.replace(opt_state=jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x, state.opt_state),
                        step=jnp.asarray(7, jnp.int32))
  return jax.device_put(state, shardings), abstract_train_state(tx, params_abstract, shardings), shardings


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


def test_save_holds_state_iterator_config_and_layout_and_restores_exactly(tmp_path, saved_state):
  state, abstract, _ = saved_state
  iterator = TfIterator()
  [next(iterator) for _ in range(3)]
  checkpoints = Checkpoints(str(tmp_path), CheckpointConfig(save_every_steps=10, async_save=True))
  assert checkpoints.save(7, state, {0: iterator}, "train.seed = 3", LAYOUT, force=True)
  expected_next = [next(iterator) for _ in range(2)]  # the iterator moves on after the save
  checkpoints.wait_until_finished()

  step_dir = tmp_path / "checkpoints" / "7"
  assert {p.name for p in step_dir.iterdir()} >= {"state", "data", "config", "layout"}
  assert (step_dir / "data" / "shard_00000.index").exists()

  fresh = TfIterator()
  restored = Checkpoints(str(tmp_path)).restore(abstract, {0: fresh})
  assert restored.step == 7
  _assert_trees_equal(restored.state, state)
  assert restored.operative_gin == "train.seed = 3"
  assert restored.layout == LAYOUT
  assert [next(fresh) for _ in range(2)] == expected_next


def test_restore_onto_a_different_mesh(tmp_path, saved_state):
  state, _, _ = saved_state
  checkpoints = Checkpoints(str(tmp_path), CheckpointConfig(async_save=False))
  checkpoints.save(7, state, None, "", LAYOUT, force=True)
  checkpoints.wait_until_finished()
  # Another mesh: tensor parallel x fsdp over 4 of the devices, a different device order too.
  devices = jax.devices()[::-1][:4]
  config = get_config("tiny").with_vocabulary(LAYOUT)
  model = Transformer(config)
  mesh = partitioning.create_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=devices)
  rules = partitioning.logical_axis_rules()
  with partitioning.use_mesh(mesh, rules):
    boxed = partitioning.abstract_params(model, (1, 8))
    param_shardings = partitioning.logical_to_sharding(boxed, mesh, rules)
  import flax.linen as nn
  params_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
  tx = make_optimizer(learning_rate=1e-3)
  shardings = train_state_shardings(tx, params_abstract, param_shardings, mesh)
  restored = Checkpoints(str(tmp_path)).restore(abstract_train_state(tx, params_abstract, shardings))
  _assert_trees_equal(restored.state, state)
  head = restored.state.params["lm_head"]["kernel"]
  assert head.sharding.mesh.shape == {"data": 1, "fsdp": 2, "tensor": 2}
  assert set(head.sharding.device_set) == set(devices)
  assert head.sharding.is_equivalent_to(shardings.params["lm_head"]["kernel"], head.ndim)


def test_keeps_the_last_k_and_every_mth(tmp_path, saved_state):
  state, _, _ = saved_state
  checkpoints = Checkpoints(str(tmp_path), CheckpointConfig(save_every_steps=2, keep_last=2, keep_every=4,
                                                            async_save=True))
  saved = [step for step in range(1, 13) if checkpoints.save(step, state, None, "", LAYOUT)]
  checkpoints.wait_until_finished()
  assert saved == [2, 4, 6, 8, 10, 12]
  assert checkpoints.all_steps() == [4, 8, 10, 12]
  assert Checkpoints(str(tmp_path)).latest_step() == 12


def test_a_partial_save_is_ignored_and_the_previous_step_restores(tmp_path, saved_state):
  """What a kill during a save leaves: an uncommitted temporary step directory."""
  state, abstract, _ = saved_state
  checkpoints = Checkpoints(str(tmp_path), CheckpointConfig(async_save=False))
  checkpoints.save(5, state, None, "", LAYOUT, force=True)
  checkpoints.wait_until_finished()
  checkpoints.close()
  partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\0" * 10)
  reopened = Checkpoints(str(tmp_path))
  assert reopened.latest_step() == 5
  _assert_trees_equal(reopened.restore(abstract).state, state)
  assert not partial.exists()  # cleaned up on start


def test_restore_params_only(tmp_path, saved_state):
  state, abstract, _ = saved_state
  checkpoints = Checkpoints(str(tmp_path), CheckpointConfig(async_save=False))
  checkpoints.save(3, state, None, "", LAYOUT, force=True)
  checkpoints.wait_until_finished()
  replicated = NamedSharding(partitioning.create_mesh({"data": -1}), PartitionSpec())
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract.params)
  params = Checkpoints(str(tmp_path)).restore_params(target)
  _assert_trees_equal(params, state.params)
  assert params["norm"]["scale"].sharding.is_fully_replicated


def test_missing_checkpoint_and_missing_iterator_shard_are_clear_errors(tmp_path, saved_state):
  state, abstract, _ = saved_state
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    Checkpoints(str(tmp_path / "empty")).restore(abstract)
  checkpoints = Checkpoints(str(tmp_path), CheckpointConfig(async_save=False))
  checkpoints.save(1, state, {0: TfIterator()}, "", LAYOUT, force=True)
  checkpoints.wait_until_finished()
  with pytest.raises(FileNotFoundError, match="input shard 1"):
    Checkpoints(str(tmp_path)).restore(abstract, {1: TfIterator()})


# --- a damaged or foreign run directory, through the real trainer -----------------------------------
def _train(run_file, model_dir, *flags):
  import gin
  from tools import train as train_cli
  gin.clear_config()
  try:
    return train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR={model_dir}", *flags])
  finally:
    gin.clear_config()


def _losses(model_dir):
  from test_train_cli import losses_by_step
  return losses_by_step((model_dir / "tensorboard" / "metrics.jsonl").read_text())


def test_damaged_latest_checkpoints_fall_back_and_a_foreign_model_is_refused(tmp_path, capsys):
  """A truncated array file or a deleted `_METADATA` in the latest step: one line naming the step,
  file and cause, the step moved aside (not deleted), the run resumed from the step before with the
  losses the steps had before. Another model's shapes are not damage: refused, nothing moved."""
  import shutil
  from test_train_cli import run_gin_text, write_run_inputs

  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  # One compilation cache for every run of the test: each restart compiles nothing.
  run_file.write_text(run_gin_text(inputs, steps=6, extra="CheckpointConfig.keep_last = 5\n"
                                   f"train.compilation_cache_dir = '{tmp_path / 'cache'}'\n"))
  first = tmp_path / "first"
  assert _train(run_file, first, "--gin.train.stop_after_steps=4") == 0
  capsys.readouterr()

  def truncate_largest_array(step_dir):
    arrays = sorted((step_dir / "state").rglob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
    with open(arrays[-1], "r+b") as f:
      f.truncate(1000)
    return "OUT_OF_RANGE: Error reading"

  def delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()
    return "_METADATA"

  for damage in (truncate_largest_array, delete_metadata):
    run = tmp_path / damage.__name__
    shutil.copytree(first, run)
    cause = damage(run / "checkpoints" / "4")
    assert _train(run_file, run) == 0
    out = capsys.readouterr().out
    line, = [l for l in out.splitlines() if "does not restore" in l]
    assert "checkpoint step 4" in line and cause in line and str(run / "checkpoints") in line
    assert "moved aside to 4.unrestorable" in line and "resumed from step 2" in out
    assert (run / "checkpoints" / "4.unrestorable" / "state").is_dir()
    losses = _losses(run)
    for step in (3, 4):  # run again after the fall back: the losses they had before, bit for bit
      assert losses[step][-1] == losses[step][0] == _losses(first)[step][0], (damage.__name__, step)
    assert sorted(losses) == list(range(1, 7))

  foreign = tmp_path / "foreign"
  shutil.copytree(first, foreign)
  (foreign / "run_record.json").unlink()  # a run directory from before run records: the shapes tell
  assert _train(run_file, foreign, "--gin.model_config.overrides={'intermediate_size': 96}") == 1
  error = capsys.readouterr().err.strip().splitlines()[-1]  # one paragraph, no traceback
  assert error.startswith("anygpt-train: CheckpointMismatchError: ") and str(foreign) in error
  assert "params['layers']['mlp']['up_proj']['kernel']: stored (2, 64, 128), this configuration (2, 64, 96)" in error
  assert sorted(p.name for p in (foreign / "checkpoints").iterdir()) == ["2", "4"]


def test_a_failed_save_stops_the_run_naming_the_path_and_the_cause(tmp_path, capsys):
  """A run directory on a 24 MB tmpfs: step 2's checkpoint (18 MB) fits, step 4's does not. The run
  stops once that save has failed, before its next save, with one line naming the step's path and
  'No space left on device'; with room again the same command resumes from step 2."""
  import subprocess
  from test_train_cli import run_gin_text, write_run_inputs

  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=10, extra=f"train.compilation_cache_dir = '{tmp_path / 'cache'}'\n"))
  disk = tmp_path / "disk"
  disk.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
  try:
    run = disk / "run"
    assert _train(run_file, run) == 1
    captured = capsys.readouterr()
    assert "warning: 24 MiB free" in captured.out and "less than two checkpoints" in captured.out
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith(f"anygpt-train: CheckpointSaveError: saving step 4 to {run / 'checkpoints' / '4'} failed")
    assert "No space left on device" in error and "latest complete checkpoint is step 2" in error
    logged = max(_losses(run))
    assert logged < 6, f"the run went on to step {logged}, past its next save"
    subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
    assert _train(run_file, run, "--gin.train.stop_after_steps=6") == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4", "6"]
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)
