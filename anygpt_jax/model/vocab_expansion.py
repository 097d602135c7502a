"""Growing a text-only LLaMA-2's embedding and output head to AnyGPT's vocabulary."""

from __future__ import annotations

from typing import Any

import numpy as np

from anygpt_jax.vocabulary.layout import VocabularyLayout

EXPANSION_INITS = ("normal", "mean")


def _expand_table(table: np.ndarray, text_rows: int, layout: VocabularyLayout, init: str, std: float,
                  rng: np.random.Generator) -> np.ndarray:
  """table: [rows, width] with rows >= text_rows -> [layout.padded_vocab_size, width], same dtype."""
  width = table.shape[1]
  text = np.asarray(table[:text_rows])
  new_rows = layout.vocab_size - text_rows
  if init == "normal":
    new = rng.normal(0.0, std, size=(new_rows, width))
  else:
    new = np.broadcast_to(text.astype(np.float64).mean(axis=0), (new_rows, width))
  padding = np.zeros((layout.padded_vocab_size - layout.vocab_size, width))
  return np.concatenate([text, new.astype(table.dtype), padding.astype(table.dtype)])


def expand_vocabulary(params: dict[str, Any], layout: VocabularyLayout, init: str = "normal",
                      std: float = 0.02, seed: int = 0) -> dict[str, Any]:
  """Expands a text-only parameter tree (as `params_from_hf_state_dict` gives) to `layout`.

  Rows [0, layout.text_vocab_size) are kept bit for bit; the modality, role (and chat)
  rows are drawn from N(0, std^2) ('normal') or set to the mean of the text rows ('mean');
  sharding-padding rows are zero. Input tables may carry padding of their own beyond the
  text rows; it is dropped.

  Args:
    params: tree with 'embed_tokens/embedding' [rows, hidden] and 'lm_head/kernel' [hidden, rows].
  Returns:
    A new tree (numpy tables) whose two tables have layout.padded_vocab_size rows.
  """
  if init not in EXPANSION_INITS:
    raise ValueError(f"init={init!r} not in {EXPANSION_INITS}")
  text_rows = layout.text_vocab_size
  embedding = np.asarray(params["embed_tokens"]["embedding"])
  head = np.asarray(params["lm_head"]["kernel"])
  if embedding.shape[0] < text_rows or head.shape[1] < text_rows:
    raise ValueError(f"the source has {embedding.shape[0]} embedding rows and {head.shape[1]} head rows, "
                     f"fewer than the layout's {text_rows} text pieces")
  rng = np.random.default_rng(seed)
  out = dict(params)
  out["embed_tokens"] = {"embedding": _expand_table(embedding, text_rows, layout, init, std, rng)}
  out["lm_head"] = {"kernel": _expand_table(head.T, text_rows, layout, init, std, rng).T}
  return out
