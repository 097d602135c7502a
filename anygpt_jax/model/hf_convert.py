"""Weight mapping between this model and HuggingFace `LlamaForCausalLM` state dicts.

Both sides use the rotate-half RoPE layout, so the mapping is names, transposes and head
reshapes; no q/k permutation (that one is only needed for Meta's original checkpoints).
Arrays are numpy on both sides: callers convert torch tensors with `.numpy()` (or pass them,
they are converted here) and put the result on devices with their own shardings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from anygpt_jax.model.config import ModelConfig

_LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")
_MLP = ("gate_proj", "up_proj", "down_proj")


class ConversionError(ValueError):
  """A state dict or parameter tree that does not match the configuration."""


def to_numpy(x) -> np.ndarray:
  """A torch tensor (bf16 included, as float32) or array-like as numpy."""
  if hasattr(x, "detach"):  # a torch tensor; bf16 has no numpy dtype, so go through float32
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def _pad_rows(table: np.ndarray, rows: int, name: str) -> np.ndarray:
  if table.shape[0] > rows:
    raise ConversionError(f"{name} has {table.shape[0]} rows, more than the model's vocab_size={rows}")
  if table.shape[0] == rows:
    return table
  # Padding rows are never looked up (no token has their id) and never predicted (masked).
  return np.concatenate([table, np.zeros((rows - table.shape[0],) + table.shape[1:], table.dtype)])


def _hf_layer_to_ours(sd: Mapping[str, Any], i: int, cfg: ModelConfig) -> dict:
  d, hd = cfg.hidden_size, cfg.resolved_head_dim
  prefix = f"model.layers.{i}."

  def get(name):
    key = prefix + name
    if key not in sd:
      raise ConversionError(f"state dict has no {key!r}")
    return to_numpy(sd[key])

  def projection(name, heads):
    w = get(f"self_attn.{name}.weight")  # [heads*hd, d]
    if w.shape != (heads * hd, d):
      raise ConversionError(f"{prefix}self_attn.{name}.weight has shape {w.shape}, expected {(heads * hd, d)}")
    return {"kernel": w.T.reshape(d, heads, hd)}

  o = get("self_attn.o_proj.weight")  # [d, heads*hd]
  layer = {
      "self_attn": {
          "q_proj": projection("q_proj", cfg.num_heads),
          "k_proj": projection("k_proj", cfg.num_kv_heads),
          "v_proj": projection("v_proj", cfg.num_kv_heads),
          "o_proj": {"kernel": o.T.reshape(cfg.num_heads, hd, d)},
      },
      "mlp": {name: {"kernel": get(f"mlp.{name}.weight").T} for name in _MLP},
  }
  for name in _LAYER_NORMS:
    layer[name] = {"scale": get(f"{name}.weight")}
  return layer


def params_from_hf_state_dict(state_dict: Mapping[str, Any], config: ModelConfig) -> dict:
  """A `LlamaForCausalLM` state dict as this model's parameter tree (numpy, param layout of config).

  The embedding and head may have fewer rows than config.vocab_size (HF checkpoints are
  trimmed to the real vocabulary); the rest is zero padding.
  """
  sd = state_dict
  for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
    if key not in sd:
      raise ConversionError(f"state dict has no {key!r} (tied embeddings are not LLaMA-2's layout)")
  layers = [_hf_layer_to_ours(sd, i, config) for i in range(config.num_layers)]
  if f"model.layers.{config.num_layers}.input_layernorm.weight" in sd:
    raise ConversionError(f"state dict has more than num_layers={config.num_layers} layers")
  params = {
      "embed_tokens": {"embedding": _pad_rows(to_numpy(sd["model.embed_tokens.weight"]), config.vocab_size,
                                              "model.embed_tokens.weight")},
      "norm": {"scale": to_numpy(sd["model.norm.weight"])},
      "lm_head": {"kernel": _pad_rows(to_numpy(sd["lm_head.weight"]), config.vocab_size, "lm_head.weight").T},
  }
  if config.scan_layers:
    params["layers"] = _stack(layers)
  else:
    params.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
  return params


def _stack(trees: list[dict]) -> dict:
  if isinstance(trees[0], dict):
    return {k: _stack([t[k] for t in trees]) for k in trees[0]}
  return np.stack(trees)


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """One tensor of the HF state dict and where it comes from in this model's parameter tree.

  Attributes:
    name: the HF name (`model.layers.3.self_attn.q_proj.weight`).
    leaf: the path of its parameter in our tree (('layers', 'self_attn', 'q_proj', 'kernel')).
    layer: the index into the leaf's leading 'layers' axis (scanned layers), else None.
    shape: the HF shape.
    transform: how the parameter becomes the HF tensor (see `to_hf_tensor`).
  """

  name: str
  leaf: tuple[str, ...]
  layer: int | None
  shape: tuple[int, ...]
  transform: str


def hf_tensor_plan(config: ModelConfig, vocab_rows: int | None = None) -> list[HFTensor]:
  """Every HF tensor of `config`'s model, leaf by leaf (a scanned leaf's layers one after another),
  so a writer that reads one leaf at a time writes its tensors in order.

  Args:
    vocab_rows: rows kept in the embedding and head; default config.predictable_vocab_size.
  """
  rows = config.predictable_vocab_size if vocab_rows is None else vocab_rows
  d, hd, h, kv = config.hidden_size, config.resolved_head_dim, config.num_heads, config.num_kv_heads
  layer_tensors = [(("self_attn", name, "kernel"), f"self_attn.{name}.weight", (heads * hd, d), "heads_t")
                   for name, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv))]
  layer_tensors.append((("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", (d, h * hd), "heads_out_t"))
  inter = config.intermediate_size
  for name, shape in (("gate_proj", (inter, d)), ("up_proj", (inter, d)), ("down_proj", (d, inter))):
    layer_tensors.append((("mlp", name, "kernel"), f"mlp.{name}.weight", shape, "t"))
  for name in _LAYER_NORMS:
    layer_tensors.append(((name, "scale"), f"{name}.weight", (d,), "identity"))

  plan = [HFTensor("model.embed_tokens.weight", ("embed_tokens", "embedding"), None, (rows, d), "rows")]
  if config.scan_layers:
    for path, name, shape, transform in layer_tensors:
      plan += [HFTensor(f"model.layers.{i}.{name}", ("layers",) + path, i, shape, transform)
               for i in range(config.num_layers)]
  else:
    for i in range(config.num_layers):
      plan += [HFTensor(f"model.layers.{i}.{name}", (f"layers_{i}",) + path, None, shape, transform)
               for path, name, shape, transform in layer_tensors]
  plan.append(HFTensor("model.norm.weight", ("norm", "scale"), None, (d,), "identity"))
  plan.append(HFTensor("lm_head.weight", ("lm_head", "kernel"), None, (rows, d), "rows_t"))
  return plan


def to_hf_tensor(spec: HFTensor, value: np.ndarray, contiguous: bool = True) -> np.ndarray:
  """Our parameter (already indexed by `spec.layer`) as the HF tensor `spec`: C-contiguous numpy,
  or with contiguous=False a view of `value` where one suffices (no copy of a large table)."""
  value = np.asarray(value)
  if spec.transform == "rows":  # [padded rows, d] -> [rows, d]
    out = value[:spec.shape[0]]
  elif spec.transform == "rows_t":  # [d, padded rows] -> [rows, d]
    out = value[:, :spec.shape[0]].T
  elif spec.transform == "heads_t":  # [d, heads, hd] -> [heads*hd, d]
    out = value.reshape(value.shape[0], -1).T
  elif spec.transform == "heads_out_t":  # [heads, hd, d] -> [d, heads*hd]
    out = value.reshape(-1, value.shape[-1]).T
  elif spec.transform == "t":
    out = value.T
  else:
    out = value
  if out.shape != spec.shape:
    raise ConversionError(f"{spec.name}: {'/'.join(spec.leaf)} gives shape {out.shape}, expected {spec.shape}")
  return np.ascontiguousarray(out) if contiguous else out


def leaf_value(params: Mapping[str, Any], spec: HFTensor) -> np.ndarray:
  """The parameter `spec` reads, from an in-memory tree (indexed by its layer)."""
  value = params
  for key in spec.leaf:
    value = value[key]
  return np.asarray(value if spec.layer is None else value[spec.layer])


def hf_state_dict_from_params(params: Mapping[str, Any], config: ModelConfig,
                              vocab_rows: int | None = None) -> dict[str, np.ndarray]:
  """This model's parameters as a `LlamaForCausalLM` state dict of numpy arrays.

  Args:
    params: the parameter tree (jax or numpy arrays; gathered to host here).
    vocab_rows: rows kept in the embedding and head; default config.predictable_vocab_size,
      which trims the sharding padding.
  """
  return {spec.name: to_hf_tensor(spec, leaf_value(params, spec)) for spec in hf_tensor_plan(config, vocab_rows)}


def hf_config_dict(config: ModelConfig, vocab_size: int | None = None, **extra) -> dict:
  """`transformers.LlamaConfig` keyword arguments for this model (vocabulary trimmed)."""
  return dict(
      vocab_size=config.predictable_vocab_size if vocab_size is None else vocab_size,
      hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size,
      num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads,
      head_dim=config.resolved_head_dim,
      max_position_embeddings=config.max_position_embeddings,
      rms_norm_eps=config.rms_norm_eps,
      rope_theta=config.rope_theta,
      hidden_act="silu",
      tie_word_embeddings=False,
      attention_bias=False,
      mlp_bias=False,
      initializer_range=config.initializer_range,
      **extra,
  )
