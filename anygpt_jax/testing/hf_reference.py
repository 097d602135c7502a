"""The PyTorch reference: transformers' LlamaForCausalLM with this model's configuration.

Used by the parity checks (`anygpt-model-check`, the tests) and the benchmark. torch and
transformers are imported on first use; the model package never imports this module.
"""

from __future__ import annotations

import numpy as np

from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.hf_convert import hf_config_dict


def hf_reference_model(config: ModelConfig, seed: int = 0, attn_implementation: str = "eager",
                       random_norms: bool = True):
  """A randomly initialised `transformers.LlamaForCausalLM` in eval mode, float32.

  HF initialises RMSNorm scales to ones, which would hide a mis-mapped norm; with
  `random_norms` they are drawn from U(0.5, 1.5).
  """
  import torch
  import transformers

  torch.manual_seed(seed)
  hf_config = transformers.LlamaConfig(**hf_config_dict(config), attn_implementation=attn_implementation)
  model = transformers.LlamaForCausalLM(hf_config).eval()
  if random_norms:
    with torch.no_grad():
      for name, param in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
          param.uniform_(0.5, 1.5)
  return model


def hf_logits(model, tokens: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
  """float32 [B, L, vocab] logits of the reference for int [B, L] tokens."""
  import torch

  with torch.no_grad():
    kwargs = {} if positions is None else {"position_ids": torch.from_numpy(np.asarray(positions)).long()}
    return model(torch.from_numpy(np.asarray(tokens)).long(), **kwargs).logits.float().numpy()
