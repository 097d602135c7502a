"""Token counts of corpora and mixing rates decided on them.

Token counts come from the tokenization job's `<shard>.stats.json` files (one per shard:
`{"corpus", "split", "records_in", "records_out", "rejected", "tokens": {"image", "speech",
"music"}, "text_chars", "audio_seconds"}`). Text tokens are *estimated*: `text_chars` divided
by a chars-per-token ratio measured by encoding a sample of the corpus's own text with the run's
SentencePiece model (`measure_chars_per_token`), plus the template's tokens per record
(`[Human]: ... <eoh> [MMGPT]: ...<eos>`, start/end tokens, the instruction), also measured by
rendering sample records. Nothing is guessed per corpus by hand.

Rates: AnyGPT mixes per corpus by token share (paper Table 7), oversampling small modalities.
Rows are packed from one corpus each and are nearly full, so a rate is a share of rows, which is
a share of tokens. The functions here turn token counts into rates:

  * `temperature_rates`: rate_i proportional to min(tokens_i, cap)^(1/T), times an explicit
    oversampling factor per corpus, normalised to 1 (T=1 is proportional to tokens; a larger T
    flattens towards uniform, which oversamples the small corpora);
  * `group_rates`: fixed shares per group (e.g. the paper's 0.3 for image-text pairs) split
    among the group's corpora by `temperature_rates`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Mapping, Sequence

from etils import epath

from anygpt_jax.vocabulary.layout import MODALITY_NAMES

STATS_SUFFIX = ".stats.json"


@dataclasses.dataclass
class CorpusStats:
  """Summed tokenization stats of one corpus split."""

  records: int = 0
  modality_tokens: dict = dataclasses.field(default_factory=lambda: {m: 0 for m in MODALITY_NAMES})
  text_chars: int = 0
  audio_seconds: float = 0.0
  shards: int = 0

  def add(self, stats: Mapping) -> None:
    self.records += int(stats.get("records_out", 0))
    for m, n in stats.get("tokens", {}).items():
      self.modality_tokens[m] = self.modality_tokens.get(m, 0) + int(n)
    self.text_chars += int(stats.get("text_chars", 0))
    self.audio_seconds += float(stats.get("audio_seconds", 0.0))
    self.shards += 1

  def text_tokens(self, chars_per_token: float) -> float:
    return self.text_chars / chars_per_token if chars_per_token > 0 else 0.0

  def total_tokens(self, chars_per_token: float, template_tokens_per_record: float = 0.0) -> float:
    """Estimated tokens of one epoch: modality codes + text + template overhead."""
    return (sum(self.modality_tokens.values()) + self.text_tokens(chars_per_token)
            + template_tokens_per_record * self.records)


def stats_files(shard_files: Iterable[str]) -> list[str]:
  return [f + STATS_SUFFIX for f in shard_files if epath.Path(f + STATS_SUFFIX).exists()]


def read_corpus_stats(shard_files: Sequence[str]) -> CorpusStats | None:
  """Sums the stats files next to `shard_files`; None when none of them has one."""
  files = stats_files(shard_files)
  if not files:
    return None
  total = CorpusStats()
  for path in files:
    total.add(json.loads(epath.Path(path).read_text()))
  return total


def shard_files(pattern: str) -> list[str]:
  """Shard files (`{corpus}-{split}-{i:05d}-of-{n:05d}` names only) matching a glob pattern, sorted."""
  from anygpt_jax.data import sources
  return sources.shard_files(pattern)


def measure_chars_per_token(texts: Sequence[str], encode) -> float:
  """Characters per SentencePiece token over `texts` (`encode`: str -> list of ids)."""
  chars = sum(len(t) for t in texts)
  tokens = sum(len(encode(t)) for t in texts if t)
  if tokens == 0:
    raise ValueError("no text to measure chars/token on")
  return chars / tokens


def temperature_rates(tokens: Mapping[str, float], temperature: float = 1.0, cap: float | None = None,
                      oversample: Mapping[str, float] | None = None) -> dict[str, float]:
  """rate_i proportional to oversample_i * min(tokens_i, cap)^(1/temperature), summing to 1."""
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be positive")
  oversample = dict(oversample or {})
  unknown = set(oversample) - set(tokens)
  if unknown:
    raise ValueError(f"oversampling factors for unknown corpora {sorted(unknown)}")
  weights = {}
  for name, n in tokens.items():
    if n < 0:
      raise ValueError(f"{name}: negative token count {n}")
    n = min(n, cap) if cap is not None else n
    weights[name] = oversample.get(name, 1.0) * n ** (1.0 / temperature)
  total = sum(weights.values())
  if total <= 0:
    raise ValueError(f"all token counts are zero: {dict(tokens)}")
  return {name: w / total for name, w in weights.items()}


def group_rates(group_shares: Mapping[str, float], members: Mapping[str, Sequence[str]],
                tokens: Mapping[str, float], temperature: float = 1.0, cap: float | None = None,
                oversample: Mapping[str, float] | None = None) -> dict[str, float]:
  """Fixed shares per group, split inside each group by `temperature_rates`; sums to 1.

  A member missing from `tokens` is not present (no shards): it gets no rate, and a group with
  no member present is left out, the other groups' shares renormalised. Inside a group whose
  present members all count zero tokens the share is split equally; otherwise a member with
  zero tokens gets rate 0.
  """
  present = {g: [m for m in members.get(g, ()) if m in tokens] for g in group_shares}
  present = {g: ms for g, ms in present.items() if ms}
  if not present:
    raise ValueError(f"no corpus of groups {sorted(group_shares)} is present")
  share_total = sum(group_shares[g] for g in present)
  rates = {}
  for g, ms in present.items():
    inner_tokens = {m: tokens[m] for m in ms}
    if sum(inner_tokens.values()) <= 0:
      inner_tokens = {m: 1.0 for m in ms}
    inner = temperature_rates(inner_tokens, temperature, cap,
                              {m: f for m, f in (oversample or {}).items() if m in ms})
    for m, r in inner.items():
      rates[m] = group_shares[g] / share_total * r
  return rates


def epochs_consumed(rate: float, steps: int, batch: int, length: int, corpus_tokens: float,
                    packing_efficiency: float = 1.0) -> float:
  """Epochs of a corpus that `steps` x `batch` rows of `length` consume at `rate` (share of rows)."""
  if corpus_tokens <= 0:
    return float("inf")
  return rate * steps * batch * length * packing_efficiency / corpus_tokens
