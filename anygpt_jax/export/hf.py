"""A HuggingFace `LlamaForCausalLM` directory from this project's parameters.

Layout (what `transformers.LlamaForCausalLM.from_pretrained` and AnyGPT's tools load):
  model-00001-of-0000N.safetensors ...   weights, sharded by size, padding rows trimmed
  model.safetensors.index.json           weight name -> shard file
  config.json                            LlamaConfig, vocab_size = the layout's real rows
  generation_config.json                 bos/eos ids and AnyGPT's sampling defaults
  tokenizer.model + tokenizer files      SentencePiece + the added tokens in AnyGPT's order
  anygpt_vocabulary.json                 the vocabulary layout (groups and ids)
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.hf_convert import hf_config_dict, hf_state_dict_from_params
from anygpt_jax.vocabulary.layout import VocabularyLayout

WEIGHTS_INDEX = "model.safetensors.index.json"


def _shard_by_size(state_dict: dict[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
  shards, current, size = [], {}, 0
  for name in state_dict:  # insertion order keeps each layer's tensors together
    nbytes = state_dict[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = state_dict[name]
    size += nbytes
  if current:
    shards.append(current)
  return shards


def save_weights(state_dict: dict[str, np.ndarray], out_dir: str, max_shard_bytes: int) -> list[str]:
  """Writes safetensors shards and their index; returns the shard file names."""
  shards = _shard_by_size(state_dict, max_shard_bytes)
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
    weight_map.update({key: name for key in shard})
  total = sum(v.nbytes for v in state_dict.values())
  with open(os.path.join(out_dir, WEIGHTS_INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names


def generation_config(layout: VocabularyLayout) -> dict:
  """AnyGPT's sampling defaults (paper Table 9: top-p 0.7); generation stops on </s> or <eos>."""
  return {"bos_token_id": 1, "eos_token_id": [2, layout.eos_id], "pad_token_id": 0, "do_sample": True,
          "top_p": 0.7, "temperature": 1.0, "max_new_tokens": 2000}


def save_tokenizer(spm_path: str, layout: VocabularyLayout, out_dir: str) -> None:
  """tokenizer.model plus AnyGPT's added tokens, in order, as HF tokenizer files."""
  import transformers

  shutil.copyfile(spm_path, os.path.join(out_dir, "tokenizer.model"))
  # transformers 5 converts tokenizer.model offline; without add_bos_token it would add no <s>.
  tokenizer = transformers.LlamaTokenizer.from_pretrained(out_dir, add_bos_token=True)
  if tokenizer.vocab_size != layout.text_vocab_size:
    raise ValueError(f"{spm_path} has {tokenizer.vocab_size} pieces, the layout expects {layout.text_vocab_size}")
  tokenizer.add_tokens(layout.added_tokens(), special_tokens=False)
  tokenizer.save_pretrained(out_dir)


def save_hf_checkpoint(params: Any, config: ModelConfig, layout: VocabularyLayout, out_dir: str,
                       spm_path: str | None = None, dtype: str = "float32",
                       max_shard_bytes: int = 5 * 2**30) -> str:
  """Exports `params` as a HuggingFace LLaMA directory; returns `out_dir`.

  Args:
    params: the model's parameter tree (gathered to this host as numpy).
    config: its ModelConfig; its padded rows beyond `layout.vocab_size` are dropped.
    layout: the vocabulary layout the model was trained with.
    spm_path: the SentencePiece model; tokenizer files are written when given.
    dtype: 'float32', 'bfloat16' or 'float16' for the saved weights.
  """
  if config.vocab_size < layout.vocab_size:
    raise ValueError(f"model has {config.vocab_size} rows, fewer than the layout's {layout.vocab_size}")
  os.makedirs(out_dir, exist_ok=True)
  state_dict = hf_state_dict_from_params(params, config, vocab_rows=layout.vocab_size)
  if dtype != "float32":
    import ml_dtypes
    target = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    state_dict = {k: v.astype(target) for k, v in state_dict.items()}
  save_weights(state_dict, out_dir, max_shard_bytes)
  import transformers  # its own writers keep config.json in the format the installed version reads

  hf_config = transformers.LlamaConfig(**hf_config_dict(config, vocab_size=layout.vocab_size), bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0, architectures=["LlamaForCausalLM"],
                                       dtype=dtype)
  hf_config.save_pretrained(out_dir)
  transformers.GenerationConfig(**generation_config(layout)).save_pretrained(out_dir)
  with open(os.path.join(out_dir, "anygpt_vocabulary.json"), "w") as f:
    json.dump(layout.to_json_dict(), f, indent=2, ensure_ascii=False)
  if spm_path:
    save_tokenizer(spm_path, layout, out_dir)
  return out_dir
