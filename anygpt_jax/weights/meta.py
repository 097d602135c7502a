"""Meta's original LLaMA-2 layout (`consolidated.NN.pth` + `params.json`) <-> HuggingFace names.

Meta's checkpoints rotate q/k in interleaved pairs (dims 2i, 2i+1 of each head); HF and this model
rotate halves (dims i, i + head_dim/2). Converting permutes the rows of `wq`/`wk` within each head
so that the two layouts give the same attention. Model-parallel shards (13B: 2 files, 70B: 8) split
each matrix along its parallel dimension; they are concatenated back here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

# Meta name (inside layer i) -> (HF name, the dimension Meta's model parallelism splits; None: replicated).
_LAYER = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_GLOBAL = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", 1),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
PARAMS_FILE = "params.json"


def meta_intermediate_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
  """The MLP width Meta's `FeedForward` derives from `params.json` (11008 for 7B)."""
  hidden = int(2 * 4 * dim / 3)
  if ffn_dim_multiplier is not None:
    hidden = int(ffn_dim_multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def hf_config_from_params(params: Mapping[str, Any]) -> dict:
  """`params.json` as the HF config fields that `checks.check_source_config` compares."""
  heads = params["n_heads"]
  out = {
      "hidden_size": params["dim"],
      "num_attention_heads": heads,
      "num_key_value_heads": params.get("n_kv_heads") or heads,
      "num_hidden_layers": params["n_layers"],
      "intermediate_size": meta_intermediate_size(params["dim"], params.get("multiple_of", 256),
                                                  params.get("ffn_dim_multiplier")),
      "rms_norm_eps": params["norm_eps"],
      "rope_theta": params.get("rope_theta", 10000.0),
  }
  if params.get("vocab_size", -1) > 0:  # LLaMA-2's release writes -1 (the tokenizer decides)
    out["vocab_size"] = params["vocab_size"]
  return out


def _rope_to_hf(w: np.ndarray, heads: int) -> np.ndarray:
  """Rows of one q/k matrix [heads*hd, d] from interleaved pairs to rotate-half order."""
  rows, cols = w.shape
  return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _rope_to_meta(w: np.ndarray, heads: int) -> np.ndarray:
  """The inverse of `_rope_to_hf`."""
  rows, cols = w.shape
  return w.reshape(heads, 2, rows // heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def hf_name(meta_name: str) -> tuple[str, int | None] | None:
  """(HF name, model-parallel split dimension) of a Meta tensor; None for tensors HF has no use for."""
  if meta_name in _GLOBAL:
    return _GLOBAL[meta_name]
  parts = meta_name.split(".", 2)
  if parts[0] == "layers" and len(parts) == 3 and parts[2] in _LAYER:
    name, dim = _LAYER[parts[2]]
    return f"model.layers.{parts[1]}.{name}", dim
  return None  # e.g. `rope.freqs`, recomputed by every implementation


def to_hf_tensor(hf_key: str, joined: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
  """A Meta tensor (shards already joined) in HF's layout: q/k rows permuted to rotate-half."""
  heads = params["n_heads"]
  if hf_key.endswith("self_attn.q_proj.weight"):
    return _rope_to_hf(joined, heads)
  if hf_key.endswith("self_attn.k_proj.weight"):
    return _rope_to_hf(joined, params.get("n_kv_heads") or heads)
  return joined


def meta_state_dict_from_hf(state_dict: Mapping[str, np.ndarray], num_heads: int,
                            num_kv_heads: int) -> dict[str, np.ndarray]:
  """A HF LLaMA state dict (numpy) in Meta's names and q/k layout (one model-parallel shard)."""
  inverse_global = {hf: meta for meta, (hf, _) in _GLOBAL.items()}
  inverse_layer = {hf: meta for meta, (hf, _) in _LAYER.items()}
  out = {}
  for key, w in state_dict.items():
    if key in inverse_global:
      out[inverse_global[key]] = w
      continue
    _, _, index, rest = key.split(".", 3)  # model.layers.{i}.{rest}
    if rest == "self_attn.q_proj.weight":
      w = _rope_to_meta(w, num_heads)
    elif rest == "self_attn.k_proj.weight":
      w = _rope_to_meta(w, num_kv_heads)
    out[f"layers.{index}.{inverse_layer[rest]}"] = w
  return out


def write_meta_checkpoint(state_dict: Mapping[str, np.ndarray], params: Mapping[str, Any], out_dir: str,
                          num_shards: int = 1) -> list[str]:
  """Writes a HF state dict as Meta's `consolidated.NN.pth` (split like Meta's model parallelism)
  plus `params.json`; returns the file names. Used to test the import on the real layout."""
  import torch

  os.makedirs(out_dir, exist_ok=True)
  meta = meta_state_dict_from_hf(state_dict, params["n_heads"], params.get("n_kv_heads") or params["n_heads"])
  names = []
  for shard in range(num_shards):
    part = {}
    for key, w in meta.items():
      dim = hf_name(key)[1]
      if dim is not None:
        w = np.split(w, num_shards, axis=dim)[shard]
      part[key] = torch.from_numpy(np.ascontiguousarray(w))
    names.append(f"consolidated.{shard:02d}.pth")
    torch.save(part, os.path.join(out_dir, names[-1]))
  with open(os.path.join(out_dir, PARAMS_FILE), "w") as f:
    json.dump(dict(params), f)
  return names
