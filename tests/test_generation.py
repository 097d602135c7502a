"""KV-cache decoding: equal to full-forward decoding and to transformers' generate; beam search
equal to brute force; constrained spans well-formed whatever the logits."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax.export import save_hf_checkpoint
from anygpt_jax.generation import DecodingSettings, Generator, Request, build_tables, find_spans
from anygpt_jax.generation import constraints as cons
from anygpt_jax.generation.hf import ModalityConstraintProcessor
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.tokenizers.music import unflatten_codes
from anygpt_jax.vocabulary import VocabularyLayout

LAYOUT = VocabularyLayout(text_vocab_size=300)
STOPS = (2, LAYOUT.eos_id)


def tiny_model(scan=True, **overrides):
  cfg = get_config("tiny", scan_layers=scan, **overrides).with_vocabulary(LAYOUT)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  # Larger weights than the init's 0.02 give peaked logits, so greedy choices are not near-ties.
  params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, params)
  return model, jax.tree.map(np.asarray, params)


def prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [[1] + list(rng.integers(3, 300, size=n - 1)) for n in lengths]


def full_forward(model, params, sequences, width=32):
  """Logits float32 [N, width, V] of the whole sequences, right-padded to one compiled shape
  (causality keeps the padding out of every real position's logits)."""
  tokens = np.zeros((len(sequences), width), np.int32)
  for i, s in enumerate(sequences):
    tokens[i, :len(s)] = s
  return np.asarray(_jitted_apply(model)({"params": params}, jnp.asarray(tokens)))


_JITTED = {}


def _jitted_apply(model):
  if model not in _JITTED:
    _JITTED[model] = jax.jit(model.apply)
  return _JITTED[model]


def full_forward_greedy(model, params, prompt, steps):
  """Greedy decoding that re-runs the whole sequence every step (no cache)."""
  ids = list(prompt)
  for _ in range(steps):
    ids.append(int(np.argmax(full_forward(model, params, [ids])[0, len(ids) - 1])))
  return ids[len(prompt):]


@pytest.mark.parametrize("scan", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_cache_greedy_equals_full_forward(scan):
  model, params = tiny_model(scan)
  gen = Generator(model, params)
  batch = prompts([5, 11, 3])
  settings = DecodingSettings(max_new_tokens=12)
  outs = gen.generate([Request(p, settings) for p in batch])
  for p, out in zip(batch, outs):
    assert out.tokens == full_forward_greedy(model, params, p, 12)
    assert out.finish_reason == "length"


def test_cache_greedy_equals_transformers_generate(tmp_path):
  model, params = tiny_model()
  out_dir = save_hf_checkpoint(params, model.config, LAYOUT, str(tmp_path / "hf"))
  hf = transformers.LlamaForCausalLM.from_pretrained(out_dir).eval()
  batch = prompts([4, 9, 6], seed=1)
  settings = [DecodingSettings(max_new_tokens=10, repetition_penalty=1.3, min_new_tokens=3, stop_ids=STOPS),
              DecodingSettings(max_new_tokens=7, stop_ids=STOPS),
              DecodingSettings(max_new_tokens=10, repetition_penalty=0.8, stop_ids=STOPS)]
  ours = Generator(model, params).generate([Request(p, s) for p, s in zip(batch, settings)])
  for p, s, out in zip(batch, settings, ours):
    with torch.no_grad():  # one prompt per call: transformers would penalise its padding ids too
      theirs = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=s.max_new_tokens,
                           min_new_tokens=s.min_new_tokens, repetition_penalty=s.repetition_penalty,
                           eos_token_id=list(STOPS), pad_token_id=0)
    assert out.tokens == theirs[0, len(p):].tolist()


def test_left_padded_batch_equals_transformers_batch(tmp_path):
  model, params = tiny_model()
  out_dir = save_hf_checkpoint(params, model.config, LAYOUT, str(tmp_path / "hf"))
  hf = transformers.LlamaForCausalLM.from_pretrained(out_dir).eval()
  batch = prompts([3, 8], seed=2)
  width = max(map(len, batch))
  ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
  tables = build_tables(LAYOUT, STOPS)
  requested = ["music", None]
  with torch.no_grad():
    theirs = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=14, pad_token_id=0,
                         eos_token_id=list(STOPS),
                         logits_processor=[ModalityConstraintProcessor(tables, width, 14, requested)])
  gen = Generator(model, params, constraints=tables)
  ours = gen.generate([Request(p, DecodingSettings(max_new_tokens=14, stop_ids=STOPS), m)
                       for p, m in zip(batch, requested)])
  for row, out in zip(theirs[:, width:].tolist(), ours):
    assert out.tokens == row[:len(out.tokens)] and all(t == 0 for t in row[len(out.tokens):])
  music = find_spans(LAYOUT, ours[0].tokens)
  assert ours[0].tokens[0] == LAYOUT.modality("music").start_id and music[0].closed
  assert len(music[0].codes) % 4 == 0 and ours[0].tokens[-1] in STOPS


def brute_force(model, params, prompt, stops, max_new, vocab, length_penalty=1.0):
  """The best-scoring continuation over every sequence of ids < vocab (full forward, no cache)."""
  candidates = [seq for n in range(1, max_new + 1) for seq in itertools.product(range(vocab), repeat=n)
                if not any(t in stops for t in seq[:-1]) and (n == max_new or seq[-1] in stops)]
  logp = jax.nn.log_softmax(full_forward(model, params, [list(prompt) + list(s) for s in candidates]), axis=-1)
  scores = [sum(float(logp[c, len(prompt) - 1 + i, t]) for i, t in enumerate(seq)) / len(seq) ** length_penalty
            for c, seq in enumerate(candidates)]
  best = int(np.argmax(scores))
  return list(candidates[best]), scores[best]


def test_beam_search_equals_brute_force():
  # Three predictable ids (the rest are padding rows): with 5 beams and 3 new tokens the beams
  # hold every live prefix, so the search is exact.
  cfg = get_config("tiny", vocab_size=8, real_vocab_size=3)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"])
  params = jax.tree.map(lambda x: np.asarray(x * 40 if x.ndim > 1 else x), params)
  gen = Generator(model, params)
  batch = [[1, 0, 1], [0, 1, 1, 0, 0], [1]]
  for lp in (1.0, 0.0):
    settings = DecodingSettings(num_beams=5, max_new_tokens=3, stop_ids=(2,), length_penalty=lp)
    outs = gen.generate([Request(p, settings) for p in batch])
    for p, out in zip(batch, outs):
      best, score = brute_force(model, params, p, (2,), 3, 3, lp)
      assert out.tokens == best
      assert out.score == pytest.approx(score, abs=1e-5)


def test_sampling_settings_per_row():
  model, params = tiny_model()
  gen = Generator(model, params)
  p = prompts([6])[0]
  greedy = DecodingSettings(max_new_tokens=8)
  top1 = DecodingSettings(do_sample=True, top_k=1, temperature=3.0, max_new_tokens=8)
  nucleus = DecodingSettings(do_sample=True, top_p=1e-6, max_new_tokens=8)
  hot = DecodingSettings(do_sample=True, temperature=50.0, max_new_tokens=8)
  outs = gen.generate([Request(p, s) for s in (greedy, top1, nucleus, hot, hot)], seed=0)
  assert outs[0].tokens == outs[1].tokens == outs[2].tokens  # top-1 and a tiny nucleus are greedy
  assert outs[3].tokens != outs[0].tokens and outs[3].tokens != outs[4].tokens
  again = gen.generate([Request(p, s) for s in (greedy, top1, nucleus, hot, hot)], seed=0)
  assert [o.tokens for o in again] == [o.tokens for o in outs]
  stop = outs[0].tokens[2]
  stopped = gen.generate([Request(p, greedy.replace(stop_ids=(stop,)))])[0]
  assert stopped.tokens == outs[0].tokens[:3] and stopped.finish_reason == "stop"
  later = gen.generate([Request(p, greedy.replace(stop_ids=(stop,), min_new_tokens=4))])[0]
  assert stop not in later.tokens[:4]


def check_span(layout, modality, tokens, stops):
  spans = find_spans(layout, tokens)
  assert len(spans) == 1 and spans[0].modality == modality and spans[0].closed, tokens
  assert tokens[0] == layout.modality(modality).start_id and tokens[-1] in stops
  codes = np.asarray(spans[0].codes)
  if modality == "image":
    assert len(codes) == 32
  elif modality == "music":
    assert unflatten_codes(codes).shape == (4, len(codes) // 4) and len(codes) > 0
  else:
    assert len(codes) > 0
  return codes


@pytest.mark.parametrize("max_new", [35, 47])
def test_constrained_spans_well_formed_from_the_model(max_new):
  model, params = tiny_model()
  tables = build_tables(LAYOUT, STOPS)
  gen = Generator(model, params, constraints=tables)
  hot = DecodingSettings(do_sample=True, temperature=100.0, max_new_tokens=max_new, stop_ids=STOPS)
  requests = [Request(p, hot, m) for p, m in zip(prompts([4, 7, 5, 6]), ["image", "speech", "music", "music"])]
  outs = gen.generate(requests, seed=max_new)
  for r, out in zip(requests, outs):
    check_span(LAYOUT, r.modality, out.tokens, STOPS)
    assert len(out.tokens) <= max_new


def test_constraints_well_formed_under_random_logits():
  """The state machine alone, fed arbitrary logits, only ever emits well-formed spans."""
  tables = build_tables(LAYOUT, STOPS)
  rng = np.random.default_rng(0)
  requested = ["image", "speech", "music", None, None, "music"]
  budget = 61
  state = cons.initial_state(tables, requested, jnp)
  out, done = [[] for _ in requested], np.zeros(len(requested), bool)
  for step in range(budget):
    logits = jnp.asarray(rng.normal(size=(len(requested), LAYOUT.padded_vocab_size)) * 30, jnp.float32)
    remaining = jnp.full((len(requested),), budget - step, jnp.int32)
    masked = cons.apply(tables, state, logits, remaining, jnp)
    token = np.asarray(jax.random.categorical(jax.random.key(step), masked))
    assert np.all(token < LAYOUT.vocab_size)
    for i, t in enumerate(token):
      if not done[i]:
        out[i].append(int(t))
        done[i] = t in STOPS
    state = cons.advance(tables, state, jnp.asarray(token), jnp)
  for m, tokens in zip(requested, out):
    if m:
      check_span(LAYOUT, m, tokens, STOPS)
    else:
      for span in find_spans(LAYOUT, tokens):  # free rows open spans themselves, legally
        assert span.modality != "image" or len(span.codes) <= 32


@pytest.mark.parametrize("budget", [2, 5, 6, 33, 34, 40])
def test_free_rows_open_only_spans_they_can_close(budget):
  """Outside a span, a start token is allowed only while its shortest span (image: start + 32 codes +
  end; speech: start + a code + end; music: start + a frame of 4 + end) fits the budget; with start
  tokens favoured, every span a free row opens closes."""
  tables = build_tables(LAYOUT, STOPS)
  starts = [r.start_id for r in LAYOUT.modality_ranges]
  needs = {r.modality.name: tables.min_span_tokens(r.modality.name) for r in LAYOUT.modality_ranges}
  assert needs == {"image": 34, "speech": 3, "music": 6}
  rng = np.random.default_rng(budget)
  state = cons.initial_state(tables, [None] * 8, jnp)
  out = [[] for _ in range(8)]
  for step in range(budget):
    logits = rng.normal(size=(8, LAYOUT.padded_vocab_size)) * 3
    logits[:, starts] += 40  # a model that wants to open a span whenever it may
    remaining = jnp.full((8,), budget - step, jnp.int32)
    mask = np.asarray(cons.allowed_mask(tables, state, remaining, jnp))
    free = np.asarray(state["mode"]) == cons.FREE
    for r in LAYOUT.modality_ranges:
      assert np.all(mask[free, r.start_id] == (budget - step >= needs[r.modality.name]))
    masked = cons.apply(tables, state, jnp.asarray(logits, jnp.float32), remaining, jnp)
    token = np.asarray(jax.random.categorical(jax.random.key(step), masked))
    for i, t in enumerate(token):
      out[i].append(int(t))
    state = cons.advance(tables, state, jnp.asarray(token), jnp)
  for tokens in out:
    assert all(span.closed for span in find_spans(LAYOUT, tokens)), tokens
