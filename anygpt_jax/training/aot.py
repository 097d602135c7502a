"""Ahead-of-time compilation of the train step for a TPU topology, on any machine.

With `libtpu` installed (`pip install -e .[tpu]`), `jax.experimental.topologies` describes the
devices of a TPU slice without owning one. The project's own `Trainer.train_step` is lowered
with abstract, sharded arguments over a mesh of those devices and compiled by XLA's TPU
compiler; nothing is allocated, no data or weights are read. The compiled executable tells:
- `memory_analysis()`: per chip, the arguments (train state + batch), outputs (aliased to the
  donated state), and temporaries (activations kept for the backward pass, gradients, ...).
- `cost_analysis()`: XLA's TPU cost model: `flops`, `bytes accessed` and `optimal_seconds`.

Cost of loops: XLA's cost analysis counts the body of a while loop once. The layers under
`nn.scan` and the microbatches under `lax.scan` are such loops, so the step's own figures are
not the step's cost. The step cost is therefore taken from two more compiles of the same step
with 1 and 2 *unrolled* layers and one microbatch of B/M rows: a layer costs c2 - c1, L layers
cost c1 + (L - 1)(c2 - c1), and M microbatches M times that (the optimizer update, a few
elementwise passes over the state shards, is then counted M times: a slight overestimate).
`tests/test_aot.py` checks the extrapolation against a directly compiled unrolled model.

Two more things XLA's count misses: Pallas kernels (splash attention) are opaque custom calls,
whose matmuls `splash_kernel_flops` adds from the kernel calls in the HLO; and the loops XLA makes
itself (collective matmuls of FSDP-sharded weights, the tiled loss's chunks), whose bodies are also
counted once. For the latter `estimated_step_seconds` adds the FLOPs the step must execute
(`required_flops_per_device`) beyond those XLA counted, timed at the chip's peak (the roofline XLA
applies to its own matmuls). README "Pod scale" calibrates the result against a configuration
whose MFU MaxText measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anygpt_jax import hardware
from anygpt_jax import partitioning
from anygpt_jax.model import ModelConfig
from anygpt_jax.model import splash_attention as splash_lib
from anygpt_jax.training.assembly import build_trainer
from anygpt_jax.training.train_state import abstract_train_state
from anygpt_jax.data.features import BATCH_FEATURES
from anygpt_jax.vocabulary.layout import VocabularyLayout


class TopologyError(RuntimeError):
  """No TPU topology could be described (libtpu missing or an unknown topology name)."""


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything the train step's shape and sharding depend on (what `train()` builds from gin).

  Attributes:
    model: the model configuration, vocabulary not yet applied.
    layout: the vocabulary layout (gives the padded vocabulary rows).
    batch_size, sequence_length: the global batch, [batch_size, sequence_length] tokens.
    num_microbatches, z_loss: as `train.num_microbatches` / `train.z_loss`.
    loss_chunk_length: as `loss_tiling.chunk_length` (0: full logits).
    mesh_axes: mesh sizes ({'data': -1, 'fsdp': 32, 'tensor': 1}); None: all on 'data'.
    rules: the logical axis rules.
    optimizer, learning_rate: the run's optax transformation and schedule.
  """

  model: ModelConfig
  layout: VocabularyLayout
  batch_size: int
  sequence_length: int
  num_microbatches: int
  z_loss: float
  loss_chunk_length: int
  mesh_axes: Mapping[str, int] | None
  rules: partitioning.LogicalRules
  optimizer: optax.GradientTransformation
  learning_rate: Any

  @property
  def config(self) -> ModelConfig:
    return self.model.with_vocabulary(self.layout)

  def replace(self, **changes) -> "StepSpec":
    return dataclasses.replace(self, **changes)


def topology_devices(topology: str) -> tuple[hardware.TpuChip, list[Any]]:
  """The chip and the abstract devices of a TPU topology such as 'v5p:4x4x2'.

  Raises TopologyError saying how to install libtpu when JAX cannot describe TPUs.
  """
  chip = hardware.tpu_chip(topology)
  # libtpu takes a machine-wide lock file (/tmp/libtpu_lockfile) for the TPU it expects to own;
  # compiling for abstract devices owns none, so several processes (tests, helpers, CI jobs) may
  # compile at once. It is read when libtpu loads, on the first TPU request of the process.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  except Exception as e:  # noqa: BLE001  (libtpu missing: RuntimeError/ValueError depending on the version)
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
      raise TopologyError(f"cannot describe TPU topology {topology!r}: libtpu is not installed. Install the "
                          f"'tpu' extra: pip install -e .[tpu] (or make install)") from e
    raise TopologyError(f"cannot describe TPU topology {topology!r}: {e}") from e
  return chip, list(devices)


def _chips(topology: str, devices: list[Any]) -> int:
  """Chips of the topology: the product of its dimensions (v4 shows two devices per chip)."""
  dims = topology.split(":", 1)[1] if ":" in topology else ""
  return math.prod(int(d) for d in dims.split("x")) if dims else len(devices)


def _devices_per_chip(topology: str, devices: list[Any]) -> int:
  return max(1, len(devices) // _chips(topology, devices))


def peak_flops_per_device(topology: str, devices: list[Any]) -> float:
  """The chip's bf16 peak divided among the devices JAX shows per chip."""
  return hardware.tpu_chip(topology).peak_flops / _devices_per_chip(topology, devices)


# XLA's TPU compiler refuses a step whose temporaries exceed HBM: "... HLO temporaries (161.16G) ...".
_NEEDED_BYTES = re.compile(r"HLO temporaries \(([0-9.]+)G\)")


class DoesNotFit(RuntimeError):
  """XLA refused to compile: the step's temporaries alone exceed a device's HBM."""

  def __init__(self, temp_bytes: float, state_bytes: int, message: str):
    super().__init__(message)
    self.temp_bytes = temp_bytes
    self.state_bytes = state_bytes


@dataclasses.dataclass
class CompiledStep:
  """A compiled train step and what it was compiled for."""

  compiled: Any
  spec: StepSpec
  mesh: jax.sharding.Mesh
  state_bytes: int
  batch_bytes: int


def _per_device_bytes(abstract: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying NamedShardings."""
  total = 0
  for leaf in jax.tree.leaves(abstract):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
  return total


def compile_train_step(spec: StepSpec, devices: list[Any]) -> CompiledStep:
  """Lowers and compiles `Trainer.train_step` for `devices` with abstract sharded arguments.

  The Trainer is built by `assembly.build_trainer`, as `anygpt_jax.training.loop.train` builds it.
  """
  mesh = partitioning.create_mesh(spec.mesh_axes or {"data": -1}, devices=devices)
  built = build_trainer(spec.config, spec.layout, spec.optimizer, spec.learning_rate, mesh, tuple(spec.rules),
                        batch_size=spec.batch_size, sequence_length=spec.sequence_length,
                        num_microbatches=spec.num_microbatches, z_loss=spec.z_loss,
                        loss_chunk_length=spec.loss_chunk_length)
  trainer, state_shardings, batch_sharding = built.trainer, built.state_shardings, built.trainer.batch_sharding
  state = abstract_train_state(spec.optimizer, built.params_abstract, state_shardings)
  batch = {k: jax.ShapeDtypeStruct((spec.batch_size, spec.sequence_length), jnp.int32, sharding=batch_sharding)
           for k in BATCH_FEATURES}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jitted = jax.jit(trainer.train_step, in_shardings=(state_shardings, {k: batch_sharding for k in BATCH_FEATURES}),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  with trainer.mesh_context():
    lowered = jitted.lower(state, batch)
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      needed = _NEEDED_BYTES.search(str(e))
      if "RESOURCE_EXHAUSTED" not in str(e) or needed is None:
        raise
      raise DoesNotFit(float(needed.group(1)) * 1024 ** 3, _per_device_bytes(state), str(e)) from e
  return CompiledStep(compiled, spec, mesh, _per_device_bytes(state), _per_device_bytes(batch))


def memory_report(step: CompiledStep) -> dict[str, int]:
  """Per-device bytes: state (params + optimizer), batch, temporaries, and the total."""
  mem = step.compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  return {"state_bytes": step.state_bytes, "batch_bytes": step.batch_bytes,
          "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
          "alias_bytes": int(mem.alias_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
          "code_bytes": int(mem.generated_code_size_in_bytes), "total_bytes": int(total)}


COST_KEYS = ("flops", "bytes accessed", "optimal_seconds")


def raw_cost(step: CompiledStep) -> dict[str, float]:
  """XLA's cost analysis of the compiled step as it is (loop bodies counted once)."""
  cost = step.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {k: float(cost.get(k, math.nan)) for k in COST_KEYS}


_SPLASH_CALL = re.compile(r"^\s*%?splash_\w*?_(fwd|dq|dkv)_\S* = .*custom_call_target=\"tpu_custom_call\"", re.M)
# Matmuls of one splash kernel call, in units of one [L, L] x [L, d] product: forward QK^T and PV;
# the dq kernel recomputes QK^T and does dO V^T and dS K; the dkv kernel QK^T, dO V^T, P^T dO, dS^T Q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


def splash_kernel_flops(step: CompiledStep, peak_flops: float) -> dict[str, float]:
  """FLOPs and roofline seconds per device of the splash kernels in `step` (Pallas custom calls).

  XLA's cost model sees a Pallas kernel as an opaque custom call (no FLOPs, no time), so the
  kernels' matmuls are counted from the kernel calls in the optimised HLO, with the blocks the
  causal mask skips left out, and timed at the chip's peak: the same optimistic roofline XLA's
  model applies to its own matmuls.
  """
  calls = _SPLASH_CALL.findall(step.compiled.as_text())
  if not calls:
    return {"flops": 0.0, "optimal_seconds": 0.0, "calls": {}}
  config, mesh = step.spec.config, step.mesh
  rows = step.spec.batch_size // step.spec.num_microbatches // (mesh.shape["data"] * mesh.shape["fsdp"])
  heads = config.num_heads // mesh.shape["tensor"] if config.num_heads % mesh.shape["tensor"] == 0 else config.num_heads
  length = splash_lib.padded_length(step.spec.sequence_length)
  blocks = length // splash_lib.block_size(length)
  causal_fraction = (blocks + 1) / (2 * blocks)
  unit = 2.0 * length * length * config.resolved_head_dim * rows * heads * causal_fraction
  counts = {kind: calls.count(kind) for kind in _SPLASH_MATMULS}
  flops = unit * sum(_SPLASH_MATMULS[kind] * n for kind, n in counts.items())
  return {"flops": flops, "optimal_seconds": flops / peak_flops, "calls": counts}


def estimate_step_cost(spec: StepSpec, devices: list[Any], peak_flops: float) -> dict[str, Any]:
  """The whole step's cost, loops counted: from 1- and 2-layer unrolled compiles (module doc).

  Splash attention kernels, which XLA's cost model does not see, are added by
  `splash_kernel_flops` (per-device `peak_flops` for their time).
  """
  micro = spec.replace(batch_size=spec.batch_size // spec.num_microbatches, num_microbatches=1)
  costs = []
  for layers in (1, 2):
    small = micro.replace(model=micro.model.replace(num_layers=layers, scan_layers=False))
    step = compile_train_step(small, devices)
    cost = raw_cost(step)
    kernels = splash_kernel_flops(step, peak_flops)
    cost["flops"] += kernels["flops"]
    cost["optimal_seconds"] += kernels["optimal_seconds"]
    costs.append(cost)
  c1, c2 = costs
  layers, m = spec.model.num_layers, spec.num_microbatches
  total = {k: m * (c1[k] + (layers - 1) * (c2[k] - c1[k])) for k in COST_KEYS}
  return {**total, "per_layer": {k: c2[k] - c1[k] for k in COST_KEYS}, "one_layer_step": c1,
          "method": f"{m} microbatch(es) x (1-layer step + {layers - 1} x (2-layer step - 1-layer step)), "
                    "unrolled compiles of B/M rows"}


def model_flops_per_step(spec: StepSpec) -> float:
  """Model FLOPs of one step: ModelConfig.flops_per_token (causal attention halved) x tokens."""
  return spec.config.flops_per_token(spec.sequence_length, causal=True) * spec.batch_size * spec.sequence_length


def required_flops_per_device(spec: StepSpec, devices: int) -> float:
  """A lower bound on the FLOPs one device executes per step: the model FLOPs, plus the layers'
  forward pass again under remat 'full' and the output head's forward again under loss tiling."""
  config, tokens = spec.config, spec.batch_size * spec.sequence_length
  head = 6.0 * config.vocab_size * config.hidden_size
  per_token = config.flops_per_token(spec.sequence_length, causal=True)
  extra = 0.0
  if config.remat_policy == "full":
    extra += (per_token - head) / 3
  if spec.loss_chunk_length:
    extra += head / 3
  return (per_token + extra) * tokens / devices


def estimated_step_seconds(cost: Mapping[str, Any], required_flops: float, peak_flops: float) -> float:
  """XLA's modelled step time plus the FLOPs it did not count, timed at the device's peak.

  XLA's cost model counts a while loop's body once. The layer and microbatch loops are taken care
  of by `estimate_step_cost`; what remains uncounted are the later iterations of the
  collective-matmul loops that the SPMD partitioner makes of FSDP matmuls (and the tiled loss's
  loop): matmul work, which the cost model's own roofline times at peak. So the shortfall
  `required_flops - cost['flops']` (per device) is added at `peak_flops`.
  """
  return cost["optimal_seconds"] + max(0.0, required_flops - cost["flops"]) / peak_flops


LEVERS = ("train.num_microbatches (more microbatches: fewer activations at once)",
          "model_config.overrides remat_policy ('full' recomputes each layer; 'none'/'dots' keep more)",
          "model_config.overrides attention='splash' (no [L, L] scores) and loss_tiling.chunk_length (no full "
          "fp32 logits)",
          "the mesh (train.mesh_axes fsdp/tensor sizes) or a bigger slice (--topology)")


def report(topology: str, devices: list[Any], step: CompiledStep | None, cost: dict[str, Any] | None,
           spec: StepSpec | None = None, refused: DoesNotFit | None = None) -> dict[str, Any]:
  """The JSON report: per-device memory against HBM, estimated step time and MFU.

  `refused` (with `spec`, `step` None): XLA refused the step for memory; the report carries the
  temporaries XLA asked for and fits=False.
  """
  chip = hardware.tpu_chip(topology)
  chips = _chips(topology, devices)
  hbm = chip.hbm_bytes // _devices_per_chip(topology, devices)
  peak = peak_flops_per_device(topology, devices)
  spec = step.spec if step is not None else spec
  if step is not None:
    memory, mesh = memory_report(step), dict(step.mesh.shape)
  else:
    memory = {"state_bytes": refused.state_bytes, "temp_bytes": int(refused.temp_bytes),
              "total_bytes": int(refused.state_bytes + refused.temp_bytes), "refused_by_xla": True}
    mesh = partitioning.resolve_mesh_shape(spec.mesh_axes or {"data": -1}, len(devices))
  config = spec.config
  out = {
      "topology": topology, "chip": chip.name, "devices": len(devices), "chips": chips,
      "hbm_bytes_per_device": hbm, "peak_flops_per_device": peak,
      "mesh": mesh,
      "model": {"hidden_size": config.hidden_size, "num_layers": config.num_layers, "num_heads": config.num_heads,
                "num_kv_heads": config.num_kv_heads, "vocab_size": config.vocab_size,
                "attention": config.attention, "remat_policy": config.remat_policy, "dtype": config.dtype,
                "params": config.num_params()},
      "batch_size": spec.batch_size, "sequence_length": spec.sequence_length,
      "num_microbatches": spec.num_microbatches, "loss_chunk_length": spec.loss_chunk_length,
      "memory": memory,
      "fits": memory["total_bytes"] <= hbm,
      "hbm_headroom": 1.0 - memory["total_bytes"] / hbm,
      "raw_cost": raw_cost(step) if step is not None else None,
      "model_flops_per_step": model_flops_per_step(spec),
  }
  if cost is not None:
    model_flops = out["model_flops_per_step"] / len(devices)
    required = required_flops_per_device(spec, len(devices))
    seconds = estimated_step_seconds(cost, required, peak)
    out["estimated_cost"] = cost
    out["counted_flops_fraction"] = cost["flops"] / required
    out["xla_step_seconds"] = cost["optimal_seconds"]
    out["xla_mfu"] = model_flops / (cost["optimal_seconds"] * peak)
    out["estimated_step_seconds"] = seconds
    out["estimated_mfu"] = model_flops / (seconds * peak)
  if not out["fits"]:
    out["levers"] = list(LEVERS)
  return out


def format_report(r: Mapping[str, Any]) -> str:
  """Human-readable lines of `report`."""
  gib = lambda b: f"{b / hardware.GiB:7.2f} GiB"
  m, model = r["memory"], r["model"]
  lines = [
      f"{r['topology']}: {r['devices']} devices, mesh {r['mesh']}; llama {model['num_layers']} layers x "
      f"{model['hidden_size']} ({model['params'] / 1e9:.2f} B params), attention {model['attention']}, remat "
      f"{model['remat_policy']}, loss chunk {r['loss_chunk_length'] or 'none'}",
      f"batch {r['batch_size']} x {r['sequence_length']} in {r['num_microbatches']} microbatch(es)",
      "per device:",
      f"  state (params + optimizer) {gib(m['state_bytes'])}",
      f"  temporaries                {gib(m['temp_bytes'])}"
      + ("   (XLA refused to compile: its temporaries alone exceed HBM)" if m.get("refused_by_xla") else ""),
      f"  total                      {gib(m['total_bytes'])}   of {gib(r['hbm_bytes_per_device'])} HBM "
      f"({100 * r['hbm_headroom']:.1f} % headroom)",
  ]
  if "estimated_step_seconds" in r:
    lines.append(f"XLA cost model: step {r['xla_step_seconds']:.3f} s for the {100 * r['counted_flops_fraction']:.0f} % "
                 f"of the step's FLOPs it counts (MFU {100 * r['xla_mfu']:.1f} %)")
    lines.append(f"estimated step {r['estimated_step_seconds']:.3f} s, estimated MFU {100 * r['estimated_mfu']:.1f} % "
                 f"of {r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per device")
  if not r["fits"]:
    lines.append("DOES NOT FIT. Levers: " + "; ".join(r["levers"]))
  return "\n".join(lines)
