"""Weight mapping between this model and HuggingFace `LlamaForCausalLM` state dicts.

Both sides use the rotate-half RoPE layout, so the mapping is names, transposes and head
reshapes; no q/k permutation (that one is only needed for Meta's original checkpoints).
Arrays are numpy on both sides: callers convert torch tensors with `.numpy()` (or pass them,
they are converted here) and put the result on devices with their own shardings.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from anygpt_jax.model.config import ModelConfig

_LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")
_MLP = ("gate_proj", "up_proj", "down_proj")


class ConversionError(ValueError):
  """A state dict or parameter tree that does not match the configuration."""


def _to_numpy(x) -> np.ndarray:
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
    return _to_numpy(sd[key])

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
      "embed_tokens": {"embedding": _pad_rows(_to_numpy(sd["model.embed_tokens.weight"]), config.vocab_size,
                                              "model.embed_tokens.weight")},
      "norm": {"scale": _to_numpy(sd["model.norm.weight"])},
      "lm_head": {"kernel": _pad_rows(_to_numpy(sd["lm_head.weight"]), config.vocab_size, "lm_head.weight").T},
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


def _unstack(tree: dict, i: int) -> dict:
  if isinstance(tree, dict):
    return {k: _unstack(v, i) for k, v in tree.items()}
  return tree[i]


def hf_state_dict_from_params(params: Mapping[str, Any], config: ModelConfig,
                              vocab_rows: int | None = None) -> dict[str, np.ndarray]:
  """This model's parameters as a `LlamaForCausalLM` state dict of numpy arrays.

  Args:
    params: the parameter tree (jax or numpy arrays; gathered to host here).
    vocab_rows: rows kept in the embedding and head; default config.predictable_vocab_size,
      which trims the sharding padding.
  """
  rows = config.predictable_vocab_size if vocab_rows is None else vocab_rows
  p = {k: v for k, v in params.items()}
  d, hd = config.hidden_size, config.resolved_head_dim
  sd = {
      "model.embed_tokens.weight": np.asarray(p["embed_tokens"]["embedding"])[:rows],
      "model.norm.weight": np.asarray(p["norm"]["scale"]),
      "lm_head.weight": np.asarray(p["lm_head"]["kernel"]).T[:rows],
  }
  for i in range(config.num_layers):
    layer = _unstack(p["layers"], i) if config.scan_layers else p[f"layers_{i}"]
    prefix = f"model.layers.{i}."
    attn = layer["self_attn"]
    for name in ("q_proj", "k_proj", "v_proj"):
      kernel = np.asarray(attn[name]["kernel"])  # [d, heads, hd]
      sd[f"{prefix}self_attn.{name}.weight"] = kernel.reshape(d, -1).T
    sd[f"{prefix}self_attn.o_proj.weight"] = np.asarray(attn["o_proj"]["kernel"]).reshape(-1, d).T
    for name in _MLP:
      sd[f"{prefix}mlp.{name}.weight"] = np.asarray(layer["mlp"][name]["kernel"]).T
    for name in _LAYER_NORMS:
      sd[f"{prefix}{name}.weight"] = np.asarray(layer[name]["scale"])
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


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
