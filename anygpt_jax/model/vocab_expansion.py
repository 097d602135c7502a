"""Growing an embedding and output head to AnyGPT's vocabulary: from a text-only LLaMA-2 (32000
rows), or from AnyGPT-base (49418 rows) to the chat layout (49420: `<-Ins->`, `<-Res->` added)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from anygpt_jax.vocabulary.layout import VocabularyLayout

EXPANSION_INITS = ("normal", "mean")


def source_row_counts(layout: VocabularyLayout) -> dict[int, str]:
  """The embedding row counts a checkpoint loaded into `layout` may have -> what each means.

  Every count is a prefix of `layout`'s rows, so the rows beyond it are new (grown here).
  """
  counts = {layout.text_vocab_size: "a text-only LLaMA: the tokenizer's pieces"}
  base = dataclasses.replace(layout, chat_tokens=False)
  counts.setdefault(base.vocab_size, "AnyGPT-base: text, roles and modalities")
  counts.setdefault(layout.vocab_size, "this layout, chat tokens included" if layout.chat_tokens
                    else "this layout")
  return counts


def new_rows(table: np.ndarray, source_rows: int, layout: VocabularyLayout, init: str, std: float,
             rng: np.random.Generator) -> np.ndarray:
  """Initial values of rows [source_rows, layout.vocab_size) of `table` [rows, width].

  'normal': N(0, std^2); 'mean': the mean of the text rows [0, layout.text_vocab_size).
  Returns [layout.vocab_size - source_rows, width] in table.dtype.
  """
  if init not in EXPANSION_INITS:
    raise ValueError(f"init={init!r} not in {EXPANSION_INITS}")
  count, width = layout.vocab_size - source_rows, table.shape[1]
  if init == "normal":
    new = rng.normal(0.0, std, size=(count, width))
  else:
    new = np.broadcast_to(np.asarray(table[:layout.text_vocab_size], np.float64).mean(axis=0), (count, width))
  return new.astype(table.dtype)


def _expand_table(table: np.ndarray, source_rows: int, layout: VocabularyLayout, init: str, std: float,
                  rng: np.random.Generator) -> np.ndarray:
  """table: [rows, width] with rows >= source_rows -> [layout.padded_vocab_size, width], same dtype."""
  width = table.shape[1]
  kept = np.asarray(table[:source_rows])
  padding = np.zeros((layout.padded_vocab_size - layout.vocab_size, width), table.dtype)
  return np.concatenate([kept, new_rows(table, source_rows, layout, init, std, rng), padding])


def expand_vocabulary(params: dict[str, Any], layout: VocabularyLayout, init: str = "normal",
                      std: float = 0.02, seed: int = 0, source_rows: int | None = None) -> dict[str, Any]:
  """Grows a parameter tree (as `params_from_hf_state_dict` gives) to `layout`.

  Rows [0, source_rows) are kept bit for bit; the rows up to layout.vocab_size (modality and
  role rows for a text-only source, the chat rows for AnyGPT-base) are drawn from N(0, std^2)
  ('normal') or set to the mean of the text rows ('mean'); sharding-padding rows are zero.
  Input tables may carry padding of their own beyond `source_rows`; it is dropped.

  Args:
    params: tree with 'embed_tokens/embedding' [rows, hidden] and 'lm_head/kernel' [hidden, rows].
    source_rows: the rows that hold trained values; default layout.text_vocab_size.
  Returns:
    A new tree (numpy tables) whose two tables have layout.padded_vocab_size rows.
  """
  if init not in EXPANSION_INITS:
    raise ValueError(f"init={init!r} not in {EXPANSION_INITS}")
  source_rows = layout.text_vocab_size if source_rows is None else source_rows
  if not layout.text_vocab_size <= source_rows <= layout.vocab_size:
    raise ValueError(f"source_rows={source_rows} outside [{layout.text_vocab_size}, {layout.vocab_size}]")
  embedding = np.asarray(params["embed_tokens"]["embedding"])
  head = np.asarray(params["lm_head"]["kernel"])
  if embedding.shape[0] < source_rows or head.shape[1] < source_rows:
    raise ValueError(f"the source has {embedding.shape[0]} embedding rows and {head.shape[1]} head rows, "
                     f"fewer than the {source_rows} to keep")
  rng = np.random.default_rng(seed)
  out = dict(params)
  out["embed_tokens"] = {"embedding": _expand_table(embedding, source_rows, layout, init, std, rng)}
  out["lm_head"] = {"kernel": _expand_table(head.T, source_rows, layout, init, std, rng).T}
  return out
