"""Importing weights from every layout a user has: HF safetensors and pytorch_model.bin (single and
sharded), Meta's consolidated.NN.pth + params.json; the source config checked field by field."""

import json
import os

import gin
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax.model import get_config, hf_config_dict, params_from_hf_state_dict
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.weights import SourceConfigError, WeightsFormatError, open_source
from anygpt_jax.weights.meta import meta_intermediate_size, write_meta_checkpoint
from anygpt_jax.weights.warm_start import import_params, warm_start_params

BASE = VocabularyLayout(text_vocab_size=100)  # AnyGPT-base's layout over a 100-piece tokenizer
CHAT = VocabularyLayout(text_vocab_size=100, chat_tokens=True)
# intermediate_size 192 is what Meta's FeedForward derives from dim=64, multiple_of=64.
CONFIG = get_config("tiny", intermediate_size=192).with_vocabulary(BASE)


def _hf_model(rows: int, seed: int = 0, **overrides) -> transformers.LlamaForCausalLM:
  torch.manual_seed(seed)
  kwargs = hf_config_dict(CONFIG, vocab_size=rows)
  kwargs.update(overrides)
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()


def _numpy_state_dict(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _save_bin(model, directory, shards: int = 1):
  """pytorch_model.bin (or -0000i-of-0000n.bin shards + index), as transformers 4.x and AnyGPT's
  trainer write them."""
  os.makedirs(directory, exist_ok=True)
  model.config.save_pretrained(directory)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if shards == 1:
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    return
  keys = list(state)
  weight_map = {}
  for i, part in enumerate(np.array_split(np.arange(len(keys)), shards)):
    name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
    torch.save({keys[j]: state[keys[j]] for j in part}, os.path.join(directory, name))
    weight_map.update({keys[j]: name for j in part})
  with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def _assert_trees_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], dict):
      _assert_trees_equal(a[k], b[k])
    else:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
def test_every_hf_layout_imports_bit_exact(tmp_path, layout):
  model = _hf_model(BASE.vocab_size)
  directory = tmp_path / layout
  if layout.startswith("safetensors"):
    model.save_pretrained(directory, max_shard_size="200KB" if layout.endswith("sharded") else "5GB")
  else:
    _save_bin(model, directory, shards=3 if layout.endswith("sharded") else 1)
  source = open_source(str(directory))
  assert source.kind == ("hf-safetensors" if layout.startswith("safetensors") else "hf-bin")
  assert (len(source.files) > 1) == layout.endswith("sharded")
  if layout.startswith("bin"):  # the fixture is the real layout: transformers itself loads it
    reloaded = transformers.LlamaForCausalLM.from_pretrained(directory)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
  expected = params_from_hf_state_dict(_numpy_state_dict(model), CONFIG)
  _assert_trees_equal(import_params(str(directory), CONFIG, BASE), expected)


def test_relative_paths_import(tmp_path, monkeypatch):
  _hf_model(BASE.vocab_size).save_pretrained(tmp_path / "hf")
  monkeypatch.chdir(tmp_path)
  params = import_params("hf", CONFIG, BASE)
  assert params["embed_tokens"]["embedding"].shape == (BASE.padded_vocab_size, CONFIG.hidden_size)


def _meta_params(rows=-1):
  return {"dim": CONFIG.hidden_size, "n_layers": CONFIG.num_layers, "n_heads": CONFIG.num_heads,
          "n_kv_heads": CONFIG.num_kv_heads, "multiple_of": 64, "norm_eps": CONFIG.rms_norm_eps,
          "vocab_size": rows}


def _meta_rope(x: np.ndarray, theta: float) -> np.ndarray:
  """Meta's `apply_rotary_emb`: consecutive pairs (2i, 2i+1) as complex numbers. x: [seq, heads, hd]."""
  seq, _, hd = x.shape
  freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
  angles = np.outer(np.arange(seq), freqs)  # [seq, hd/2]
  z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles)[:, None, :]
  return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def _hf_rope(x: np.ndarray, theta: float) -> np.ndarray:
  """HF's rotate-half RoPE. x: [seq, heads, hd]."""
  seq, _, hd = x.shape
  freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
  angles = np.concatenate([np.outer(np.arange(seq), freqs)] * 2, axis=-1)[:, None, :]
  half = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
  return x * np.cos(angles) + half * np.sin(angles)


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_layout_round_trip_and_rope_permutation(tmp_path, shards):
  """HF -> Meta (our writer, model-parallel shards like Meta's) -> import: bit-exact; and the Meta
  tensors written really are Meta's layout: Meta's RoPE on them gives HF's attention scores."""
  model = _hf_model(BASE.text_vocab_size)
  hf_sd = _numpy_state_dict(model)
  files = write_meta_checkpoint(hf_sd, _meta_params(), str(tmp_path / "meta"), num_shards=shards)
  assert files == [f"consolidated.{i:02d}.pth" for i in range(shards)]
  assert meta_intermediate_size(4096, 256) == 11008  # LLaMA-2 7B's params.json gives HF's width

  source = open_source(str(tmp_path / "meta"))
  assert source.kind == "meta"
  for key, value in hf_sd.items():
    np.testing.assert_array_equal(source.state_dict[key], value, err_msg=key)

  # Meta's interleaved RoPE on Meta's q/k == HF's rotate-half RoPE on HF's q/k (same scores).
  shard0 = torch.load(tmp_path / "meta" / files[0], weights_only=True)
  wq = np.concatenate([torch.load(tmp_path / "meta" / f, weights_only=True)["layers.0.attention.wq.weight"]
                       .numpy() for f in files])
  wk = np.concatenate([torch.load(tmp_path / "meta" / f, weights_only=True)["layers.0.attention.wk.weight"]
                       .numpy() for f in files])
  assert "tok_embeddings.weight" in shard0
  x = np.random.default_rng(0).normal(size=(7, CONFIG.hidden_size))
  hd, h, kv = CONFIG.resolved_head_dim, CONFIG.num_heads, CONFIG.num_kv_heads
  theta = CONFIG.rope_theta
  meta_q, meta_k = _meta_rope((x @ wq.T).reshape(7, h, hd), theta), _meta_rope((x @ wk.T).reshape(7, kv, hd), theta)
  hf_q = _hf_rope((x @ hf_sd["model.layers.0.self_attn.q_proj.weight"].T).reshape(7, h, hd), theta)
  hf_k = _hf_rope((x @ hf_sd["model.layers.0.self_attn.k_proj.weight"].T).reshape(7, kv, hd), theta)
  groups = h // kv
  meta_scores = np.einsum("shd,thd->hst", meta_q, np.repeat(meta_k, groups, axis=1))
  hf_scores = np.einsum("shd,thd->hst", hf_q, np.repeat(hf_k, groups, axis=1))
  np.testing.assert_allclose(meta_scores, hf_scores, rtol=1e-10, atol=1e-10)

  # Imported through the model: bit-exact with the HF import of the same weights, grown to the layout.
  ours = import_params(str(tmp_path / "meta"), CONFIG, BASE, seed=5)
  model.save_pretrained(tmp_path / "hf")
  _assert_trees_equal(ours, import_params(str(tmp_path / "hf"), CONFIG, BASE, seed=5))


@pytest.mark.parametrize("field,value,message", [
    ("rope_theta", 500000.0, "rope_theta=500000.0 but the model has rope_theta=10000.0"),
    ("rms_norm_eps", 1e-6, "rms_norm_eps=1e-06 but the model has rms_norm_eps=1e-05"),
    ("num_key_value_heads", 4, "num_key_value_heads=4 but the model has num_kv_heads=2"),
    ("intermediate_size", 128, "intermediate_size=128 but the model has intermediate_size=192"),
])
def test_a_source_config_that_differs_is_an_error_naming_the_field(tmp_path, field, value, message):
  kwargs = hf_config_dict(CONFIG, vocab_size=BASE.vocab_size)
  kwargs[field] = value
  directory = tmp_path / "hf"
  transformers.LlamaConfig(**kwargs).save_pretrained(directory)
  _hf_model(BASE.vocab_size).save_pretrained(tmp_path / "weights")
  os.rename(tmp_path / "weights" / "model.safetensors", directory / "model.safetensors")
  with pytest.raises(SourceConfigError, match="config.json") as error:
    import_params(str(directory), CONFIG, BASE)
  assert message in str(error.value)


def test_meta_params_json_is_checked(tmp_path):
  params = dict(_meta_params(), norm_eps=1e-6, rope_theta=500000.0)
  write_meta_checkpoint(_numpy_state_dict(_hf_model(BASE.text_vocab_size)), params, str(tmp_path / "meta"))
  with pytest.raises(SourceConfigError, match="params.json") as error:
    import_params(str(tmp_path / "meta"), CONFIG, BASE)
  assert "rope_theta=500000.0" in str(error.value) and "rms_norm_eps=1e-06" in str(error.value)


def test_a_vocabulary_that_fits_no_layout_names_the_tokenizer(tmp_path):
  _hf_model(90).save_pretrained(tmp_path / "hf")
  with pytest.raises(SourceConfigError) as error:
    import_params(str(tmp_path / "hf"), CONFIG, BASE)
  text = str(error.value)
  assert "vocab_size=90" in text and "100 (a text-only LLaMA" in text and f"{BASE.vocab_size} (AnyGPT-base" in text


def test_missing_and_unknown_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing"):
    open_source(str(tmp_path / "nothing"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "README.md").write_text("x")
  with pytest.raises(WeightsFormatError, match="consolidated.NN.pth"):
    open_source(str(tmp_path / "empty"))
  _save_bin(_hf_model(BASE.vocab_size), tmp_path / "noconfig")
  os.remove(tmp_path / "noconfig" / "config.json")
  with pytest.raises(WeightsFormatError, match="no config.json"):
    open_source(str(tmp_path / "noconfig"))


@pytest.mark.parametrize("init", ["normal", "mean"])
def test_sft_growth_from_an_anygpt_base_directory(tmp_path, init):
  """AnyGPT-base (text + roles + modalities) into the chat layout: two chat rows added, chosen in gin."""
  model = _hf_model(BASE.vocab_size)
  model.save_pretrained(tmp_path / "base")
  config = CONFIG.with_vocabulary(CHAT)
  gin.clear_config()
  gin.parse_config(f"warm_start_params.path = '{tmp_path / 'base'}'\n"
                   f"warm_start_params.new_rows_init = '{init}'\nwarm_start_params.new_rows_std = 0.5")
  try:
    params = warm_start_params(config=config, layout=CHAT, abstract_params=None)
  finally:
    gin.clear_config()
  embedding, head = params["embed_tokens"]["embedding"], params["lm_head"]["kernel"]
  hf_embedding = model.model.embed_tokens.weight.detach().numpy()
  np.testing.assert_array_equal(embedding[:BASE.vocab_size], hf_embedding)
  np.testing.assert_array_equal(head[:, :BASE.vocab_size], model.lm_head.weight.detach().numpy().T)
  chat = embedding[BASE.vocab_size:CHAT.vocab_size]
  assert chat.shape == (2, config.hidden_size)
  if init == "normal":
    assert np.all(np.abs(chat).sum(axis=1) > 0) and 0.2 < chat.std() < 1.0
  else:
    np.testing.assert_allclose(chat, np.broadcast_to(hf_embedding[:100].mean(0), chat.shape), rtol=1e-5)
  assert not np.any(embedding[CHAT.vocab_size:])


def test_auto_source_tells_a_run_directory_from_a_published_layout(tmp_path):
  from anygpt_jax.weights.warm_start import detect_source
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  (tmp_path / "hf").mkdir()
  assert detect_source(tmp_path / "run") == "run"
  assert detect_source(tmp_path / "hf") == "hf"
  assert detect_source("relative/missing") == "hf"  # and the hf reader then names what it did not find
