"""Round trips through a run directory of ours: HF -> anygpt-import -> anygpt-export -> HF and
Meta -> orbax -> HF bit-exact in fp32; bf16 parity; the exported tokenizer gives the pipeline's ids."""

import json
import os
import stat

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax import partitioning
from anygpt_jax.data.rendering import reference_ids, render_reference_string
from anygpt_jax.data.shards import Part
from anygpt_jax.export import save_hf_checkpoint
from anygpt_jax.export.hf import save_tokenizer
from anygpt_jax.model import Transformer, get_config, hf_config_dict
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary, train_llama_like_sentencepiece
from anygpt_jax.weights.meta import write_meta_checkpoint
from anygpt_jax.weights.warm_start import warm_start_params
from tools import export_hf, import_weights

TEXTS = [f"a photo of {w} number {i} on a sunny day, spoken slowly" for i in range(200)
         for w in ("cat", "dog", "violin", "street")]
MODEL = "tiny"  # get_config('tiny'): GQA 4/2, scanned layers
OVERRIDES = {"intermediate_size": 192}  # what Meta's params.json gives for dim 64, multiple_of 64


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
  return train_llama_like_sentencepiece(TEXTS, str(tmp_path_factory.mktemp("spm") / "spm"), vocab_size=300)


def _layout(chat=False):
  return VocabularyLayout(text_vocab_size=300, chat_tokens=chat)


def _config(layout):
  return get_config(MODEL, **OVERRIDES).with_vocabulary(layout)


def _hf_model(layout, seed=0):
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(_config(layout),
                                                                                  vocab_size=layout.vocab_size)))
  with torch.no_grad():  # norms away from their all-ones init, so a lost norm would show
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  return model.eval()


def _state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _import(source, out, spm, chat=False):
  argv = [f"--source={source}", f"--output_dir={out}", f"--model={MODEL}", f"--spm={spm}"]
  argv += [f"--override={k}={v}" for k, v in OVERRIDES.items()] + (["--chat_tokens"] if chat else [])
  assert import_weights.main(argv) == 0


def _export(run, out, dtype="float32"):
  assert export_hf.main([f"--model_dir={run}", f"--output_dir={out}", f"--dtype={dtype}",
                         "--max_shard_gb=0.002"]) == 0


def _exported_tensors(directory):
  from safetensors.numpy import load_file
  index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
  out = {}
  for name in sorted(set(index["weight_map"].values())):
    out.update(load_file(os.path.join(directory, name)))
  assert set(out) == set(index["weight_map"])
  return out


def test_hf_import_export_round_trip_is_bit_exact(tmp_path, spm, monkeypatch):
  """Relative paths throughout, as a user types them."""
  layout = _layout()
  model = _hf_model(layout)
  model.save_pretrained(tmp_path / "hf-in", max_shard_size="300KB")
  monkeypatch.chdir(tmp_path)
  _import("hf-in", "run", spm)
  _export("run", "hf-out")

  source, exported = _state_dict(model), _exported_tensors("hf-out")
  assert source.keys() == exported.keys()
  for key in source:
    assert exported[key].dtype == np.float32
    np.testing.assert_array_equal(exported[key], source[key], err_msg=key)

  files = [os.path.join(root, f) for root, _, names in os.walk("hf-out") for f in names]
  assert len([f for f in files if f.endswith(".safetensors")]) > 1
  assert not [f for f in files if f.endswith(".tmp")]
  assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o644 for f in files), "exported files are 0644"
  config = json.load(open("hf-out/config.json"))
  assert config["vocab_size"] == layout.vocab_size and config["rms_norm_eps"] == 1e-5
  music = json.load(open("hf-out/config/music_generate_config.json"))
  assert (music["top_k"], music["repetition_penalty"], music["max_new_tokens"]) == (200, 1.15, 2000)
  image = json.load(open("hf-out/config/image_generate_config.json"))
  assert (image["top_p"], image["max_new_tokens"]) == (1.0, 200)
  generation = json.load(open("hf-out/generation_config.json"))
  assert generation["eos_token_id"] == [2, layout.eos_id] == music["eos_token_id"]
  assert json.load(open("hf-out/tokenizer_config.json"))["legacy"] is True  # AnyGPT's mode (transformers 4.34.1), the pipeline's default

  # The command's default dtype (bfloat16): every weight is the float32 one rounded to nearest, so
  # test_bf16_export_parity's logits tolerance holds for what users get without --dtype.
  assert export_hf.main(["--model_dir=run", "--output_dir=hf-default", "--max_shard_gb=0.002"]) == 0
  default = _exported_tensors("hf-default")
  written = json.load(open("hf-default/config.json"))
  assert written.get("torch_dtype", written.get("dtype")) == "bfloat16"
  for key in source:
    assert default[key].dtype == ml_dtypes.bfloat16, key
    np.testing.assert_array_equal(default[key], source[key].astype(ml_dtypes.bfloat16), err_msg=key)

  # anygpt-train's warm start reads the imported run directory: the same parameters, placed.
  config = _config(layout)
  mesh = partitioning.create_mesh({"data": -1})
  with partitioning.use_mesh(mesh, partitioning.logical_axis_rules()):
    boxed = partitioning.abstract_params(Transformer(config), (1, 8))
    shardings = partitioning.logical_to_sharding(boxed, mesh, partitioning.logical_axis_rules())
  import flax.linen as nn
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
                          shardings)
  params = warm_start_params("run", source="run", config=config, layout=layout, abstract_params=abstract)
  np.testing.assert_array_equal(np.asarray(params["embed_tokens"]["embedding"])[:layout.vocab_size],
                                source["model.embed_tokens.weight"])


def test_meta_import_export_round_trip_is_bit_exact(tmp_path, spm):
  """Meta's layout (two model-parallel shards, q/k in Meta's RoPE order) -> orbax -> HF."""
  layout = _layout()
  model = _hf_model(layout, seed=1)
  config = _config(layout)
  params = {"dim": config.hidden_size, "n_layers": config.num_layers, "n_heads": config.num_heads,
            "n_kv_heads": config.num_kv_heads, "multiple_of": 64, "norm_eps": config.rms_norm_eps,
            "vocab_size": layout.vocab_size}
  write_meta_checkpoint(_state_dict(model), params, str(tmp_path / "meta"), num_shards=2)
  _import(tmp_path / "meta", tmp_path / "run", spm)
  # What a training run's config.gin adds: its packed length and the data pipeline's text mode.
  with open(tmp_path / "run" / "config.gin", "a") as f:
    f.write("TrainInput.task_feature_lengths = {'targets': 4500}\nregister_corpora.legacy = True\n")
  _export(tmp_path / "run", tmp_path / "hf")
  exported = _exported_tensors(tmp_path / "hf")
  for key, value in _state_dict(model).items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  assert config.max_position_embeddings == 256
  assert json.load(open(tmp_path / "hf" / "config.json"))["max_position_embeddings"] == 4500
  assert json.load(open(tmp_path / "hf" / "tokenizer_config.json"))["legacy"] is True


def test_sft_import_grows_the_chat_rows_and_exports_them(tmp_path, spm):
  base, chat = _layout(), _layout(chat=True)
  model = _hf_model(base, seed=2)
  model.save_pretrained(tmp_path / "anygpt-base")
  _import(tmp_path / "anygpt-base", tmp_path / "run", spm, chat=True)
  _export(tmp_path / "run", tmp_path / "hf")
  exported = _exported_tensors(tmp_path / "hf")
  embedding = exported["model.embed_tokens.weight"]
  assert embedding.shape == (chat.vocab_size, 64)
  np.testing.assert_array_equal(embedding[:base.vocab_size], _state_dict(model)["model.embed_tokens.weight"])
  assert np.all(np.abs(embedding[base.vocab_size:]).sum(axis=1) > 0)  # initialised, not zero


def test_bf16_export_parity(tmp_path):
  """bf16 export: every weight is the fp32 weight rounded to nearest bf16 (exactly), and the logits
  of transformers on it are within 2e-2 of ours in fp32 (bf16 keeps 8 bits of mantissa: the weights'
  relative error is at most 2^-9; the stated tolerance is about 10x the logits' observed drift)."""
  layout = _layout()
  config = _config(layout)
  model = Transformer(config)
  params = jax.tree.map(np.asarray, partitioning.strip_boxes(
      model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]))
  save_hf_checkpoint(params, config, layout, str(tmp_path / "fp32"))
  save_hf_checkpoint(params, config, layout, str(tmp_path / "bf16"), dtype="bfloat16")
  fp32, bf16 = _exported_tensors(tmp_path / "fp32"), _exported_tensors(tmp_path / "bf16")
  for key in fp32:
    assert bf16[key].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf16[key], fp32[key].astype(ml_dtypes.bfloat16), err_msg=key)
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(3, layout.vocab_size, size=(2, 24))
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(model.apply({"params": params}, tokens.astype(np.int32)))[..., :layout.vocab_size]
  assert np.max(np.abs(ours - theirs)) <= 2e-2


def _samples():
  """Every template kind, with parts as shards carry them."""
  text = Part("text", text="a cat on a sunny day")
  items = {"image": Part("image", codes=[1, 8191, 7]), "speech": Part("speech", codes=[3, 1023]),
           "music": Part("music", codes=[0, 5, 8191, 2])}
  samples = []
  for modality, item in items.items():
    for to_text in (True, False):
      samples.append((f"{modality}_text", [item, text], "Describe it, please.", to_text))
  samples.append(("interleaved", [Part("text", text="A street photo"), items["image"],
                                  Part("text", text=" and a dog number 3.")], "", True))
  samples.append(("chat", [Part("text", text="You are a helpful dog.", role="system"),
                           Part("text", text="Say hi about ", role="user"), Part("image", codes=[4, 2], role="user"),
                           Part("text", text="<-Ins-> hi a cat <-Res-> hi", role="assistant"),
                           Part("speech", codes=[9, 8], role="assistant"),
                           Part("text", text="and the dog?", role="user"),
                           Part("text", text="a dog on a day", role="assistant")], "", True))
  return samples


@pytest.mark.parametrize("legacy", [False, True])
def test_exported_tokenizer_gives_the_pipelines_ids(tmp_path, spm, legacy):
  layout = _layout(chat=True)
  (tmp_path / "hf").mkdir()
  save_tokenizer(spm, layout, str(tmp_path / "hf"), legacy=legacy)  # what every export writes
  assert json.load(open(tmp_path / "hf" / "tokenizer_config.json"))["legacy"] is legacy
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  vocabulary = AnyGPTVocabulary(spm, chat_tokens=True, legacy=legacy)
  for kind, parts, instruction, to_text in _samples():
    string = render_reference_string(layout, kind, parts, instruction, to_text)
    expected = reference_ids(vocabulary, kind, parts, instruction, to_text)
    got = tokenizer(string)["input_ids"] + [tokenizer.eos_token_id]
    assert got == expected, (kind, to_text, string)
