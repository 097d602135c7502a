"""The source checkpoint's own configuration against the model configuration it is loaded into.

A mismatch in any field that changes what the weights compute is an error naming the field, the
file and both values: a `rope_theta` of 5e5 loaded into a 1e4 model, or an `rms_norm_eps` of 1e-6
into 1e-5, gives a model that runs and is silently wrong.
"""

from __future__ import annotations

from typing import Mapping

from anygpt_jax.errors import UserError
from anygpt_jax.model.config import ModelConfig


class SourceConfigError(UserError, ValueError):
  """The source checkpoint's configuration differs from the model's."""


# (source config field, ModelConfig attribute, default when the file omits it: None = required).
# The defaults are HF LlamaConfig's, which is what transformers would use for the same file.
_FIELDS = (
    ("hidden_size", "hidden_size", None),
    ("num_attention_heads", "num_heads", None),
    ("num_key_value_heads", "num_kv_heads", "num_attention_heads"),
    ("num_hidden_layers", "num_layers", None),
    ("intermediate_size", "intermediate_size", None),
    ("rope_theta", "rope_theta", 10000.0),
    ("rms_norm_eps", "rms_norm_eps", 1e-6),
)


def _rope_theta(source: Mapping) -> float | None:
  if "rope_theta" in source:
    return source["rope_theta"]
  rope = source.get("rope_parameters") or {}  # transformers 5 nests it
  return rope.get("rope_theta")


def check_source_config(source: Mapping, config: ModelConfig, source_file: str,
                        allowed_rows: Mapping[int, str]) -> None:
  """Raises SourceConfigError listing every field of `source` that differs from `config`.

  Args:
    source: the source's config in HF `LlamaConfig` field names.
    config: the model the weights are loaded into.
    source_file: named in the error.
    allowed_rows: vocabulary sizes the source may have -> what each means (e.g.
      {32000: 'text-only LLaMA-2', 49418: 'AnyGPT-base'}).
  """
  errors = []
  values = dict(source)
  theta = _rope_theta(source)
  if theta is not None:
    values["rope_theta"] = theta
  for field, attr, default in _FIELDS:
    if field in values and values[field] is not None:
      value = values[field]
    elif isinstance(default, str):
      value = values.get(default)
    elif default is not None:
      value = default
    else:
      errors.append(f"{field} is not stated (the model has {attr}={getattr(config, attr)})")
      continue
    ours = getattr(config, attr)
    if float(value) != float(ours):
      errors.append(f"{field}={value} but the model has {attr}={ours}")
  head_dim = values.get("head_dim")
  if head_dim is not None and head_dim != config.resolved_head_dim:
    errors.append(f"head_dim={head_dim} but the model has head_dim={config.resolved_head_dim}")
  vocab = values.get("vocab_size")
  if vocab is not None and vocab not in allowed_rows:
    expected = ", ".join(f"{rows} ({what})" for rows, what in allowed_rows.items())
    errors.append(f"vocab_size={vocab} but the model's vocabulary layout takes {expected}")
  if values.get("tie_word_embeddings"):
    errors.append("tie_word_embeddings=True but LLaMA-2 and this model have a separate output head")
  if errors:
    raise SourceConfigError(f"{source_file} does not match the model configuration: " + "; ".join(errors))
