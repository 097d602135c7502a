"""The LLaMA-2 backbone in Flax, over AnyGPT's expanded vocabulary."""

from anygpt_jax.model.config import ConfigError, ModelConfig, config_names, get_config
from anygpt_jax.model.transformer import Transformer, mask_padded_vocab
from anygpt_jax.model.hf_convert import (ConversionError, hf_config_dict, hf_state_dict_from_params,
                                         params_from_hf_state_dict)
from anygpt_jax.model.vocab_expansion import expand_vocabulary
