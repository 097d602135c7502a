"""Model configurations: LLaMA-2 sizes and small ones for tests, demos and benchmarks."""

from __future__ import annotations

import dataclasses

from anygpt_jax.errors import UserError
from anygpt_jax.vocabulary.layout import VocabularyLayout

ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "qkv_proj")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(UserError, ValueError):
  """A model configuration whose sizes do not fit together."""


# The fields that fix the parameters and what they compute. The others say how it is computed
# (precision of the matmuls, attention kernel, rematerialisation) or only record (positions, init).
ARCHITECTURE_FIELDS = ("vocab_size", "real_vocab_size", "hidden_size", "intermediate_size", "num_layers",
                       "num_heads", "num_kv_heads", "head_dim", "rope_theta", "rms_norm_eps", "param_dtype",
                       "scan_layers")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A LLaMA-2 decoder over AnyGPT's expanded vocabulary.

  Attributes:
    vocab_size: embedding and output-head rows, padded for sharding.
    real_vocab_size: rows that can be predicted; logits of rows at or above it are masked.
      None means all of `vocab_size`.
    hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads: the usual sizes;
      num_kv_heads < num_heads is grouped-query attention.
    head_dim: width of one head; None means hidden_size // num_heads.
    rope_theta: RoPE base (10000 for LLaMA-2).
    rms_norm_eps: RMSNorm epsilon (1e-5 for LLaMA-2 in HF's config).
    max_position_embeddings: the longest position the model is meant for (recorded for export).
    dtype: compute dtype of matmuls and activations; parameters stay `param_dtype`.
    attention: 'xla' (explicit masked softmax), 'dot_product' (jax.nn.dot_product_attention,
      XLA on CPU/TPU), 'cudnn' (the same function forced onto cuDNN flash attention; GPU only) or
      'splash' (the Pallas TPU splash attention kernel, `model/splash_attention.py`: no [L, L]
      scores; Pallas interpret mode when traced for a platform other than TPU).
    attention_chunk: the 'xla' implementation computes scores in query blocks of this many
      tokens, each against the keys up to its end (causality makes that exact); 0 disables.
    remat_policy: what the backward pass keeps per layer: 'none' keeps everything, 'full'
      recomputes the layer, 'dots'/'dots_with_no_batch_dims' keep matmul outputs,
      'qkv_proj' keeps the attention projections only.
    scan_layers: stack the layers under nn.scan (one compiled layer, a leading 'layers' axis
      on every layer parameter) instead of unrolling them.
    initializer_range: std of the normal init of every matrix (HF's initializer_range).
  """

  vocab_size: int = 49536
  real_vocab_size: int | None = 49418
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 4096
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "xla"
  attention_chunk: int = 128
  remat_policy: str = "none"
  scan_layers: bool = True
  initializer_range: float = 0.02

  def __post_init__(self):
    errors = []
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
      if getattr(self, name) < 1:
        errors.append(f"{name}={getattr(self, name)} must be positive")
    if self.head_dim is None and self.num_heads > 0 and self.hidden_size % self.num_heads:
      errors.append(f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}; "
                    "set head_dim explicitly or change the sizes")
    if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
      errors.append(f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}")
    if self.resolved_head_dim % 2:
      errors.append(f"head_dim={self.resolved_head_dim} must be even for rotary embeddings")
    if self.real_vocab_size is not None and not 0 < self.real_vocab_size <= self.vocab_size:
      errors.append(f"real_vocab_size={self.real_vocab_size} must be in (0, vocab_size={self.vocab_size}]")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      errors.append(f"attention={self.attention!r} not in {ATTENTION_IMPLEMENTATIONS}")
    if self.attention_chunk < 0:
      errors.append(f"attention_chunk={self.attention_chunk} must be >= 0")
    if self.remat_policy not in REMAT_POLICIES:
      errors.append(f"remat_policy={self.remat_policy!r} not in {REMAT_POLICIES}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        errors.append(f"{name}={getattr(self, name)!r} not in {DTYPES}")
    if errors:
      raise ConfigError("invalid ModelConfig: " + "; ".join(errors))

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim if self.head_dim is not None else self.hidden_size // max(self.num_heads, 1)

  @property
  def predictable_vocab_size(self) -> int:
    return self.vocab_size if self.real_vocab_size is None else self.real_vocab_size

  def with_vocabulary(self, layout: VocabularyLayout) -> "ModelConfig":
    """The same model over `layout`'s padded vocabulary, padded rows masked."""
    return dataclasses.replace(self, vocab_size=layout.padded_vocab_size, real_vocab_size=layout.vocab_size)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self, include_embedding: bool = True) -> int:
    """Parameter count (embedding and output head counted separately: they are untied)."""
    d, h, kv, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.resolved_head_dim
    attn = d * h * hd * 2 + d * kv * hd * 2
    mlp = 3 * d * self.intermediate_size
    per_layer = attn + mlp + 2 * d
    total = self.num_layers * per_layer + d
    if include_embedding:
      total += 2 * self.vocab_size * d
    return total

  def flops_per_token(self, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention scores and values.

    Attention counts 12 x layers x heads x head_dim x seq_len (forward 4, backward 8, per
    token), halved when causal, as in the PaLM/MaxText MFU convention. The embedding lookup
    is no matmul and is not counted; the output head is.
    """
    matmul_params = self.num_params(include_embedding=False) - (2 * self.num_layers + 1) * self.hidden_size
    matmul_params += self.vocab_size * self.hidden_size  # the output head
    attention = 12 * self.num_layers * self.num_heads * self.resolved_head_dim * seq_len
    if causal:
      attention /= 2
    return 6 * matmul_params + attention


def _llama2(hidden, inter, layers, heads, kv_heads) -> ModelConfig:
  return ModelConfig(hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv_heads, dtype="bfloat16", remat_policy="full")


_CONFIGS = {
    # The paper's backbone and its bigger siblings, over AnyGPT-base's 49418 rows padded to 49536.
    "llama2-7b": _llama2(4096, 11008, 32, 32, 32),
    "llama2-13b": _llama2(5120, 13824, 40, 40, 40),
    "llama2-70b": _llama2(8192, 28672, 80, 64, 8),
    # A 1B-class configuration for throughput/MFU measurements at length 4096.
    "1b": _llama2(2048, 5632, 22, 32, 4),
    # The benchmark configuration of the issue: 8 layers, width 512, GQA 8/4.
    "bench": ModelConfig(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=4),
    # Small enough to train on a laptop CPU in minutes (the demo).
    "demo": ModelConfig(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8, num_kv_heads=4,
                        max_position_embeddings=1024),
    # For unit tests: every feature (GQA, scan) at a size that compiles in seconds.
    "tiny": ModelConfig(vocab_size=512, real_vocab_size=500, hidden_size=64, intermediate_size=128,
                        num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=256),
}


def config_names() -> list[str]:
  return sorted(_CONFIGS)


def get_config(name: str, **overrides) -> ModelConfig:
  """A named configuration, optionally with fields replaced."""
  if name not in _CONFIGS:
    raise ConfigError(f"unknown model config {name!r}; known: {', '.join(config_names())}")
  return dataclasses.replace(_CONFIGS[name], **overrides)
