"""A model to generate with: a training run's orbax checkpoint or an exported HF directory."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

from anygpt_jax.model.config import ModelConfig
from anygpt_jax.vocabulary.layout import VocabularyLayout


@dataclasses.dataclass
class LoadedModel:
  """config (padded vocabulary), params (numpy tree), layout, the SentencePiece model path, where
  it came from, and the text mode (`legacy`) its data was tokenized in: prompts must be too."""

  config: ModelConfig
  params: Any
  layout: VocabularyLayout
  spm_path: str | None
  source: str
  legacy: bool = True


def model_config_from_hf(hf_config: dict, layout: VocabularyLayout) -> ModelConfig:
  """Our ModelConfig of a `LlamaForCausalLM` config.json (the inverse of `hf_config_dict`)."""
  heads = hf_config["num_attention_heads"]
  config = ModelConfig(
      hidden_size=hf_config["hidden_size"], intermediate_size=hf_config["intermediate_size"],
      num_layers=hf_config["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf_config.get("num_key_value_heads") or heads,
      head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
      rope_theta=float(hf_config.get("rope_theta", (hf_config.get("rope_parameters") or {}).get("rope_theta", 1e4))),
      rms_norm_eps=hf_config.get("rms_norm_eps", 1e-5),
      max_position_embeddings=hf_config.get("max_position_embeddings", 4096),
      initializer_range=hf_config.get("initializer_range", 0.02))
  if hf_config["vocab_size"] != layout.vocab_size:
    raise ValueError(f"config.json vocab_size {hf_config['vocab_size']} != the layout's {layout.vocab_size}")
  return config.with_vocabulary(layout)


def load_hf_directory(path: str, weights: bool = True) -> LoadedModel:
  """An `anygpt-export` directory (safetensors shards, config.json, anygpt_vocabulary.json, tokenizer.model).

  weights: False reads everything but the weights (params None): what a front needs whose model
  runs elsewhere (`anygpt-serve --engine vllm`)."""
  from safetensors.numpy import load_file

  from anygpt_jax.model.hf_convert import params_from_hf_state_dict

  for name in ("config.json", "anygpt_vocabulary.json"):
    if not os.path.exists(os.path.join(path, name)):
      raise FileNotFoundError(f"{path}: no {name}; is it a directory written by anygpt-export?")
  with open(os.path.join(path, "anygpt_vocabulary.json")) as f:
    layout = VocabularyLayout.from_json_dict(json.load(f))
  with open(os.path.join(path, "config.json")) as f:
    config = model_config_from_hf(json.load(f), layout)
  spm = os.path.join(path, "tokenizer.model")
  if not weights:
    return LoadedModel(config, None, layout, spm if os.path.exists(spm) else None, path, exported_legacy(path))
  state = {}
  shards = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not shards:
    raise FileNotFoundError(f"{path}: no *.safetensors weights")
  for shard in shards:
    state.update(load_file(shard))
  state = {k: v.astype("float32") for k, v in state.items()}  # bf16/fp16 exports compute in fp32 here
  params = params_from_hf_state_dict(state, config)
  return LoadedModel(config, params, layout, spm if os.path.exists(spm) else None, path, exported_legacy(path))


def exported_legacy(path: str) -> bool:
  """The text mode an export states in tokenizer_config.json (`legacy`; AnyGPT's True when unstated)."""
  config_path = os.path.join(path, "tokenizer_config.json")
  if not os.path.exists(config_path):
    return True
  with open(config_path) as f:
    return bool(json.load(f).get("legacy", True))
