"""SoundStorm for SpeechTokenizer codes: fills RVQ layers 2..8 from layer 1 (AnyGPT's speech decoder).

AnyGPT decodes speech with the `soundstorm_speechtokenizer` variant of SoundStorm
(ZhangXInFD/soundstorm-speechtokenizer, itself derived from lucidrains/soundstorm-pytorch):
a Conformer over frames whose input is the sum of the 7 acoustic code embeddings plus a
semantic (RVQ-1) embedding, with one logit head per acoustic quantizer. We write our own
modules here instead of installing `soundstorm-pytorch`, because:
  * the pip package is lucidrains' variant, whose `SoundStorm` class and state-dict keys
    differ from the checkpoint AnyGPT ships (`semantic_token_emb`, `net.code_embeds`, ...),
  * it depends on audiolm-pytorch -> fairseq, which does not install here.
The module names below reproduce the checkpoint's key names exactly, e.g.
`net.conformer.layers.0.attn.fn.to_q.weight`, `net.to_logits.2.weight` (7, dim, 1024), so the
released `.pt` state dict loads with `strict=True`.

Decoding is MaskGIT-style confidence-based iterative unmasking: the first acoustic level is
sampled over `steps` iterations (cosine schedule, re-masking the least confident codes),
each further level is filled greedily in one pass, as the original `generate` does.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class SoundStormConfig:
  """Sizes of AnyGPT's checkpoint by default (conformer 1024 x 12, 8 heads of 128)."""

  dim: int = 1024
  depth: int = 12
  heads: int = 8
  dim_head: int = 128
  ff_mult: int = 4
  conv_expansion_factor: int = 2
  conv_kernel_size: int = 31
  codebook_size: int = 1024
  num_quantizers: int = 7
  num_semantic_token_ids: int = 1024
  semantic_pad_id: int = 1024

  @classmethod
  def from_state_dict(cls, state: dict, heads: int = 8) -> "SoundStormConfig":
    """Reads every size but the head count off the checkpoint's tensor shapes."""
    num_sem, dim = state["semantic_token_emb.weight"].shape
    num_q, _, codebook = state["net.to_logits.2.weight"].shape
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("net.conformer.layers."))
    inner = state["net.conformer.layers.0.attn.fn.to_q.weight"].shape[0]
    ff_hidden = state["net.conformer.layers.0.ff1.fn.fn.net.0.weight"].shape[0]
    conv_inner, _, kernel = state["net.conformer.layers.0.conv.net.4.conv.weight"].shape
    return cls(dim=dim, depth=depth, heads=heads, dim_head=inner // heads, ff_mult=ff_hidden // dim,
               conv_expansion_factor=conv_inner // dim, conv_kernel_size=kernel, codebook_size=codebook,
               num_quantizers=num_q, num_semantic_token_ids=num_sem, semantic_pad_id=num_sem)


# --- conformer (module attribute names are the checkpoint's key names) ----------------------
class _Swish(nn.Module):

  def forward(self, x):
    return x * x.sigmoid()


class _GLU(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.dim = dim

  def forward(self, x):
    out, gate = x.chunk(2, dim=self.dim)
    return out * gate.sigmoid()


class _Transpose(nn.Module):
  """(b, n, c) <-> (b, c, n); stands where the original has an einops Rearrange (no weights)."""

  def forward(self, x):
    return x.transpose(1, 2)


class _DepthWiseConv1d(nn.Module):

  def __init__(self, channels, kernel_size):
    super().__init__()
    self.padding = (kernel_size // 2, kernel_size // 2 - (kernel_size + 1) % 2)
    self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

  def forward(self, x):
    return self.conv(F.pad(x, self.padding))


class _ChanLayerNorm(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(1, dim, 1))

  def forward(self, x):
    var = torch.var(x, dim=1, unbiased=False, keepdim=True)
    mean = torch.mean(x, dim=1, keepdim=True)
    return (x - mean) * var.clamp(min=1e-6).rsqrt() * self.gamma


class _Scale(nn.Module):

  def __init__(self, scale, fn):
    super().__init__()
    self.scale, self.fn = scale, fn

  def forward(self, x, **kwargs):
    return self.fn(x, **kwargs) * self.scale


class _PreNorm(nn.Module):

  def __init__(self, dim, fn):
    super().__init__()
    self.fn, self.norm = fn, nn.LayerNorm(dim)

  def forward(self, x, **kwargs):
    return self.fn(self.norm(x), **kwargs)


def _rotate_half(x):
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat((-x2, x1), dim=-1)


class _Attention(nn.Module):

  def __init__(self, dim, heads, dim_head):
    super().__init__()
    self.heads = heads
    self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
    self.to_kv = nn.Linear(dim, heads * dim_head * 2, bias=False)
    self.to_out = nn.Linear(heads * dim_head, dim)

  def forward(self, x, mask=None, rotary=None):
    b, n, _ = x.shape
    q, k, v = (self.to_q(x), *self.to_kv(x).chunk(2, dim=-1))
    q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
    if rotary is not None:
      q = q * rotary.cos() + _rotate_half(q) * rotary.sin()
      k = k * rotary.cos() + _rotate_half(k) * rotary.sin()
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _FeedForward(nn.Module):

  def __init__(self, dim, mult):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(dim, dim * mult), _Swish(), nn.Dropout(0.0), nn.Linear(dim * mult, dim),
                             nn.Dropout(0.0))

  def forward(self, x):
    return self.net(x)


class _ConvModule(nn.Module):

  def __init__(self, dim, expansion, kernel_size):
    super().__init__()
    inner = dim * expansion
    self.net = nn.Sequential(
        nn.LayerNorm(dim), _Transpose(), nn.Conv1d(dim, inner * 2, 1), _GLU(dim=1),
        _DepthWiseConv1d(inner, kernel_size), _Swish(), _ChanLayerNorm(inner), nn.Conv1d(inner, dim, 1),
        _Transpose(), nn.Dropout(0.0))

  def forward(self, x):
    return self.net(x)


class _ConformerBlock(nn.Module):

  def __init__(self, cfg: SoundStormConfig):
    super().__init__()
    d = cfg.dim
    self.ff1 = _Scale(0.5, _PreNorm(d, _FeedForward(d, cfg.ff_mult)))
    self.attn = _PreNorm(d, _Attention(d, cfg.heads, cfg.dim_head))
    self.conv = _ConvModule(d, cfg.conv_expansion_factor, cfg.conv_kernel_size)
    self.ff2 = _Scale(0.5, _PreNorm(d, _FeedForward(d, cfg.ff_mult)))
    self.post_norm = nn.LayerNorm(d)

  def forward(self, x, mask=None, rotary=None):
    x = self.ff1(x) + x
    x = self.attn(x, mask=mask, rotary=rotary) + x
    x = self.conv(x) + x
    x = self.ff2(x) + x
    return self.post_norm(x)


class _Conformer(nn.Module):

  def __init__(self, cfg: SoundStormConfig):
    super().__init__()
    self.dim = cfg.dim
    self.layers = nn.ModuleList([_ConformerBlock(cfg) for _ in range(cfg.depth)])
    inv_freq = 1.0 / (10000 ** (torch.arange(0, cfg.dim_head, 2).float() / cfg.dim_head))
    self.register_buffer("inv_freq", inv_freq, persistent=False)

  def forward(self, x, mask=None):
    t = torch.arange(x.shape[1], device=x.device, dtype=self.inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, self.inv_freq)
    rotary = torch.cat((freqs, freqs), dim=-1)
    for block in self.layers:
      x = block(x, mask=mask, rotary=rotary)
    return x


class _PerQuantizerLogits(nn.Module):
  """EinMix('b n gq d -> b n gq l') of the original: one (d, l) matrix per quantizer."""

  def __init__(self, num_q, dim, codebook):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(num_q, dim, codebook) * dim ** -0.5)
    self.bias = nn.Parameter(torch.zeros(num_q, codebook))

  def forward(self, x):  # x: (b, n, q, d)
    return torch.einsum("bnqd,qdl->bnql", x, self.weight) + self.bias


class _ConformerWrapper(nn.Module):
  """Sums the per-quantizer code embeddings of each frame, runs the conformer, predicts all levels."""

  def __init__(self, cfg: SoundStormConfig):
    super().__init__()
    self.cfg = cfg
    self.conformer = _Conformer(cfg)
    self.num_codes_with_mask = cfg.codebook_size + 1
    self.code_embeds = nn.Embedding(self.num_codes_with_mask * cfg.num_quantizers, cfg.dim)
    self.register_buffer("quantizer_offsets", torch.arange(cfg.num_quantizers) * self.num_codes_with_mask,
                         persistent=False)
    self.heads = nn.Sequential(nn.Linear(cfg.dim, cfg.dim * cfg.num_quantizers))
    self.to_logits = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Identity(),
                                   _PerQuantizerLogits(cfg.num_quantizers, cfg.dim, cfg.codebook_size))

  def forward(self, codes, cond, mask=None):
    """codes: int64 (b, n, q) with mask id `codebook_size`; cond: (b, n, dim). Returns (b, n, q, codebook)."""
    b, n, q = codes.shape
    x = self.code_embeds(codes + self.quantizer_offsets).sum(dim=2) + cond
    x = self.conformer(x, mask=mask)
    x = self.heads(x).reshape(b, n, q, -1)
    x = self.to_logits[0](x)
    return self.to_logits[2](x)


class SoundStorm(nn.Module):
  """Acoustic-code generator conditioned on semantic codes (RVQ-1) and an optional voice prompt."""

  def __init__(self, cfg: SoundStormConfig = SoundStormConfig()):
    super().__init__()
    self.cfg = cfg
    self.net = _ConformerWrapper(cfg)
    self.semantic_token_emb = nn.Embedding(cfg.num_semantic_token_ids, cfg.dim)

  @property
  def mask_id(self) -> int:
    return self.cfg.codebook_size

  @classmethod
  def from_checkpoint(cls, path, heads: int = 8) -> "SoundStorm":
    """Loads AnyGPT's SoundStorm `.pt` (a plain state dict) with strict key checking."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model = cls(SoundStormConfig.from_state_dict(state, heads=heads))
    model.load_state_dict(state, strict=True)
    return model.eval()

  def _condition(self, semantic):
    pad = semantic == self.cfg.semantic_pad_id
    emb = self.semantic_token_emb(semantic.masked_fill(pad, 0))
    return emb.masked_fill(pad[..., None], 0.0)

  @torch.no_grad()
  def generate(self, semantic: torch.Tensor, prompt_codes: torch.Tensor | None = None, steps: int = 8,
               temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fills acoustic levels for `semantic` codes.

    Args:
      semantic: int64 (b, n) RVQ-1 codes in [0, 1024).
      prompt_codes: optional int64 (b, m, 1 + num_quantizers): the full codes of a voice
        prompt, frame-major (as `SpeechTokenizer.encode(...)` transposed); never re-masked.
      steps: MaskGIT iterations for the first acoustic level.
      temperature: Gumbel temperature of the first level (decays linearly to 0).
      generator: torch RNG for reproducible sampling.

    Returns:
      int64 (b, n, 1 + num_quantizers): the semantic codes followed by the generated levels.
    """
    b, n = semantic.shape
    nq = self.cfg.num_quantizers
    cond_ids, codes = semantic, torch.full((b, n, nq), self.mask_id, dtype=torch.long)
    fixed = torch.zeros((b, n, nq), dtype=torch.bool)
    if prompt_codes is not None:
      cond_ids = torch.cat([prompt_codes[:, :, 0], semantic], dim=1)
      codes = torch.cat([prompt_codes[:, :, 1:], codes], dim=1)
      fixed = torch.cat([torch.ones_like(prompt_codes[:, :, 1:], dtype=torch.bool), fixed], dim=1)
    cond = self._condition(cond_ids)
    codes = self._sample_level(codes, fixed, cond, 0, steps, temperature, generator)
    for level in range(1, nq):
      logits = self.net(codes, cond)[:, :, level]
      codes[:, :, level] = torch.where(fixed[:, :, level], codes[:, :, level], logits.argmax(-1))
    return torch.cat([semantic[:, :, None], codes[:, -n:]], dim=-1)

  def _sample_level(self, codes, fixed, cond, level, steps, temperature, generator):
    """MaskGIT on one level: sample all masked codes, keep the confident ones, re-mask the rest."""
    free = ~fixed[:, :, level]
    num_free = free.sum(dim=1)  # (b,)
    for step in range(steps):
      logits = self.net(codes, cond)[:, :, level].float()
      temp = temperature * (1 - step / steps)
      sampled = _gumbel_argmax(logits, temp, generator)
      masked_now = codes[:, :, level] == self.mask_id
      codes[:, :, level] = torch.where(masked_now & free, sampled, codes[:, :, level])
      remask = (num_free.float() * math.cos(math.pi / 2 * (step + 1) / steps)).long()
      if int(remask.max()) == 0:
        break
      probs = logits.softmax(-1).gather(-1, codes[:, :, level, None]).squeeze(-1)
      probs = probs.masked_fill(~free, float("inf"))  # prompt frames are never re-masked
      order = probs.argsort(dim=1)
      ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
      codes[:, :, level] = codes[:, :, level].masked_fill(ranks < remask[:, None], self.mask_id)
    return codes


def _gumbel_argmax(logits, temperature, generator):
  if temperature <= 0:
    return logits.argmax(-1)
  u = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10)
  return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
