"""Ahead-of-time compilation of the real train step for TPU topologies (needs libtpu: `make install`).

These tests fail, not skip, without libtpu: the TPU compile path is part of what CI proves.
"""

import json

import gin
import pytest

from anygpt_jax.training import aot
from tools import compile as compile_cli

TINY_SPLASH = ["--gin_file=gin/runs/demo.gin", "--gin.model_config.name=tiny",
               "--gin.model_config.overrides={'attention': 'splash', 'remat_policy': 'full'}",
               "--gin.loss_tiling.chunk_length=96", "--gin.BATCH_SIZE=8",
               "--gin.TASK_FEATURE_LENGTHS={'targets': 256}", "--gin.train.mesh_axes={'data': 2, 'fsdp': 2}"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_libtpu_describes_a_v5p_topology():
  chip, devices = aot.topology_devices("v5p:2x2x1")
  assert (chip.name, len(devices), devices[0].platform) == ("v5p", 4, "tpu")


def test_compile_tiny_splash_tiled_loss_for_v5p(tmp_path, capsys):
  out = tmp_path / "compile"
  assert compile_cli.main(TINY_SPLASH + ["--topology", "v5p:2x2x1", "--output_dir", str(out)]) == 0
  printed = capsys.readouterr().out
  report = json.loads((out / "report.json").read_text())
  hlo = (out / "train_step.hlo.txt").read_text()
  # The splash kernels are real TPU custom calls in the optimised step (forward and both backward).
  for kernel in ("fwd", "dq", "dkv"):
    assert f"_{kernel}_segmented" in hlo
  assert report["model"]["attention"] == "splash" and report["loss_chunk_length"] == 96
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert (report["devices"], report["chip"], report["hbm_bytes_per_device"]) == (4, "v5p", 95 * 2 ** 30)
  memory = report["memory"]
  assert 0 < memory["state_bytes"] <= memory["argument_bytes"] and memory["temp_bytes"] > 0
  assert memory["total_bytes"] >= memory["argument_bytes"] + memory["temp_bytes"] - memory["alias_bytes"]
  assert report["fits"] and 0 < report["hbm_headroom"] < 1
  # The kernels' matmuls were added to XLA's cost (it sees a Pallas call as free).
  assert report["estimated_cost"]["flops"] > report["raw_cost"]["flops"]
  assert 0 < report["estimated_mfu"] < 1
  assert f"{100 * report['estimated_mfu']:.1f} %" in printed
  assert "not needed to compile, left unset: MODEL_DIR, SENTENCEPIECE_MODEL" in printed


@pytest.mark.slow  # three extra compiles (about 40 s); a check of the estimate, run by make test-slow
def test_scanned_cost_extrapolation_matches_an_unrolled_compile(tmp_path):
  """The estimate from 1- and 2-layer compiles equals a 4-layer unrolled compile's own cost."""
  compile_cli.parse_gin_for_compile(["gin/runs/demo.gin"], [
      "model_config.name = 'tiny'", "BATCH_SIZE = 8", "TASK_FEATURE_LENGTHS = {'targets': 128}",
      "train.mesh_axes = {'data': 4}",
      # Wide enough that the layers, not the 49536-row head, are most of the step.
      "model_config.overrides = {'num_layers': 4, 'hidden_size': 256, 'intermediate_size': 1024}"])
  spec = compile_cli.spec_from_gin()
  _, devices = aot.topology_devices("v5p:2x2x1")
  estimate = aot.estimate_step_cost(spec, devices, aot.peak_flops_per_device("v5p:2x2x1", devices))
  unrolled = aot.raw_cost(aot.compile_train_step(spec.replace(model=spec.model.replace(scan_layers=False)), devices))
  scanned = aot.raw_cost(aot.compile_train_step(spec, devices))
  assert estimate["flops"] == pytest.approx(unrolled["flops"], rel=0.02)
  # Times: fusion differs a little between 1, 2 and 4 unrolled layers (measured 9 % high here).
  assert estimate["optimal_seconds"] == pytest.approx(unrolled["optimal_seconds"], rel=0.15)
  # What the correction is for: the scanned step's own count sees one layer's body only, so it
  # counts what a 1-layer step counts, 3 layers short of the 4-layer one.
  assert scanned["flops"] == pytest.approx(estimate["one_layer_step"]["flops"], rel=0.05)
  assert unrolled["flops"] - scanned["flops"] == pytest.approx(3 * estimate["per_layer"]["flops"], rel=0.1)


def test_a_step_that_does_not_fit_exits_1_naming_the_levers(tmp_path, capsys):
  # Full fp32 logits over AnyGPT's 49536 rows, 16 rows x 4096 per v5e chip (16 GiB): ~13 GB of logits.
  args = ["--gin_file=gin/runs/demo.gin", "--gin.model_config.name=tiny", "--gin.BATCH_SIZE=64",
          "--gin.TASK_FEATURE_LENGTHS={'targets': 4096}", "--gin.train.mesh_axes={'data': 4}",
          "--topology", "v5e:2x2", "--output_dir", str(tmp_path), "--no_cost"]
  assert compile_cli.main(args) == 1
  printed = capsys.readouterr().out
  assert "DOES NOT FIT" in printed and "train.num_microbatches" in printed and "loss_tiling.chunk_length" in printed
  report = json.loads((tmp_path / "report.json").read_text())
  assert not report["fits"] and report["memory"]["total_bytes"] > 16 * 2 ** 30


def test_the_7b_pretraining_command_needs_no_paths():
  """The README's exact command parses to the paper's step without MODEL_DIR, tokenizer or weights."""
  unset = compile_cli.parse_gin_for_compile(["gin/runs/pretrain_llama2_7b.gin", "gin/mesh/tpu_v5p_pod.gin"], [])
  spec = compile_cli.spec_from_gin()
  assert {"MODEL_DIR", "SENTENCEPIECE_MODEL", "LLAMA2_DIR"} <= set(unset)
  assert (spec.batch_size, spec.sequence_length) == (480, 4500)
  assert spec.layout.text_vocab_size == 32000 and spec.config.vocab_size == 49536
  assert spec.config.num_layers == 32 and spec.mesh_axes["fsdp"] == 32


def test_unknown_topology_is_named():
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    aot.topology_devices("v9:2x2")


@pytest.mark.parametrize("files, topology, chips", [
    (["gin/runs/pretrain_llama2_7b.gin", "gin/mesh/tpu_v5p_pod.gin"], "v5p:4x4x2", 32),
    (["gin/runs/continue.gin", "gin/mesh/tpu_v5p_pod.gin"], "v5p:4x4x2", 32),
    (["gin/runs/sft_anyinstruct.gin", "gin/mesh/tpu_v5p_pod.gin"], "v5p:4x4x2", 32),
    (["gin/runs/pretrain_llama2_7b.gin", "gin/mesh/tpu_v5p_128_llama2_13b.gin"], "v5p:4x4x4", 64),
    (["gin/runs/pretrain_llama2_7b.gin", "gin/mesh/tpu_v5p_256_llama2_70b.gin"], "v5p:4x4x8", 128),
])
def test_every_shipped_run_divides_over_its_mesh(files, topology, chips):
  """Shapes only (the memory of each is in README "Pod scale"): mesh = slice, rows divide, splash on TPU."""
  from anygpt_jax import partitioning
  compile_cli.parse_gin_for_compile(files, [])
  spec = compile_cli.spec_from_gin()
  _, devices = aot.topology_devices(topology)
  assert len(devices) == chips
  sizes = partitioning.resolve_mesh_shape(spec.mesh_axes, chips)
  assert spec.batch_size % (sizes["data"] * sizes["fsdp"] * spec.num_microbatches) == 0
  assert spec.config.attention == "splash" and spec.loss_chunk_length > 0
  assert spec.config.num_heads % sizes["tensor"] == 0 and spec.config.num_kv_heads % sizes["tensor"] == 0


@pytest.mark.slow
def test_readme_7b_pretraining_command_fits_with_headroom(tmp_path):
  """The README's command as a user types it (minutes: the real 7B step for 32 chips, 3 compiles)."""
  import os
  import subprocess
  import sys
  tool = os.path.join(os.path.dirname(sys.executable), "anygpt-compile")
  run = subprocess.run([tool, "--gin_file=gin/runs/pretrain_llama2_7b.gin", "--gin_file=gin/mesh/tpu_v5p_pod.gin",
                        "--topology", "v5p:4x4x2", "--output_dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=3600)
  assert run.returncode == 0, run.stdout + run.stderr
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["fits"] and report["hbm_headroom"] >= 0.10
  assert "estimated MFU" in run.stdout
