"""The Flax LLaMA-2 against transformers' LlamaForCausalLM, packing, masking, configs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax.model import (ConfigError, ModelConfig, Transformer, expand_vocabulary, get_config,
                              hf_config_dict, hf_state_dict_from_params, params_from_hf_state_dict)
from anygpt_jax.testing.hf_reference import hf_logits, hf_reference_model
from anygpt_jax.vocabulary import VocabularyLayout

# GQA (4 query heads over 2 kv heads), untied head, padded vocabulary.
TINY = get_config("tiny", vocab_size=384, real_vocab_size=371, num_layers=3)


def _tokens(shape, high, seed=0):
  return np.random.default_rng(seed).integers(3, high, size=shape).astype(np.int32)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(scan_layers):
  cfg = dataclasses.replace(TINY, scan_layers=scan_layers)
  hf = hf_reference_model(cfg)
  params = params_from_hf_state_dict(hf.state_dict(), cfg)
  tokens = _tokens((2, 24), cfg.real_vocab_size)
  ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))
  theirs = hf_logits(hf, tokens)
  real = cfg.real_vocab_size
  assert np.max(np.abs(ours[..., :real] - theirs)) <= 1e-4
  assert np.all(ours[..., real:] <= -1e8), "padded vocabulary rows must never be predicted"


def test_state_dict_round_trip_loads_into_transformers():
  cfg = TINY
  params = Transformer(cfg).init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(np.asarray, nn.unbox(params))
  sd = hf_state_dict_from_params(params, cfg)
  assert sd["model.embed_tokens.weight"].shape == (cfg.real_vocab_size, cfg.hidden_size)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(cfg))).eval()
  missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=False)
  assert not unexpected and all("rotary" in k for k in missing)
  tokens = _tokens((1, 16), cfg.real_vocab_size, seed=3)
  ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))
  assert np.max(np.abs(ours[..., :cfg.real_vocab_size] - hf_logits(hf, tokens))) <= 1e-4
  back = params_from_hf_state_dict(sd, cfg)
  np.testing.assert_array_equal(back["layers"]["self_attn"]["q_proj"]["kernel"],
                                params["layers"]["self_attn"]["q_proj"]["kernel"])


@pytest.mark.parametrize("attention, chunk", [("xla", 0), ("xla", 4), ("dot_product", 0)])
def test_packed_segments_equal_samples_run_alone(attention, chunk):
  cfg = dataclasses.replace(TINY, attention=attention, attention_chunk=chunk)
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  a, b = _tokens((5,), cfg.real_vocab_size, 1), _tokens((7,), cfg.real_vocab_size, 2)
  length = 16
  tokens = np.zeros((1, length), np.int32)
  tokens[0, :5], tokens[0, 5:12] = a, b
  segments = np.array([[1] * 5 + [2] * 7 + [0] * 4], np.int32)
  positions = np.array([list(range(5)) + list(range(7)) + [0] * 4], np.int32)
  packed = np.asarray(model.apply({"params": params}, tokens, positions, segments))
  alone_a = np.asarray(model.apply({"params": params}, a[None]))
  alone_b = np.asarray(model.apply({"params": params}, b[None]))
  np.testing.assert_allclose(packed[0, :5], alone_a[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:12], alone_b[0], atol=1e-5)
  assert np.all(np.isfinite(packed)), "padding rows must not produce NaNs"


def test_packed_row_matches_transformers_per_segment():
  hf = hf_reference_model(TINY, seed=4)
  params = params_from_hf_state_dict(hf.state_dict(), TINY)
  a, b = _tokens((6,), TINY.real_vocab_size, 5), _tokens((9,), TINY.real_vocab_size, 6)
  tokens = np.concatenate([a, b])[None]
  segments = np.array([[1] * 6 + [2] * 9], np.int32)
  positions = np.array([list(range(6)) + list(range(9))], np.int32)
  ours = np.asarray(Transformer(TINY).apply({"params": params}, tokens, positions, segments))
  real = TINY.real_vocab_size
  assert np.max(np.abs(ours[0, :6, :real] - hf_logits(hf, a[None])[0])) <= 1e-4
  assert np.max(np.abs(ours[0, 6:, :real] - hf_logits(hf, b[None])[0])) <= 1e-4


@pytest.mark.parametrize("policy", ["full", "dots", "qkv_proj"])
def test_remat_policies_keep_gradients(policy):
  base = Transformer(TINY)
  remat = Transformer(dataclasses.replace(TINY, remat_policy=policy))
  params = base.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  tokens = jnp.asarray(_tokens((2, 12), TINY.real_vocab_size))

  def loss(model, p):
    logits = model.apply({"params": p}, tokens)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  g0 = jax.grad(lambda p: loss(base, p))(params)
  g1 = jax.grad(lambda p: loss(remat, p))(params)
  for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_last_only_logits_are_the_last_row_of_all_logits():
  """A prefill reads the last position's logits only; the head then runs on that position alone."""
  model = Transformer(TINY)
  tokens = jnp.asarray(_tokens((2, 8), TINY.real_vocab_size))
  variables = model.init(jax.random.key(0), tokens)
  every = model.apply(variables, tokens)
  last = model.apply(variables, tokens, last_only=True)
  assert last.shape == (2, 1, TINY.vocab_size)
  np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(every[:, -1]), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  model = Transformer(cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables)))
  tokens = jnp.asarray(_tokens((1, 8), cfg.real_vocab_size))
  bf16 = model.apply(variables, tokens)
  f32 = Transformer(TINY).apply(variables, tokens)
  assert bf16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(bf16 - f32)[..., :cfg.real_vocab_size])) < 0.05


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=100, num_heads=8), "does not divide hidden_size"),
    (dict(num_heads=8, num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=8"),
    (dict(real_vocab_size=1000), "real_vocab_size=1000"),
    (dict(attention="flash"), "attention='flash'"),
    (dict(attention_chunk=-1), "attention_chunk=-1"),
    (dict(remat_policy="some"), "remat_policy='some'"),
])
def test_inconsistent_config_is_a_clear_error(changes, message):
  with pytest.raises(ConfigError, match=message):
    dataclasses.replace(TINY, **changes)


def test_named_configs_have_llama2_sizes():
  seven_b = get_config("llama2-7b")
  assert seven_b.vocab_size == VocabularyLayout().padded_vocab_size == 49536
  assert seven_b.real_vocab_size == 49418
  # LLaMA-2 7B has 6.74B parameters with a 32000-row vocabulary.
  text_only = seven_b.replace(vocab_size=32000, real_vocab_size=32000)
  assert abs(text_only.num_params() - 6.738e9) / 6.738e9 < 1e-3
  seventy = get_config("llama2-70b")
  assert (seventy.num_heads, seventy.num_kv_heads) == (64, 8)
  with pytest.raises(ConfigError, match="unknown model config"):
    get_config("llama3")


def test_vocabulary_expansion_keeps_text_rows_bit_for_bit():
  layout = VocabularyLayout(text_vocab_size=300, pad_multiple=128)
  rng = np.random.default_rng(0)
  text_params = {"embed_tokens": {"embedding": rng.normal(size=(300, 16)).astype(np.float32)},
                 "lm_head": {"kernel": rng.normal(size=(16, 300)).astype(np.float32)}, "norm": {"scale": np.ones(16)}}
  for init in ("normal", "mean"):
    out = expand_vocabulary(text_params, layout, init=init, std=0.5, seed=1)
    emb, head = out["embed_tokens"]["embedding"], out["lm_head"]["kernel"]
    assert emb.shape == (layout.padded_vocab_size, 16) and head.shape == (16, layout.padded_vocab_size)
    np.testing.assert_array_equal(emb[:300], text_params["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(head[:, :300], text_params["lm_head"]["kernel"])
    new = emb[300:layout.vocab_size]
    if init == "normal":
      assert abs(new.std() - 0.5) < 0.02
    else:
      np.testing.assert_allclose(new, np.broadcast_to(emb[:300].mean(0), new.shape), rtol=1e-5)
    assert not np.any(emb[layout.vocab_size:]), "padding rows are zero"
