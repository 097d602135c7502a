"""Warm start (parameters only): from a HuggingFace LLaMA-2 directory (text-only, vocabulary grown
to the layout) and from another run's checkpoint."""

import jax
import numpy as np
import pytest
import torch
import transformers

from anygpt_jax import partitioning
from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints
from anygpt_jax.model import Transformer, get_config, hf_config_dict
from anygpt_jax.training.loop import warm_start_params
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
  with pytest.raises(ValueError, match="90 embedding rows"):
    warm_start_params(str(tmp_path / "llama"), config=config, layout=LAYOUT, abstract_params=_abstract(config))
  with pytest.raises(FileNotFoundError, match="safetensors"):
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
