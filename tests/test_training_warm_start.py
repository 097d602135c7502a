"""Warm start (parameters only): from a HuggingFace LLaMA-2 directory (text-only, vocabulary grown
to the layout) and from another run's checkpoint (chat rows grown for SFT). Every other layout is
in test_import_layouts.py."""

import jax
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax import partitioning
from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
from anygpt_jax.model import Transformer, get_config, hf_config_dict
from anygpt_jax.training import loop
from anygpt_jax.weights import SourceConfigError
from anygpt_jax.weights.warm_start import warm_start_params
from anygpt_jax.training.optimizer import make_optimizer
from anygpt_jax.training.train_state import TrainState
from anygpt_jax.vocabulary.layout import VocabularyLayout

LAYOUT = VocabularyLayout(text_vocab_size=100)


def _abstract(config):
  mesh = partitioning.create_mesh({"data": -1, "fsdp": 2})
  rules = partitioning.logical_axis_rules()
  model = Transformer(config)
  with partitioning.use_mesh(mesh, rules):
    boxed = partitioning.abstract_params(model, (1, 8))
    shardings = partitioning.logical_to_sharding(boxed, mesh, rules)
  import flax.linen as nn
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)


def test_text_only_llama_directory_is_expanded_to_the_layout(tmp_path):
  config = get_config("tiny").with_vocabulary(LAYOUT)
  hf_kwargs = hf_config_dict(config, vocab_size=LAYOUT.text_vocab_size)
  torch.manual_seed(0)
  hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_kwargs))
  hf_model.save_pretrained(tmp_path / "llama")  # the published layout: config.json + model.safetensors
  params = warm_start_params(str(tmp_path / "llama"), config=config, layout=LAYOUT,
                             abstract_params=_abstract(config))
  embedding = np.asarray(params["embed_tokens"]["embedding"])
  head = np.asarray(params["lm_head"]["kernel"])
  assert embedding.shape == (LAYOUT.padded_vocab_size, config.hidden_size)
  assert head.shape == (config.hidden_size, LAYOUT.padded_vocab_size)
  hf_embedding = hf_model.model.embed_tokens.weight.detach().numpy()
  np.testing.assert_array_equal(embedding[:100], hf_embedding)
  np.testing.assert_array_equal(head[:, :100], hf_model.lm_head.weight.detach().numpy().T)
  new_rows = embedding[100:LAYOUT.vocab_size]
  assert np.all(np.abs(new_rows).sum(axis=1) > 0)  # modality rows initialised, not left at zero
  assert np.all(embedding[LAYOUT.vocab_size:] == 0)  # sharding padding
  norm = hf_model.model.layers[0].input_layernorm.weight.detach().numpy()
  assert params["layers"]["input_layernorm"]["scale"][0].shape == norm.shape


def test_a_checkpoint_with_the_wrong_text_vocabulary_is_rejected(tmp_path):
  config = get_config("tiny").with_vocabulary(LAYOUT)
  hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(config, vocab_size=90)))
  hf_model.save_pretrained(tmp_path / "llama")
  with pytest.raises(SourceConfigError, match="vocab_size=90 but the model's vocabulary layout takes 100"):
    warm_start_params(str(tmp_path / "llama"), config=config, layout=LAYOUT, abstract_params=_abstract(config))
  with pytest.raises(FileNotFoundError, match="nothing: no such checkpoint directory"):
    warm_start_params(str(tmp_path / "nothing"), config=config, layout=LAYOUT, abstract_params=_abstract(config))


def test_parameters_of_another_run(tmp_path):
  config = get_config("tiny").with_vocabulary(LAYOUT)
  abstract = _abstract(config)
  mesh = partitioning.create_mesh({"data": -1})
  params, _ = partitioning.init_params(Transformer(config), jax.random.key(3), mesh,
                                       partitioning.logical_axis_rules(), (1, 8))
  tx = make_optimizer(learning_rate=1e-3)
  checkpoints = Checkpoints(str(tmp_path / "pretrain"), CheckpointConfig(async_save=False))
  checkpoints.save(10, TrainState.create(params, tx.init(params)), None, "", LAYOUT, force=True)
  checkpoints.close()
  restored = warm_start_params(str(tmp_path / "pretrain"), source="run", config=config, layout=LAYOUT,
                               abstract_params=abstract)
  for a, b, target in zip(jax.tree.leaves(restored), jax.tree.leaves(params), jax.tree.leaves(abstract)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.is_equivalent_to(target.sharding, a.ndim)  # placed on the new run's mesh


def test_the_gin_name_still_reaches_the_training_loop():
  assert loop.warm_start_params is warm_start_params


@pytest.mark.parametrize("init", ["normal", "mean"])
def test_sft_from_a_pretraining_run_initialises_the_chat_rows(tmp_path, init):
  """A pretraining run (no chat tokens) warm-starts an SFT run (chat tokens): the two chat rows,
  padding in the source, are initialised like other new rows instead of staying zero."""
  chat = VocabularyLayout(text_vocab_size=100, chat_tokens=True)
  assert chat.padded_vocab_size == LAYOUT.padded_vocab_size  # same arrays, two more real rows
  base_config = get_config("tiny").with_vocabulary(LAYOUT)
  params, _ = partitioning.init_params(Transformer(base_config), jax.random.key(3),
                                       partitioning.create_mesh({"data": -1}), partitioning.logical_axis_rules(),
                                       (1, 8))
  tx = make_optimizer(learning_rate=1e-3)
  checkpoints = Checkpoints(str(tmp_path / "pretrain"), CheckpointConfig(async_save=False))
  checkpoints.save(10, TrainState.create(params, tx.init(params)), None, "", LAYOUT, force=True)
  checkpoints.close()
  config = get_config("tiny").with_vocabulary(chat)
  restored = warm_start_params(str(tmp_path / "pretrain"), source="run", new_rows_init=init, new_rows_std=0.5,
                               config=config, layout=chat, abstract_params=_abstract(config))
  embedding = np.asarray(restored["embed_tokens"]["embedding"])
  head = np.asarray(restored["lm_head"]["kernel"])
  source_embedding = np.asarray(params["embed_tokens"]["embedding"])
  np.testing.assert_array_equal(embedding[:LAYOUT.vocab_size], source_embedding[:LAYOUT.vocab_size])
  np.testing.assert_array_equal(head[:, :LAYOUT.vocab_size], np.asarray(params["lm_head"]["kernel"])[:, :LAYOUT.vocab_size])
  new = embedding[LAYOUT.vocab_size:chat.vocab_size]
  if init == "normal":  # drawn with std 0.5 (the source's untrained padding rows have 0.02)
    assert 0.2 < new.std() < 1.0 and 0.2 < head[:, LAYOUT.vocab_size:chat.vocab_size].std() < 1.0
  else:
    np.testing.assert_allclose(new, np.broadcast_to(source_embedding[:100].mean(0), new.shape), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(embedding[chat.vocab_size:], source_embedding[chat.vocab_size:])
  assert restored["embed_tokens"]["embedding"].sharding.is_equivalent_to(
      _abstract(config)["embed_tokens"]["embedding"].sharding, 2)
