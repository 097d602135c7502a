"""The modality constraints inside vLLM: a logits processor for `vllm serve --logits-processors`.

vLLM decodes the export as a plain LLaMA; what it cannot know is that inside `<soim>` only image
codes may follow, that a span closes, that a music frame runs codebook by codebook. This class runs
`generation.constraints` (the JAX decoder's own state machine and tables, on torch tensors) inside
vLLM's sampler, so every engine enforces one definition:

  python -m vllm.entrypoints.openai.api_server --model EXPORT \\
      --logits-processors anygpt_jax.serving.vllm_constraints:ModalityConstraints

Why a logits processor and not vLLM's structured outputs: the constraints are a small counter
machine (span lengths, codebook order, the token budget) over a 49k vocabulary; as a grammar it
would be a regular language with thousands of states per image span, compiled per request by the
grammar backend, while the machine is one table lookup per row and token. Its cost per token is
one gather of a [vocab] bool row and one `where` over the row's logits, plus the Python that
advances each row's state; `tools/bench_serve.py --vllm_venv` measures it as vLLM's rate with the
processor on and off (README, "Serving on a GPU box").

Requests opt in through `vllm_xargs` (the completions API's extension field), set by the front's
`VllmEngine` (`vllm_engine.constraint_args`): the modality the answer must be ('' for a free
answer), its stop ids and the front's tokenizers' span shapes. Rows without them are left alone. The vocabulary layout is the export's
`anygpt_vocabulary.json`. Written against vLLM's V1 model-runner interface
(`vllm.v1.sample.logits_processor.LogitsProcessor`); vLLM 0.32 serves it with
`VLLM_USE_V2_MODEL_RUNNER=0`. Imports torch, numpy and vLLM; never JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from anygpt_jax.generation import constraints as cons
from anygpt_jax.serving.vllm_engine import XARGS
from anygpt_jax.vocabulary.layout import MODALITY_NAMES, VocabularyLayout

MODALITY, STOP_IDS, IMAGE_LENGTH, MUSIC_CODEBOOKS = XARGS


def _args(params) -> dict[str, Any] | None:
  extra = getattr(params, "extra_args", None) or {}
  return extra if MODALITY in extra else None


@dataclasses.dataclass
class _Row:
  """One constrained request in vLLM's persistent batch: its tables, machine state (numpy int32 [1]
  arrays), vLLM's live list of its output ids, how many of them the state has seen, its budget."""

  tables: cons.ConstraintTables
  state: dict[str, np.ndarray]
  output: list[int]
  seen: int
  max_tokens: int

  def catch_up(self) -> None:
    while self.seen < len(self.output):
      token = np.asarray([self.output[self.seen]], np.int64)
      self.state = cons.advance(self.tables, self.state, token, np)
      self.seen += 1


class ModalityConstraints(LogitsProcessor):
  """Masks, per constrained row, the ids the modality state machine forbids next."""

  @classmethod
  def validate_params(cls, params) -> None:
    args = _args(params)
    if args is None:
      return
    modality = args[MODALITY]
    if modality and modality not in MODALITY_NAMES:
      raise ValueError(f"{MODALITY}={modality!r}: expected '' or one of {MODALITY_NAMES}")
    stops = args.get(STOP_IDS)
    if not isinstance(stops, list) or not all(isinstance(s, int) for s in stops):
      raise ValueError(f"{STOP_IDS} must be a list of token ids, got {stops!r}")

  def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
    path = os.path.join(vllm_config.model_config.model, "anygpt_vocabulary.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: the modality constraints need the export's vocabulary layout; is "
                              f"{vllm_config.model_config.model} a directory written by anygpt-export?")
    with open(path) as f:
      self.layout = VocabularyLayout.from_json_dict(json.load(f))
    self.rows: dict[int, _Row] = {}

  @functools.lru_cache(maxsize=8)
  def tables(self, stop_ids: tuple[int, ...], image_length: int, music_codebooks: int) -> cons.ConstraintTables:
    return cons.build_tables(self.layout, stop_ids, image_length=image_length, music_codebooks=music_codebooks)

  def is_argmax_invariant(self) -> bool:
    return False  # it changes which id greedy decoding picks

  def update_state(self, batch_update: BatchUpdate | None) -> None:
    if batch_update is not None:
      for index in batch_update.removed:
        self.rows.pop(index, None)
      for index, params, _prompt, output in batch_update.added:
        args = _args(params)
        if args is None:
          self.rows.pop(index, None)
          continue
        tables = self.tables(tuple(args[STOP_IDS]), int(args[IMAGE_LENGTH]), int(args[MUSIC_CODEBOOKS]))
        state = cons.initial_state(tables, [args[MODALITY] or None], np)
        self.rows[index] = _Row(tables, state, output, 0, params.max_tokens)
      for a, b, direction in batch_update.moved:
        row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
        if row_a is not None:
          self.rows[b] = row_a
        if direction == MoveDirectionality.SWAP and row_b is not None:
          self.rows[a] = row_b
    for row in self.rows.values():
      row.catch_up()

  def apply(self, logits: torch.Tensor) -> torch.Tensor:
    """logits float [num_requests, vocab]; constrained rows get the dtype's lowest value where forbidden."""
    groups: dict[int, list[int]] = {}
    for index, row in self.rows.items():
      groups.setdefault(id(row.tables), []).append(index)
    for indices in groups.values():
      rows = [self.rows[i] for i in indices]
      state = {k: torch.from_numpy(np.concatenate([r.state[k] for r in rows])).to(logits.device)
               for k in rows[0].state}
      remaining = torch.tensor([r.max_tokens - len(r.output) for r in rows], dtype=torch.int32,
                               device=logits.device)
      at = torch.tensor(indices, device=logits.device)
      logits[at] = cons.apply(rows[0].tables, state, logits[at], remaining, torch)
    return logits
