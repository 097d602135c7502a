"""Batched autoregressive decoding over the trainer's Flax model, with a key/value cache.

Prompts of different lengths are left-padded into one batch: padding slots get segment id 0,
so no real token attends to them, and positions count real tokens only (as transformers
derives position ids from the attention mask). One prefill writes every prompt into the
cache; then one compiled `while_loop` draws a token per row per step, each row with its own
settings (greedy or sampling, temperature, top-k, top-p, repetition penalty, min/max new
tokens, stop ids) and, optionally, the modality constraints of `constraints.py`. Beam search
lives in `beam.py`; `Generator.generate` sends each request to the right one.

Parameters and the cache are sharded by the same logical-axis rules as training
(`anygpt_jax.partitioning`): the batch over ('data', 'fsdp'), heads over 'tensor'.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from anygpt_jax import partitioning
from anygpt_jax.generation import beam
from anygpt_jax.generation import constraints as cons
from anygpt_jax.generation import sampling
from anygpt_jax.generation.settings import DecodingSettings, SettingsError
from anygpt_jax.model.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class Request:
  """One prompt (ids, `<s>` included) and how to continue it.

  modality: None for free decoding (codes only inside spans the model opens), or the name of
    the modality the answer must be: its span is opened, filled legally, closed, then a stop id.
  """

  prompt: Sequence[int]
  settings: DecodingSettings = DecodingSettings()
  modality: str | None = None


@dataclasses.dataclass
class Output:
  """tokens: the generated ids (the stop id included when one ended the request).

  finish_reason: 'stop' (a stop id) or 'length' (max_new_tokens reached).
  score: beam search's length-normalised log-probability (None for sampling and greedy).
  """

  tokens: list[int]
  finish_reason: str
  prefill_s: float
  decode_s: float
  score: float | None = None


class GenerationError(ValueError):
  """A request that cannot be decoded (empty prompt, too long for the model)."""


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int):
  """(tokens, positions, segment_ids), int32 [rows, length]; rows beyond the prompts are padding rows."""
  tokens = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, length - len(p):] = p
    segments[i, length - len(p):] = 1
  segments[len(prompts):, -1] = 1  # padding rows hold one token so their softmax has a key
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
  return tokens, positions, segments


def row_settings(settings: Sequence[DecodingSettings], rows: int) -> dict[str, np.ndarray]:
  """Per-row arrays [rows] of the settings (padding rows: greedy, one token)."""
  pad = DecodingSettings(max_new_tokens=1)
  settings = list(settings) + [pad] * (rows - len(settings))
  max_stops = max(1, max(len(s.stop_ids) for s in settings))
  stops = np.full((rows, max_stops), -1, np.int32)
  for i, s in enumerate(settings):
    stops[i, :len(s.stop_ids)] = s.stop_ids
  f32 = lambda name: np.asarray([getattr(s, name) for s in settings], np.float32)
  i32 = lambda name: np.asarray([getattr(s, name) for s in settings], np.int32)
  return {"do_sample": np.asarray([s.do_sample for s in settings]), "temperature": f32("temperature"),
          "top_k": i32("top_k"), "top_p": f32("top_p"), "repetition_penalty": f32("repetition_penalty"),
          "min_new_tokens": i32("min_new_tokens"), "max_new_tokens": i32("max_new_tokens"), "stop_ids": stops,
          "length_penalty": f32("length_penalty")}


def seen_ids(prompts: Sequence[Sequence[int]], rows: int, vocab: int) -> np.ndarray:
  """bool [rows, vocab]: which ids each prompt holds (for the repetition penalty)."""
  seen = np.zeros((rows, vocab), bool)
  for i, p in enumerate(prompts):
    seen[i, np.asarray(p, np.int64)] = True
  return seen


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) array as numpy."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Generator:
  """Decodes requests with `model` (a `Transformer`) and its parameters.

  Args:
    model: the trainer's Transformer; its config decides the cache dtype and layout.
    params: its parameter tree (unboxed), already placed (e.g. restored onto `mesh`) or host arrays.
    mesh: the device mesh (default: every device on 'data').
    rules: logical axis rules (default: the gin-bound ones).
    constraints: tables of `constraints.build_tables`, or None for unconstrained decoding.
    length_bucket: prompt and output lengths are rounded up to this, so few shapes compile.
    row_buckets: batch row counts to round up to (e.g. powers of two, for a server whose batches
      vary), so few shapes compile; a batch larger than every bucket keeps its own size.
  """

  def __init__(self, model: Transformer, params: Any, mesh: Mesh | None = None, rules=None,
               constraints: cons.ConstraintTables | None = None, length_bucket: int = 16,
               row_buckets: Sequence[int] = ()):
    self.model = model
    self.config = model.config
    self.mesh = mesh if mesh is not None else partitioning.create_mesh({"data": -1})
    self.rules = tuple(rules if rules is not None else partitioning.logical_axis_rules())
    self.tables = constraints
    self.length_bucket = length_bucket
    self.row_buckets = tuple(sorted(row_buckets))
    self.batch_multiple = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    with self._context():
      self.param_shardings = partitioning.logical_to_sharding(partitioning.abstract_params(model), self.mesh,
                                                              self.rules)
      self.params = jax.device_put(params, self.param_shardings)
    self._prefill = jax.jit(self._prefill_fn)
    self._decode = jax.jit(self._decode_fn, static_argnames=("steps",))
    self._beam = jax.jit(self._beam_fn, static_argnames=("steps", "beams"))

  def _context(self):
    return partitioning.use_mesh(self.mesh, self.rules)

  # --- the cache ------------------------------------------------------------------------------
  def init_cache(self, rows: int, length: int) -> Any:
    """A zero cache for `rows` x `length` slots, sharded by the logical rules."""
    boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0), jnp.zeros((rows, length), jnp.int32),
                                                   decode=True)["cache"])
    shardings = partitioning.logical_to_sharding(boxed, self.mesh, self.rules)
    abstract = partitioning.strip_boxes(boxed)
    return jax.jit(lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract),
                   out_shardings=shardings)()

  def _apply(self, params, cache, tokens, positions, segments):
    """Logits of the last position [B, 1, vocab] (the only ones decoding reads) and the cache."""
    logits, updated = self.model.apply({"params": params, "cache": cache}, tokens, positions, segments,
                                       decode=True, last_only=True, mutable=["cache"])
    return logits, updated["cache"]

  def _prefill_fn(self, params, cache, tokens, positions, segments):
    logits, cache = self._apply(params, cache, tokens, positions, segments)
    return logits[:, -1], cache

  def _next_logits(self, params, cache, token, position):
    logits, cache = self._apply(params, cache, token[:, None], position[:, None], jnp.ones_like(token)[:, None])
    return logits[:, 0], cache

  # --- sampling and greedy --------------------------------------------------------------------
  def _decode_fn(self, params, cache, logits, positions, rows, seen, cstate, rng, *, steps: int):
    batch = logits.shape[0]

    def cond(carry):
      step, done = carry[0], carry[2]
      return (step < steps) & ~jnp.all(done)

    def body(carry):
      step, out, done, logits, cache, positions, seen, cstate, rng = carry
      rng, key = jax.random.split(rng)
      processed = sampling.process_logits(logits, step, rows, seen, cstate, self.tables)
      token = sampling.choose(processed, key, rows["do_sample"], rows["temperature"], rows["top_k"], rows["top_p"])
      token = jnp.where(done, 0, token)
      out = out.at[:, step].set(jnp.where(done, -1, token))
      stopped = jnp.any(token[:, None] == rows["stop_ids"], axis=-1)
      done = done | stopped | (step + 1 >= rows["max_new_tokens"])
      seen = seen.at[jnp.arange(batch), token].set(True)
      if self.tables is not None:
        cstate = cons.advance(self.tables, cstate, token, jnp)
      logits, cache = self._next_logits(params, cache, token, positions)
      return step + 1, out, done, logits, cache, positions + 1, seen, cstate, rng

    out = jnp.full((batch, steps), -1, jnp.int32)
    carry = (jnp.int32(0), out, jnp.zeros((batch,), bool), logits, cache, positions, seen, cstate, rng)
    return jax.lax.while_loop(cond, body, carry)[1]

  # --- beam search ----------------------------------------------------------------------------
  def _beam_fn(self, params, cache, logits, positions, rows, seen, cstate, *, steps: int, beams: int):
    return beam.search(self, params, cache, logits, positions, rows, seen, cstate, steps=steps, beams=beams)

  # --- requests -------------------------------------------------------------------------------
  def _check(self, requests: Sequence[Request]) -> None:
    for i, r in enumerate(requests):
      if len(r.prompt) == 0:
        raise GenerationError(f"request {i}: empty prompt (it needs at least <s>)")
      if max(r.prompt) >= self.config.predictable_vocab_size or min(r.prompt) < 0:
        raise GenerationError(f"request {i}: prompt ids outside [0, {self.config.predictable_vocab_size})")
      if len(r.prompt) + r.settings.max_new_tokens > self.config.max_position_embeddings:
        raise GenerationError(f"request {i}: prompt ({len(r.prompt)} tokens) + max_new_tokens "
                              f"({r.settings.max_new_tokens}) exceed the model's max_position_embeddings="
                              f"{self.config.max_position_embeddings}")
      if r.modality is not None and self.tables is None:
        raise SettingsError(f"request {i} asks for {r.modality} but this generator has no constraint tables")

  def generate(self, requests: Sequence[Request], seed: int = 0, params: Any = None) -> list[Output]:
    """Outputs in request order; beam requests (num_beams > 1) are batched by beam count.

    params: other parameters of the same model placed like `self.params` (the trainer's, as
      they change), instead of the ones given at construction; the compiled programs are reused.
    In a multi-process run every process calls this with the same requests and seed.
    """
    self._check(requests)
    if params is not None:  # a no-op for arrays already placed so (the trainer's are)
      self.params = jax.device_put(params, self.param_shardings)
    outputs: list[Output | None] = [None] * len(requests)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault(r.settings.num_beams, []).append(i)
    for beams, indices in sorted(groups.items()):
      chunk = [requests[i] for i in indices]
      results = self._run(chunk, beams, seed) if beams > 1 else self._run(chunk, 1, seed)
      for i, out in zip(indices, results):
        outputs[i] = out
    return outputs

  def _run(self, requests: Sequence[Request], beams: int, seed: int) -> list[Output]:
    prompts = [list(map(int, r.prompt)) for r in requests]
    expanded = [p for p in prompts for _ in range(beams)]
    multiple = math.lcm(beams, self.batch_multiple)
    rows = round_up(len(expanded), multiple)
    rows = next((b for b in self.row_buckets if b >= rows and b % multiple == 0), rows)
    prompt_len = round_up(max(map(len, prompts)), self.length_bucket)
    steps = round_up(max(r.settings.max_new_tokens for r in requests), self.length_bucket)
    tokens, positions, segments = left_pad(expanded, prompt_len, rows)
    settings = row_settings([r.settings for r in requests for _ in range(beams)], rows)
    modalities = [r.modality for r in requests for _ in range(beams)] + [None] * (rows - len(expanded))
    seen = seen_ids(expanded, rows, self.config.vocab_size)
    cstate = cons.initial_state(self.tables, modalities, jnp) if self.tables is not None else None
    with self._context():
      cache = self.init_cache(rows, prompt_len + steps)
      start = time.perf_counter()
      logits, cache = self._prefill(self.params, cache, tokens, positions, segments)
      logits.block_until_ready()
      prefill_s = time.perf_counter() - start
      start = time.perf_counter()
      next_positions = jnp.asarray(positions[:, -1] + 1)
      if beams > 1:
        out, scores = self._beam(self.params, cache, logits, next_positions, settings, seen, cstate,
                                 steps=steps, beams=beams)
        out, scores = _to_host(out), _to_host(scores)
      else:
        out = _to_host(self._decode(self.params, cache, logits, next_positions, settings, seen, cstate,
                                      jax.random.key(seed), steps=steps))
        scores = None
      decode_s = time.perf_counter() - start
    results = []
    for i, r in enumerate(requests):
      generated = [int(t) for t in out[i] if t >= 0][:r.settings.max_new_tokens]
      stopped = bool(generated) and generated[-1] in r.settings.stop_ids
      results.append(Output(generated, "stop" if stopped else "length", prefill_s, decode_s,
                            None if scores is None else float(scores[i])))
    return results
