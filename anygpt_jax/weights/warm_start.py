"""Initial parameters of a run from weights a user already has (gin: `train.warm_start`).

  train.warm_start = @warm_start_params
  warm_start_params.path = '/models/llama2-7b'     # any layout of `sources`, or a run directory
  warm_start_params.source = 'auto'                # 'hf' (any published layout, Meta's too), 'run'
                                                   # or 'auto': 'run' when path holds checkpoints/
  warm_start_params.new_rows_init = 'mean'         # rows the source does not have: 'normal' or 'mean'

Rows the source lacks (AnyGPT's modality and role rows for a text-only LLaMA-2, the two chat rows
for AnyGPT-base or a pretraining run before SFT) are initialised by `new_rows_init`; every other
row and tensor is kept bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import gin
import jax
import numpy as np

from anygpt_jax import filesystem
from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.hf_convert import params_from_hf_state_dict
from anygpt_jax.model.vocab_expansion import EXPANSION_INITS, expand_vocabulary, source_row_counts
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.weights.checks import SourceConfigError, check_source_config
from anygpt_jax.weights.sources import open_source

SOURCES = ("auto", "hf", "run")
EMBEDDING_KEY = "model.embed_tokens.weight"


def import_params(path: str | os.PathLike, config: ModelConfig, layout: VocabularyLayout,
                  new_rows_init: str = "normal", new_rows_std: float | None = None, seed: int = 0,
                  grow: bool = True) -> dict:
  """A published checkpoint directory (any layout of `anygpt_jax.weights.sources`) as this model's
  parameter tree of numpy arrays, grown to `layout` when the source has fewer rows.

  Args:
    config: the model (its vocab_size is `layout.padded_vocab_size`).
    new_rows_init / new_rows_std / seed: how rows the source lacks are drawn (std default:
      config.initializer_range).
    grow: False refuses a source with fewer rows than the layout.
  Returns:
    The parameter tree: float32 numpy arrays; tables of layout.padded_vocab_size rows.
  Raises:
    SourceConfigError: the source's config.json/params.json differs from `config` (every field named).
  """
  source = open_source(path)
  allowed = source_row_counts(layout)
  check_source_config(source.config, config, os.fspath(source.config_file), allowed)
  if EMBEDDING_KEY not in source.state_dict:
    raise SourceConfigError(f"{source.path} ({source.kind}) has no {EMBEDDING_KEY}")
  rows = source.state_dict[EMBEDDING_KEY].shape[0]
  if rows not in allowed:
    expected = ", ".join(f"{n} ({what})" for n, what in allowed.items())
    raise SourceConfigError(f"{source.path}: {EMBEDDING_KEY} has {rows} rows; the vocabulary layout "
                            f"(text_vocab_size={layout.text_vocab_size} from the SentencePiece model, "
                            f"chat_tokens={layout.chat_tokens}) takes {expected}")
  if rows == layout.vocab_size:
    return params_from_hf_state_dict(source.state_dict, config)
  if not grow:
    raise SourceConfigError(f"{source.path} has {rows} embedding rows, the layout {layout.vocab_size}, and "
                            "growing the vocabulary is turned off (warm_start_params.expand_text_vocabulary)")
  grown_config = config.replace(vocab_size=max(rows, config.vocab_size), real_vocab_size=None)
  params = params_from_hf_state_dict(source.state_dict, grown_config)
  std = config.initializer_range if new_rows_std is None else new_rows_std
  return expand_vocabulary(params, layout, init=new_rows_init, std=std, seed=seed, source_rows=rows)


def _source_run_layout(path: str) -> VocabularyLayout | None:
  """The vocabulary layout stored with a run's latest checkpoint (None for runs that stored none)."""
  import orbax.checkpoint as ocp

  from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
  checkpoints = Checkpoints(path, CheckpointConfig(async_save=False))
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f"warm start: no checkpoint in {checkpoints.directory}")
    stored = checkpoints.manager.restore(step, args=ocp.args.Composite(layout=ocp.args.JsonRestore()))["layout"]
  finally:
    checkpoints.close()
  return VocabularyLayout.from_json_dict(stored) if stored else None


def _set_rows(table: jax.Array, start: int, values: Any, axis: int) -> jax.Array:
  """`table` with rows [start, start + len(values)) along `axis` replaced, sharding kept."""
  def update(t, v):
    v = v.astype(t.dtype)
    return jax.lax.dynamic_update_slice_in_dim(t, v if axis == 0 else v.T, start, axis)
  return jax.jit(update, out_shardings=table.sharding)(table, values)


def _grow_run_params(params: dict, source: VocabularyLayout, layout: VocabularyLayout, init: str, std: float,
                     seed: int) -> dict:
  """Initialises rows [source.vocab_size, layout.vocab_size) of placed (sharded) tables."""
  count = layout.vocab_size - source.vocab_size
  rng = np.random.default_rng(seed)
  out = dict(params)
  for key, leaf, axis in (("embed_tokens", "embedding", 0), ("lm_head", "kernel", 1)):
    table = params[key][leaf]
    width = table.shape[1 - axis]
    if init == "normal":
      values = rng.normal(0.0, std, size=(count, width)).astype(np.float32)
    else:
      text = layout.text_vocab_size
      mean = jax.jit(lambda t: (t[:text] if axis == 0 else t[:, :text].T).astype(np.float32).mean(0))(table)
      values = jax.numpy.broadcast_to(mean, (count, width))
    out[key] = {leaf: _set_rows(table, source.vocab_size, values, axis)}
  return out


def run_params(path: str, layout: VocabularyLayout, abstract_params: Any, new_rows_init: str = "normal",
               new_rows_std: float = 0.02, seed: int = 0) -> Any:
  """The latest parameters of another run (e.g. pretraining before SFT), placed by `abstract_params`'
  shardings; the optimizer state is not taken. Rows the source run's layout lacks (the chat rows
  when SFT adds them) are initialised by `new_rows_init`."""
  from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints

  source_layout = _source_run_layout(path)
  checkpoints = Checkpoints(path, CheckpointConfig(async_save=False))
  try:
    params = checkpoints.restore_params(abstract_params)
  finally:
    checkpoints.close()
  if source_layout is None or source_layout.vocab_size == layout.vocab_size:
    return params
  grown = dataclasses.replace(source_layout, chat_tokens=layout.chat_tokens, pad_multiple=layout.pad_multiple)
  if source_layout.vocab_size > layout.vocab_size or grown != layout:
    raise SourceConfigError(f"{path} was trained with {source_layout} ({source_layout.vocab_size} rows), which "
                            f"is no prefix of this run's {layout} ({layout.vocab_size} rows)")
  return _grow_run_params(params, source_layout, layout, new_rows_init, new_rows_std, seed)


def detect_source(path: str | os.PathLike) -> str:
  """'run' for a run directory (it holds `checkpoints/`), 'hf' for anything else."""
  from anygpt_jax.checkpoints.manager import CHECKPOINT_SUBDIR  # orbax: only when a run is read
  return "run" if (filesystem.resolve(path) / CHECKPOINT_SUBDIR).is_dir() else "hf"


@gin.configurable
def warm_start_params(path: str = gin.REQUIRED, source: str = "auto", expand_text_vocabulary: bool | None = None,
                      new_rows_init: str = "normal", new_rows_std: float | None = None, seed: int = 0, *,
                      config: ModelConfig, layout: VocabularyLayout, abstract_params: Any) -> Any:
  """Parameters only, from a published checkpoint (any layout) or a run of ours.

  Returns numpy arrays ('hf') or arrays already placed by `abstract_params`' shardings ('run').

  Args:
    path: a checkpoint directory (HF safetensors or .bin, single or sharded; Meta's
      consolidated.NN.pth + params.json) when source='hf'; a run's `model_dir` when 'run'.
    source: 'hf', 'run', or 'auto' (the default): 'run' when `path` holds a `checkpoints/`
      directory (anygpt-train's or anygpt-import's output), else 'hf'.
    expand_text_vocabulary: False refuses a source with fewer rows than the layout (True/None:
      grow it).
    new_rows_init: 'normal' (N(0, new_rows_std^2)) or 'mean' (the mean text row) for the rows
      the source lacks.
    new_rows_std: default the model's initializer_range.
    seed: of the 'normal' draw.
  """
  if source not in SOURCES:
    raise ValueError(f"warm_start_params.source={source!r}: expected one of {SOURCES}")
  if new_rows_init not in EXPANSION_INITS:
    raise ValueError(f"warm_start_params.new_rows_init={new_rows_init!r}: expected one of {EXPANSION_INITS}")
  std = config.initializer_range if new_rows_std is None else new_rows_std
  if source == "auto":
    source = detect_source(path)
  if source == "run":
    return run_params(path, layout, abstract_params, new_rows_init, std, seed)
  return import_params(path, config, layout, new_rows_init, std, seed, grow=expand_text_vocabulary is not False)
