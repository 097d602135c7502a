"""Export to a HuggingFace directory that transformers loads, with equal logits."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax.export import save_hf_checkpoint
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.vocabulary import VocabularyLayout
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

TEXTS = [f"a photo of {w} number {i} on a sunny day, spoken slowly" for i in range(200)
         for w in ("cat", "dog", "violin", "street")]


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
  spm_path = train_llama_like_sentencepiece(TEXTS, str(tmp_path / "spm"), vocab_size=300)
  layout = VocabularyLayout(text_vocab_size=300)
  cfg = get_config("tiny").with_vocabulary(layout)
  model = Transformer(cfg)
  params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  out = save_hf_checkpoint(params, cfg, layout, str(tmp_path / "hf"), spm_path=spm_path, max_shard_bytes=2**20)

  index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
  assert len(set(index["weight_map"].values())) > 1, "a small shard size must give several shards"
  hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  assert hf.config.vocab_size == layout.vocab_size == 300 + 17418
  tokens = np.random.default_rng(0).integers(3, layout.vocab_size, size=(2, 20))
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32)))[..., :layout.vocab_size]
  assert np.max(np.abs(ours - theirs)) <= 1e-4

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  for token in ("[Human]", "<soim>", "<👀8191>", "<🗣️7>", "<eomu>"):
    assert tokenizer.convert_tokens_to_ids(token) == layout.special_token_to_id(token)
  assert len(tokenizer) == layout.vocab_size
  generation = json.load(open(os.path.join(out, "generation_config.json")))
  assert generation["eos_token_id"] == [2, layout.eos_id]


def test_exporting_again_into_the_same_directory_replaces_the_export(tmp_path):
  """As `make demo` run twice does: the second export replaces the first's files, shards included."""
  layout = VocabularyLayout(text_vocab_size=300)
  cfg = get_config("tiny").with_vocabulary(layout)
  model = Transformer(cfg)
  out = str(tmp_path / "hf")
  for seed, shard_bytes in ((0, 2**20), (1, 2**30)):
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]))
    save_hf_checkpoint(params, cfg, layout, out, max_shard_bytes=shard_bytes)
  assert sorted(os.listdir(out)) == sorted(["model-00001-of-00001.safetensors", "model.safetensors.index.json",
                                            "config.json", "generation_config.json", "anygpt_vocabulary.json",
                                            "config"])
  hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  tokens = np.arange(3, 19)[None]
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32)))[..., :layout.vocab_size]
  assert np.max(np.abs(ours - theirs)) <= 1e-4  # the second export's weights


def test_rope_theta_is_where_every_transformers_version_reads_it(tmp_path):
  """transformers 5 nests RoPE's base in `rope_parameters`; 4.x (AnyGPT's 4.34.1) reads only the
  top-level `rope_theta`. The export states both, and transformers 5 loads the base it was given."""
  layout = VocabularyLayout(text_vocab_size=300)
  cfg = get_config("tiny", rope_theta=500000.0).with_vocabulary(layout)
  params = jax.tree.map(np.asarray, nn.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  out = save_hf_checkpoint(params, cfg, layout, str(tmp_path / "hf"))
  written = json.load(open(os.path.join(out, "config.json")))
  assert written["rope_theta"] == 500000.0 and written["rope_parameters"]["rope_theta"] == 500000.0
  assert transformers.AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == 500000.0


@pytest.mark.slow
def test_export_command_on_a_trained_run(tmp_path):
  """anygpt-train a few steps, anygpt-export the run, load it in transformers: same logits."""
  import gin

  from test_train_cli import run_gin_text, write_run_inputs
  from tools import export_hf
  from tools import train as train_cli
  from anygpt_jax.cli.runs import load_run

  inputs = write_run_inputs(tmp_path)
  run_file = tmp_path / "run.gin"
  run_file.write_text(run_gin_text(inputs, steps=2))
  model_dir = tmp_path / "run"
  gin.clear_config()
  assert train_cli.main([f"--gin_file={run_file}", f"--gin.MODEL_DIR='{model_dir}'"]) == 0
  gin.clear_config()
  out = tmp_path / "hf"
  assert export_hf.main([f"--model_dir={model_dir}", f"--output_dir={out}", "--dtype=float32"]) == 0

  loaded = load_run(str(model_dir))
  config, params, layout = loaded.config, loaded.params, loaded.layout
  hf = transformers.LlamaForCausalLM.from_pretrained(str(out)).eval()
  tokens = np.random.default_rng(0).integers(3, layout.vocab_size, size=(1, 16))
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(Transformer(config).apply({"params": params}, jnp.asarray(tokens, jnp.int32)))
  assert np.max(np.abs(ours[..., :layout.vocab_size] - theirs)) <= 1e-4
  assert transformers.AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids("<soim>") == \
      layout.modality("image").start_id
