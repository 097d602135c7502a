"""Device mesh and logical-axis sharding.

Every parameter and large activation of the model carries logical axis names ('vocab',
'embed', 'heads', 'activation_batch', ...). Rules map those names to the axes of one
`jax.sharding.Mesh` ('data', 'fsdp', 'tensor'); gin files under `gin/mesh/` choose the mesh
shape and may replace the rules. Parameters are created directly in their shards: the
initialiser is jitted with the rules' output shardings, so no host ever holds a full copy.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from anygpt_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_LOGICAL_AXIS_RULES: LogicalRules = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    # Activations and batches.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


class MeshError(UserError, ValueError):
  """A mesh shape or sharding that does not fit the devices or the arrays."""


@gin.configurable
def logical_axis_rules(rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES) -> LogicalRules:
  """The rules in force; bind `logical_axis_rules.rules` in gin to replace them."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def resolve_mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills the one -1 axis so the mesh uses every device; checks the product.

  Axes missing from `axis_sizes` get size 1. Raises MeshError naming the sizes and the
  device count when they do not fit.
  """
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise MeshError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
  sizes = {axis: int(axis_sizes.get(axis, 1)) for axis in MESH_AXES}
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise MeshError(f"mesh {sizes}: only one axis may be -1, got {fill}")
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise MeshError(f"mesh {sizes}: sizes must be positive or -1")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % fixed:
      raise MeshError(f"mesh {sizes}: the fixed axes multiply to {fixed}, which does not divide "
                      f"the {num_devices} devices")
    sizes[fill[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise MeshError(f"mesh {sizes} needs {fixed} devices but {num_devices} are available")
  return sizes


@gin.configurable
def create_mesh(axis_sizes: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ('data', 'fsdp', 'tensor'); default all devices on 'data'.

  Args:
    axis_sizes: e.g. {'data': -1, 'fsdp': 2, 'tensor': 2}; -1 takes what is left.
    devices: default `jax.devices()` (all processes' devices in a multi-host run).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(axis_sizes or {"data": -1}, len(devices))
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  device_array = _device_order(shape, devices)
  # Auto axes: sharding follows the logical constraints; Explicit axes would reject them.
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _device_order(shape: tuple[int, ...], devices: list) -> np.ndarray:
  """`devices` arranged as `shape`: topology-aware where JAX knows how, else in the given order.

  `mesh_utils.create_device_mesh` places inner axes on fast links (ICI/NVLink); it refuses
  device sets and shapes that do not fit the physical topology (e.g. 3 chips of a 2x2 slice).
  Then the devices are used in the given order, which is all a CPU host has anyway (logged at
  INFO there) but can put an inner axis on slow links of an accelerator (logged as a WARNING
  with the reason).
  """
  try:
    return mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError) as e:
    platform = devices[0].platform
    log = logging.info if platform == "cpu" else logging.warning
    reason = (str(e).splitlines() or [""])[0][:300]
    log("create_mesh: no topology-aware order for mesh %s over %d %s devices (%s: %s); using the devices in "
        "the given order%s", dict(zip(MESH_AXES, shape)), len(devices), platform, type(e).__name__, reason,
        "" if platform == "cpu" else ", so an inner mesh axis may cross slow links")
    return np.asarray(devices).reshape(shape)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules | None = None):
  """Makes `mesh` and the logical rules current for jit, init and the model's constraints."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules if rules is not None else logical_axis_rules())):
    yield


def abstract_params(model: nn.Module, batch_shape: tuple[int, int] = (1, 8)) -> Any:
  """Shapes, dtypes and logical names of `model`'s parameters, without allocating them."""
  tokens = jax.ShapeDtypeStruct(batch_shape, jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(tokens.shape, tokens.dtype)))["params"]


def logical_to_sharding(boxed_tree: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
  """NamedShardings for a tree of nn.LogicallyPartitioned leaves (abstract or concrete).

  Raises MeshError naming the parameter when a sharded dimension does not divide evenly.
  """
  rules = tuple(rules if rules is not None else logical_axis_rules())
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  _check_divisible(strip_boxes(boxed_tree), shardings)
  return shardings


def strip_boxes(tree: Any) -> Any:
  """The values of a tree of nn.Partitioned boxes (abstract or concrete), without constraints."""
  # nn.unbox would also apply sharding constraints, which abstract leaves cannot take.
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def _check_divisible(tree: Any, shardings: Any) -> None:
  flat_arrays = jax.tree_util.tree_flatten_with_path(tree)[0]
  flat_shardings = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, array), sharding in zip(flat_arrays, flat_shardings):
    for dim, axes in zip(array.shape, sharding.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      parts = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % parts:
        raise MeshError(f"{jax.tree_util.keystr(path)} of shape {array.shape}: dimension {dim} cannot be "
                        f"split over mesh axes {axes} of size {parts}")


def init_params(model: nn.Module, rng: jax.Array, mesh: Mesh, rules: LogicalRules | None = None,
                batch_shape: tuple[int, int] = (1, 8)) -> tuple[Any, Any]:
  """Initialises `model`'s parameters directly in their shards.

  Returns:
    (params, shardings): plain arrays (boxes removed), each laid out by the rules, and the
    matching tree of NamedShardings (for optimizer state, checkpoints and jit).
  """
  rules = tuple(rules if rules is not None else logical_axis_rules())
  with use_mesh(mesh, rules):
    shardings = logical_to_sharding(abstract_params(model, batch_shape), mesh, rules)

    def init(key):
      tokens = jnp.zeros(batch_shape, jnp.int32)
      return nn.unbox(model.init(key, tokens)["params"])

    params = jax.jit(init, out_shardings=shardings)(rng)
  return params, shardings


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Where [batch, length] input arrays live: batch split over ('data', 'fsdp')."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
