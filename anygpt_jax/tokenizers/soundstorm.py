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

  def forward(self, x, mask=None):
    """x: (b, c, n); mask: bool (b, n), True on real frames: padding frames are zeroed before
    and after the convolution, so they never leak into real frames' outputs."""
    if mask is not None:
      x = x.masked_fill(~mask[:, None], 0.0)
    out = self.conv(F.pad(x, self.padding))
    return out if mask is None else out.masked_fill(~mask[:, None], 0.0)


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

  def forward(self, x, mask=None):
    """x: (b, n, dim); mask: optional bool (b, n) key-padding mask (True on real frames)."""
    depthwise = 4
    for i, layer in enumerate(self.net):
      x = layer(x, mask) if i == depthwise else layer(x)
    return x


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
    x = self.conv(x, mask=mask) + x
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
    """Loads a SoundStorm `.pt` state dict, in AnyGPT's layout or ours (detected from the keys), strictly."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
      state = state["state_dict"]
    state = state_dict_to_ours(state)
    model = cls(SoundStormConfig.from_state_dict(state, heads=heads))
    model.load_state_dict(state, strict=True)
    return model.eval()

  def _condition(self, semantic):
    pad = semantic == self.cfg.semantic_pad_id
    emb = self.semantic_token_emb(semantic.masked_fill(pad, 0))
    return emb.masked_fill(pad[..., None], 0.0)

  @torch.no_grad()
  def generate(self, semantic: torch.Tensor, prompt_codes: torch.Tensor | None = None, steps: int = 3,
               temperature: float = 1.0, top_k_keep: float = 0.7,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Fills the acoustic levels of `semantic` codes as AnyGPT's `SoundStorm.generate` does.

    The procedure (AnyGPT's soundstorm_speechtokenizer, with greedy=True as its voice_clone
    calls it):
      * level 1 takes steps + 1 passes; pass i re-masks floor(cos(pi/2 * i/steps) * n) codes,
        n counting every frame, the voice prompt's included. Every pass but the last samples
        from the top-k-filtered logits (k = ceil((1 - top_k_keep) * 1024)) with Gumbel noise at
        temperature `temperature * i / steps` (0 on the first pass: rising, not decaying), and
        writes its draws into every still-masked position of every level;
      * the confidence of a draw is its probability under the filtered distribution; the
        least confident positions are re-masked, ranked over all frames and all levels, the
        levels above the current one always re-masked and the prompt's codes never;
      * the last pass of level 1 and one pass per higher level are greedy; a level-q pass
        rewrites the codes of levels q..7 of every frame, the prompt's too.

    Args:
      semantic: int64 (b, n) RVQ-1 codes in [0, 1024).
      prompt_codes: optional int64 (b, m, 1 + num_quantizers): the full codes of a voice
        prompt (AnyGPT uses the whole prompt clip), frame-major.
      steps: passes of level 1 minus one (AnyGPT's generate_config: vc_steps 3).
      temperature: scale of the rising Gumbel temperature; 0 makes every pass an argmax.
      top_k_keep: AnyGPT's `topk_pres`.
      generator: torch RNG for the Gumbel noise.

    Returns:
      int64 (b, n, 1 + num_quantizers): the semantic codes followed by the generated levels.
    """
    b, n = semantic.shape
    nq = self.cfg.num_quantizers
    codes = torch.full((b, n, nq), self.mask_id, dtype=torch.long)
    todo = torch.ones((b, n, nq), dtype=torch.bool)
    cond_ids = semantic
    if prompt_codes is not None:
      cond_ids = torch.cat([prompt_codes[:, :, 0], semantic], dim=1)
      codes = torch.cat([prompt_codes[:, :, 1:].long(), codes], dim=1)
      todo = torch.cat([torch.zeros_like(prompt_codes[:, :, 1:], dtype=torch.bool), todo], dim=1)
    total = codes.shape[1]
    generated = todo.clone()  # the positions AnyGPT may ever re-mask (not the prompt's)
    cond = self.semantic_token_emb(cond_ids)
    times = torch.linspace(0.0, 1.0, steps + 1)
    remask_counts = (torch.cos(times * math.pi / 2) * total).long().tolist()
    for level in range(nq):
      counts = remask_counts if level == 0 else [0]
      for i, count in enumerate(counts):
        logits = self.net(codes, cond).reshape(b, total * nq, -1)
        if level > 0 or count == 0:
          sampled = logits.argmax(-1)
        else:
          logits = _top_k_filter(logits, top_k_keep)
          sampled = _gumbel_argmax(logits, temperature * i / steps, generator)
        sampled = sampled.reshape(b, total, nq)
        if level > 0:
          codes[:, :, level:] = sampled[:, :, level:]
          todo[:, :, level] = False
          continue
        codes = torch.where(todo, sampled, codes)
        if count == 0:
          continue
        # 1 - p(draw): the highest scores are re-masked first.
        scores = 1 - logits.softmax(-1).gather(-1, sampled.reshape(b, -1, 1)).squeeze(-1)
        ranks = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
        todo = (ranks < count).reshape(b, total, nq)
        todo[:, :, level + 1:] = True
        todo &= generated
        codes = codes.masked_fill(todo, self.mask_id)
    return torch.cat([semantic[:, :, None], codes[:, -n:]], dim=-1)


def _top_k_filter(logits, keep: float):
  """AnyGPT's top_k: the ceil((1 - keep) * vocab) largest logits, -inf elsewhere."""
  k = math.ceil((1 - keep) * logits.shape[-1])
  values, index = logits.topk(k, dim=-1)
  return torch.full_like(logits, float("-inf")).scatter_(-1, index, values)


# AnyGPT's conformer conv module splits upstream's `conv.net` Sequential in three around the
# masked depthwise convolution: net1 = (LayerNorm, Rearrange, Conv1d, GLU), ds_conv,
# net2 = (Swish, ChanLayerNorm, Conv1d, Rearrange, Dropout). Ours keeps upstream's indices.
_ANYGPT_CONV_KEYS = {"conv.net1.0.": "conv.net.0.", "conv.net1.2.": "conv.net.2.", "conv.ds_conv.conv.": "conv.net.4.conv.",
                     "conv.net2.1.": "conv.net.6.", "conv.net2.2.": "conv.net.7."}
_LOGITS_BIAS = "net.to_logits.2.bias"


def is_anygpt_layout(state: dict) -> bool:
  """True for AnyGPT's `soundstorm_speechtokenizer` keys (`conv.net1`, `conv.ds_conv`), False for ours."""
  anygpt = any(".conv.net1." in k or ".conv.ds_conv." in k for k in state)
  ours = any(".conv.net.4.conv." in k for k in state)
  if anygpt == ours:
    raise ValueError("SoundStorm state dict: cannot tell its layout (expected AnyGPT's conv.net1/conv.ds_conv/"
                     "conv.net2 keys or upstream's conv.net.{0,2,4.conv,6,7} keys)")
  return anygpt


def _renamed(state: dict, renames) -> dict:
  """`state` with the first matching (old, new) key fragment of `renames` replaced in each key."""
  renames = tuple(renames)
  out = {}
  for key, value in state.items():
    for old, new in renames:
      if old in key:
        key = key.replace(old, new)
        break
    out[key] = value
  return out


def state_dict_to_ours(state: dict) -> dict:
  """A state dict in our key layout: AnyGPT's conv keys renamed and its einops bias (1, 1, q, l) squeezed."""
  if not is_anygpt_layout(state):
    return dict(state)
  out = _renamed(state, _ANYGPT_CONV_KEYS.items())
  bias = out[_LOGITS_BIAS]
  out[_LOGITS_BIAS] = bias.reshape(bias.shape[-2:])
  return out


def state_dict_to_anygpt(state: dict) -> dict:
  """Our state dict in AnyGPT's layout (what its `load_soundstorm` reads)."""
  out = _renamed(state, ((ours, theirs) for theirs, ours in _ANYGPT_CONV_KEYS.items()))
  out[_LOGITS_BIAS] = out[_LOGITS_BIAS].reshape(1, 1, *out[_LOGITS_BIAS].shape)
  return out


def _gumbel_argmax(logits, temperature, generator):
  """AnyGPT's `gumbel_sample`: argmax(logits / max(temperature, 1e-10) + Gumbel noise).

  The noise is drawn at temperature 0 too (the first pass of level 1), where it only breaks exact
  ties, as AnyGPT draws it: so a seed gives AnyGPT's random stream, and its codes, on every later pass.
  """
  u = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10)
  return (logits / max(temperature, 1e-10) - torch.log(-torch.log(u))).argmax(-1)
