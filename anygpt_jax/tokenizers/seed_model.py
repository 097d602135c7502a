"""SEED-2 image quantizer (EVA-CLIP ViT-g -> causal Q-Former -> VQ 8192 x 32 -> unCLIP embedding).

Our own modules, named so that the released files load with their key names:
  * `seed_quantizer.pt` (AILab-CVC/seed-tokenizer-2): `query_tokens`, `Qformer.bert.*`,
    `quantize.embedding.weight`, `encode_task_layer.*`, `decode_task_layer.*`, `pos_embed`,
    `blocks.*`, `pos_embed_image`, `blocks_image.*`, `image_down.*`, `distill_image_proj.*`,
    `ln_vision.*`, and `visual_encoder.*` when the file carries the ViT.
  * `eva_vit_g.pth` (LAVIS' EVA-CLIP ViT-g, loaded separately by SEED when the quantizer file
    lacks the ViT): the same `visual_encoder.*` keys without the prefix.
Shapes follow `SeedConfig`; the defaults are the released sizes (ViT-g 1408 x 39 layers,
BERT-base Q-Former with cross-attention every other layer, 32 causal queries).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class SeedConfig:
  """Sizes of the SEED-2 quantizer; defaults are the released model's."""

  image_size: int = 224
  patch_size: int = 14
  vit_dim: int = 1408
  vit_depth: int = 39
  vit_heads: int = 16
  vit_mlp_dim: int = 6144  # int(1408 * 4.3637)
  qformer_dim: int = 768
  qformer_depth: int = 12
  qformer_heads: int = 12
  qformer_mlp_dim: int = 3072
  cross_attention_freq: int = 2
  num_query_tokens: int = 32
  codebook_size: int = 8192
  codebook_dim: int = 32
  decode_depth: int = 4
  decode_heads: int = 12
  image_features_dim: int = 1024

  @classmethod
  def from_state_dict(cls, state: dict, vit_heads: int = 16, qformer_heads: int = 12,
                      decode_heads: int = 12) -> "SeedConfig":
    """Every size but the head counts, read off the checkpoint's tensor shapes."""

    def depth(prefix):
      return 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))

    vit_dim, _, patch, _ = state["visual_encoder.patch_embed.proj.weight"].shape
    num_patches = state["visual_encoder.pos_embed"].shape[1] - 1
    layer = "Qformer.bert.encoder.layer."
    cross = sorted({int(k[len(layer):].split(".")[0]) for k in state if k.startswith(layer) and ".crossattention." in k})
    return cls(
        image_size=int(round(num_patches ** 0.5)) * patch, patch_size=patch, vit_dim=vit_dim,
        vit_depth=depth("visual_encoder.blocks."), vit_heads=vit_heads,
        vit_mlp_dim=state["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        qformer_dim=state["query_tokens"].shape[2], qformer_depth=depth(layer), qformer_heads=qformer_heads,
        qformer_mlp_dim=state[layer + "0.intermediate_query.dense.weight"].shape[0],
        cross_attention_freq=cross[1] - cross[0] if len(cross) > 1 else depth(layer),
        num_query_tokens=state["query_tokens"].shape[1], codebook_size=state["quantize.embedding.weight"].shape[0],
        codebook_dim=state["quantize.embedding.weight"].shape[1], decode_depth=depth("blocks_image."),
        decode_heads=decode_heads, image_features_dim=state["distill_image_proj.weight"].shape[0])


# --- EVA ViT (LAVIS eva_vit.py key names) ----------------------------------------------------
class _Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class _EvaAttention(nn.Module):
  """qkv without bias, separate q and v biases (k has none), as EVA/BEiT do."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, dim * 3, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, _ = x.shape
    bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
    q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class _TimmAttention(nn.Module):
  """Plain qkv-with-bias attention of SEED's vit.py (the decoding blocks)."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, dim * 3, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class _Block(nn.Module):

  def __init__(self, dim, heads, mlp_dim, attention_cls):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = attention_cls(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = _Mlp(dim, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):

  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
  """EVA-CLIP ViT-g without its head: (b, 3, H, W) -> (b, 1 + patches, vit_dim)."""

  def __init__(self, cfg: SeedConfig):
    super().__init__()
    patches = (cfg.image_size // cfg.patch_size) ** 2
    self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.vit_dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vit_dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, cfg.vit_dim))
    self.blocks = nn.ModuleList(
        [_Block(cfg.vit_dim, cfg.vit_heads, cfg.vit_mlp_dim, _EvaAttention) for _ in range(cfg.vit_depth)])

  def forward(self, x):
    x = self.patch_embed(x)
    x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
    for block in self.blocks:
      x = block(x)
    return x


# --- causal Q-Former (BERT key names of LAVIS' Qformer, query path only) -----------------------
class _BertSelfAttention(nn.Module):

  def __init__(self, dim, kv_dim, heads):
    super().__init__()
    self.heads = heads
    self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(kv_dim, dim), nn.Linear(kv_dim, dim)

  def forward(self, x, context, causal):
    b, n, _ = x.shape
    split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)
    q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return out.transpose(1, 2).reshape(b, n, -1)


class _BertSelfOutput(nn.Module):

  def __init__(self, in_dim, dim):
    super().__init__()
    self.dense, self.LayerNorm = nn.Linear(in_dim, dim), nn.LayerNorm(dim, eps=1e-12)

  def forward(self, h, residual):
    return self.LayerNorm(self.dense(h) + residual)


class _BertAttention(nn.Module):

  def __init__(self, dim, kv_dim, heads):
    super().__init__()
    self.self = _BertSelfAttention(dim, kv_dim, heads)
    self.output = _BertSelfOutput(dim, dim)

  def forward(self, x, context, causal=False):
    return self.output(self.self(x, context, causal), x)


class _BertIntermediate(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.dense = nn.Linear(dim, hidden)

  def forward(self, x):
    return F.gelu(self.dense(x))


class _QformerLayer(nn.Module):

  def __init__(self, cfg: SeedConfig, has_cross: bool):
    super().__init__()
    d = cfg.qformer_dim
    self.attention = _BertAttention(d, d, cfg.qformer_heads)
    if has_cross:
      self.crossattention = _BertAttention(d, cfg.vit_dim, cfg.qformer_heads)
    self.intermediate_query = _BertIntermediate(d, cfg.qformer_mlp_dim)
    self.output_query = _BertSelfOutput(cfg.qformer_mlp_dim, d)

  def forward(self, x, image_embeds):
    # SEED-2's Q-Former is causal over its 32 queries: query i sees queries 0..i only.
    x = self.attention(x, x, causal=True)
    if hasattr(self, "crossattention"):
      x = self.crossattention(x, image_embeds)
    return self.output_query(self.intermediate_query(x), x)


class _BertEmbeddings(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)


class _BertEncoder(nn.Module):

  def __init__(self, cfg: SeedConfig):
    super().__init__()
    self.layer = nn.ModuleList(
        [_QformerLayer(cfg, i % cfg.cross_attention_freq == 0) for i in range(cfg.qformer_depth)])


class _Bert(nn.Module):

  def __init__(self, cfg: SeedConfig):
    super().__init__()
    self.embeddings = _BertEmbeddings(cfg.qformer_dim)
    self.encoder = _BertEncoder(cfg)

  def forward(self, queries, image_embeds):
    x = self.embeddings.LayerNorm(queries)
    for layer in self.encoder.layer:
      x = layer(x, image_embeds)
    return x


class _Qformer(nn.Module):

  def __init__(self, cfg: SeedConfig):
    super().__init__()
    self.bert = _Bert(cfg)


class _Codebook(nn.Module):

  def __init__(self, n, dim):
    super().__init__()
    self.embedding = nn.Embedding(n, dim)


class SeedQuantizer(nn.Module):
  """The SEED-2 tokenizer: images -> 32 codes in [0, 8192); codes -> 1024-d unCLIP image embedding."""

  def __init__(self, cfg: SeedConfig = SeedConfig()):
    super().__init__()
    self.cfg = cfg
    d = cfg.qformer_dim
    self.visual_encoder = EvaViT(cfg)
    self.ln_vision = nn.LayerNorm(cfg.vit_dim)
    self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, d))
    self.Qformer = _Qformer(cfg)
    self.quantize = _Codebook(cfg.codebook_size, cfg.codebook_dim)
    self.encode_task_layer = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, cfg.codebook_dim))
    self.decode_task_layer = nn.Sequential(nn.Linear(cfg.codebook_dim, cfg.codebook_dim), nn.Tanh(),
                                           nn.Linear(cfg.codebook_dim, d))
    block = lambda: _Block(d, cfg.decode_heads, 4 * d, _TimmAttention)
    # `pos_embed`/`blocks` reconstruct the Q-Former features in training; kept so the file loads strictly.
    self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, d))
    self.blocks = nn.ModuleList([block() for _ in range(cfg.decode_depth)])
    self.pos_embed_image = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, d))
    self.blocks_image = nn.ModuleList([block() for _ in range(cfg.decode_depth)])
    self.image_down = nn.Sequential(nn.Linear(d, 256, bias=False), nn.ReLU(), nn.Linear(256, 128, bias=False),
                                    nn.ReLU(), nn.Linear(128, 32, bias=False))
    self.distill_image_proj = nn.Linear(cfg.num_query_tokens * 32, cfg.image_features_dim)

  @torch.no_grad()
  def encode(self, pixels: torch.Tensor) -> torch.Tensor:
    """float32 (b, 3, image_size, image_size), CLIP-normalised -> int64 (b, num_query_tokens) codes."""
    image_embeds = self.ln_vision(self.visual_encoder(pixels))
    queries = self.query_tokens.expand(pixels.shape[0], -1, -1)
    z = self.encode_task_layer(self.Qformer.bert(queries, image_embeds))
    codebook = self.quantize.embedding.weight
    dist = (z.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1) - 2 * z @ codebook.T)
    return dist.argmin(-1)

  @torch.no_grad()
  def unclip_embedding(self, codes: torch.Tensor) -> torch.Tensor:
    """int64 (b, num_query_tokens) codes -> float32 (b, image_features_dim) unCLIP image embedding."""
    x = self.decode_task_layer(self.quantize.embedding(codes)) + self.pos_embed_image
    for block in self.blocks_image:
      x = block(x)
    return self.distill_image_proj(self.image_down(x).reshape(codes.shape[0], -1))


# Keys the released files carry for the text/training path, which the tokenizer never uses.
_UNUSED_KEY_MARKERS = (".position_ids", "Qformer.cls.", ".word_embeddings.", ".position_embeddings.",
                       ".intermediate.dense.", ".output.dense.", ".output.LayerNorm.")


def _is_unused(key: str) -> bool:
  if ".attention.output." in key or ".crossattention.output." in key:
    return False
  return any(marker in key for marker in _UNUSED_KEY_MARKERS)


def load_seed_quantizer(seed_path: str, vit_path: str | None = None) -> SeedQuantizer:
  """Builds and loads SEED-2 from `seed_quantizer.pt` (+ `eva_vit_g.pth` if the ViT is not inside).

  Sizes are read off the tensors, so tiny test checkpoints load through the same code. Any
  missing key, or an unexpected one outside the known text-path keys, raises KeyError.
  """
  state = torch.load(seed_path, map_location="cpu", weights_only=True)
  if not any(k.startswith("visual_encoder.") for k in state):
    if vit_path is None:
      raise KeyError(f"{seed_path} has no visual_encoder.* weights: pass the EVA ViT-g checkpoint (eva_vit_g.pth)")
    vit_state = torch.load(vit_path, map_location="cpu", weights_only=True)
    state.update({f"visual_encoder.{k}": v for k, v in vit_state.items()})
  state = {k: v for k, v in state.items() if not _is_unused(k)}
  model = SeedQuantizer(SeedConfig.from_state_dict(state))
  missing, unexpected = model.load_state_dict(state, strict=False)
  # LAVIS' eva_vit_g.pth may carry head/norm weights the feature extractor never uses.
  unexpected = [k for k in unexpected if not k.startswith("visual_encoder.")]
  if missing or unexpected:
    raise KeyError(f"SEED checkpoint mismatch: missing {missing[:8]}, unexpected {unexpected[:8]}")
  return model.eval()
