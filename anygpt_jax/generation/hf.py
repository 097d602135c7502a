"""The modality constraints of `constraints.py` as a transformers `LogitsProcessor`.

For serving an exported checkpoint with `LlamaForCausalLM.generate`: the same tables and the
same state machine as the JAX decoder, run on torch tensors. The state is rebuilt from the
generated ids whenever they are not the previous call's ids plus one token (beam search
reorders rows), else advanced by the last token.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

from anygpt_jax.generation import constraints as cons


class ModalityConstraintProcessor(LogitsProcessor):
  """Masks the ids a row may not draw next.

  Args:
    tables: `constraints.build_tables(layout, stop_ids)`.
    prompt_length: input_ids' width before generation (the padded prompt length).
    max_new_tokens: the generate call's max_new_tokens (open spans close within it).
    requested: per row, the modality the answer must be, or None (rows as in input_ids;
      with beam search give each request's value num_beams times).
  """

  def __init__(self, tables: cons.ConstraintTables, prompt_length: int, max_new_tokens: int,
               requested: Sequence[str | None]):
    self.tables = tables
    self.prompt_length = prompt_length
    self.max_new_tokens = max_new_tokens
    self.requested = list(requested)
    self._ids = None
    self._state = None

  def _state_for(self, input_ids: torch.Tensor):
    generated = input_ids[:, self.prompt_length:]
    previous = self._ids
    if previous is not None and previous.shape[1] + 1 == generated.shape[1] and \
        torch.equal(previous, generated[:, :-1]):
      state = cons.advance(self.tables, self._state, generated[:, -1], torch)
    else:
      state = cons.initial_state(self.tables, self.requested, torch, like=input_ids)
      for t in range(generated.shape[1]):
        state = cons.advance(self.tables, state, generated[:, t], torch)
    self._ids, self._state = generated.clone(), state
    return state

  def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
    state = self._state_for(input_ids)
    remaining = torch.full((input_ids.shape[0],), self.max_new_tokens - (input_ids.shape[1] - self.prompt_length),
                           dtype=torch.int32, device=input_ids.device)
    return cons.apply(self.tables, state, scores, remaining, torch)
