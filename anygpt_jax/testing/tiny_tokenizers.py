"""Tiny random-weight checkpoints in the published file layouts, for tests and the demo.

Each `save_tiny_*` writes exactly the files (names, key names, config fields) the real release
has, with small sizes, so the loaders a user runs on the real weights are the ones tested:

  save_tiny_speech_tokenizer(dir)  -> dir/config.json + dir/SpeechTokenizer.pt        (16 kHz, 8 x 1024, 50 Hz)
  save_tiny_soundstorm(dir)        -> dir/speechtokenizer_soundstorm_mls.pt            (7 levels x 1024)
  save_tiny_encodec(dir)           -> dir/{config.json, preprocessor_config.json, model.safetensors}
                                      (32 kHz, 4 x 2048, 50 Hz, like facebook/encodec_32khz)
  save_tiny_seed(dir)              -> dir/seed_quantizer.pt + dir/eva_vit_g.pth      (32 codes of 8192)
  save_tiny_unclip(dir)            -> a stable-diffusion-2-1-unclip style diffusers directory

Codebooks are filled from the encoder's own outputs (a k-means-like init) so that random
models still emit varied codes: a freshly built codebook is all zeros and would map
everything to code 0.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

from anygpt_jax.tokenizers.seed_model import SeedConfig, SeedQuantizer
from anygpt_jax.tokenizers.soundstorm import SoundStorm, SoundStormConfig

SPEECH_CONFIG = {
    "n_filters": 8, "strides": [8, 5, 4, 2], "dimension": 32, "semantic_dimension": 16, "bidirectional": True,
    "dilation_base": 2, "residual_kernel_size": 3, "n_residual_layers": 1, "lstm_layers": 2, "activation": "ELU",
    "sample_rate": 16000, "n_q": 8, "codebook_size": 1024,
}
# The released model's constructor arguments (speechtokenizer_hubert_avg/config.json), for
# full-size random models in benchmarks.
RELEASED_SPEECH_CONFIG = {
    "n_filters": 64, "strides": [8, 5, 4, 2], "dimension": 1024, "semantic_dimension": 768, "bidirectional": True,
    "dilation_base": 2, "residual_kernel_size": 3, "n_residual_layers": 1, "lstm_layers": 2, "activation": "ELU",
    "sample_rate": 16000, "n_q": 8, "codebook_size": 1024,
}
SOUNDSTORM_CONFIG = SoundStormConfig(dim=32, depth=2, heads=8, dim_head=8, conv_kernel_size=7)
SEED_CONFIG = SeedConfig(vit_dim=32, vit_depth=2, vit_mlp_dim=64, qformer_dim=48, qformer_depth=2, qformer_mlp_dim=64,
                         decode_depth=1, image_features_dim=32)
SOUNDSTORM_FILE = "speechtokenizer_soundstorm_mls.pt"


def _dir(path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  return path


def _speechlike_noise(seconds: float, rate: int, gen: torch.Generator) -> torch.Tensor:
  """Amplitude-modulated noise plus tones: enough variety for codebook init. (1, 1, samples)."""
  n = int(seconds * rate)
  t = torch.arange(n) / rate
  envelope = 0.5 + 0.5 * torch.sin(2 * np.pi * 3 * t)
  tones = sum(torch.sin(2 * np.pi * f * t) for f in (180.0, 420.0, 950.0))
  return (0.1 * envelope * (tones / 3 + torch.randn(n, generator=gen)))[None, None]


def _init_codebooks_from(residual: torch.Tensor, codebooks: list[torch.Tensor], gen: torch.Generator,
                         quantize) -> None:
  """Fills each RVQ codebook with frames of the current residual (plus jitter), level by level.

  residual: float (frames, dim); codebooks: (codebook_size, dim) tensors written in place;
  quantize(level, residual) -> the quantized residual after the codebook is set.
  """
  for level, book in enumerate(codebooks):
    idx = torch.randint(0, residual.shape[0], (book.shape[0],), generator=gen)
    jitter = 0.05 * residual.std() * torch.randn(book.shape, generator=gen)
    book.copy_(residual[idx] + jitter)
    residual = residual - quantize(level, residual)


@torch.no_grad()
def save_tiny_speech_tokenizer(directory, seed: int = 0, config: dict | None = None) -> pathlib.Path:
  """Tiny SpeechTokenizer: `config.json` + `SpeechTokenizer.pt` (plain state dict). Returns the directory.

  `config` overrides the tiny sizes (e.g. `RELEASED_SPEECH_CONFIG` for a full-size random model).
  """
  config = dict(config or SPEECH_CONFIG)
  from anygpt_jax.tokenizers.speech import speechtokenizer_class
  out = _dir(directory)
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  model = speechtokenizer_class()(config).eval()
  emb = model.encoder(_speechlike_noise(4.0, 16000, gen))[0].T  # (frames, dim)
  layers = model.quantizer.vq.layers
  for layer in layers:
    layer._codebook.inited.fill_(1.0)

  def quantize(level, residual):
    return layers[level].decode(layers[level].encode(residual.T[None]))[0].T

  _init_codebooks_from(emb, [l._codebook.embed for l in layers], gen, quantize)
  for layer in layers:
    layer._codebook.embed_avg.copy_(layer._codebook.embed)
  (out / "config.json").write_text(json.dumps(config, indent=2))
  torch.save(model.state_dict(), out / "SpeechTokenizer.pt")
  return out


@torch.no_grad()
def save_tiny_soundstorm(directory, seed: int = 0) -> pathlib.Path:
  """Tiny SoundStorm state dict with AnyGPT's key names. Returns the `.pt` path."""
  out = _dir(directory)
  torch.manual_seed(seed)
  model = SoundStorm(SOUNDSTORM_CONFIG)
  path = out / SOUNDSTORM_FILE
  torch.save(model.state_dict(), path)
  return path


@torch.no_grad()
def save_tiny_encodec(directory, seed: int = 0) -> pathlib.Path:
  """Tiny Encodec in the `facebook/encodec_32khz` layout (32 kHz, 4 x 2048 codes at 50 Hz)."""
  from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel
  out = _dir(directory)
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  config = EncodecConfig(
      sampling_rate=32000, audio_channels=1, target_bandwidths=[2.2], codebook_size=2048, codebook_dim=16,
      hidden_size=16, num_filters=4, upsampling_ratios=[8, 5, 4, 4], num_lstm_layers=1, use_causal_conv=False,
      normalize=False, use_conv_shortcut=False, chunk_length_s=None, overlap=None, pad_mode="reflect",
      norm_type="weight_norm", residual_kernel_size=3, kernel_size=7, last_kernel_size=7, compress=2,
      dilation_growth_rate=2, num_residual_layers=1, trim_right_ratio=1.0)
  model = EncodecModel(config).eval()
  emb = model.encoder(_speechlike_noise(4.0, 32000, gen))[0].T  # (frames, dim)
  layers = model.quantizer.layers

  def quantize(level, residual):
    return layers[level].decode(layers[level].encode(residual.T[None]))[0].T

  _init_codebooks_from(emb, [l.codebook.embed for l in layers], gen, quantize)
  for layer in layers:
    layer.codebook.embed_avg.copy_(layer.codebook.embed)
    layer.codebook.inited.fill_(True)
  model.save_pretrained(out)
  _as_published_weight_norm(out / "model.safetensors")
  EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0, chunk_length_s=None,
                          overlap=None).save_pretrained(out)
  return out


def _as_published_weight_norm(path: pathlib.Path) -> None:
  """Renames weight-norm tensors to the keys the published `facebook/encodec_32khz` files (and
  transformers 4.x, AnyGPT's 4.34.1 among them) use, `weight_g`/`weight_v`, from the
  `parametrizations.weight.original0/1` that transformers 5 saves, so the tests load that layout."""
  from safetensors.torch import load_file, save_file
  renamed = {k.replace("parametrizations.weight.original0", "weight_g").replace(
      "parametrizations.weight.original1", "weight_v"): v for k, v in load_file(str(path)).items()}
  save_file(renamed, str(path), metadata={"format": "pt"})


@torch.no_grad()
def save_tiny_seed(directory, seed: int = 0, config: SeedConfig = SEED_CONFIG) -> pathlib.Path:
  """Tiny SEED-2: `seed_quantizer.pt` (everything but the ViT) + `eva_vit_g.pth` (the ViT, no prefix)."""
  out = _dir(directory)
  torch.manual_seed(seed)
  model = SeedQuantizer(config).eval()
  for p in (model.query_tokens, model.pos_embed, model.pos_embed_image, model.visual_encoder.cls_token,
            model.visual_encoder.pos_embed):
    p.normal_(std=0.5)
  # Spread the codebook over the range the encoder actually produces so codes vary.
  probe = torch.randn(16, 3, config.image_size, config.image_size)
  z = model.encode_task_layer(model.Qformer.bert(model.query_tokens.expand(16, -1, -1),
                                                 model.ln_vision(model.visual_encoder(probe))))
  z = z.reshape(-1, config.codebook_dim)
  model.quantize.embedding.weight.copy_(z.mean(0) + z.std(0) * torch.randn(config.codebook_size, config.codebook_dim))
  state = model.state_dict()
  vit = {k[len("visual_encoder."):]: v for k, v in state.items() if k.startswith("visual_encoder.")}
  rest = {k: v for k, v in state.items() if not k.startswith("visual_encoder.")}
  torch.save(rest, out / "seed_quantizer.pt")
  torch.save(vit, out / "eva_vit_g.pth")
  return out


def byte_level_alphabet() -> list[str]:
  """The 256 printable stand-ins byte-level BPE (GPT-2, CLIP) uses for the bytes 0..255."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return [chars[b] for b in range(256)]


def write_tiny_clip_tokenizer(directory: pathlib.Path) -> None:
  """A byte-level CLIP BPE vocabulary with no merges: every character is one token."""
  chars = byte_level_alphabet()
  vocab = {c: i for i, c in enumerate(chars)}
  vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "vocab.json").write_text(json.dumps(vocab))
  (directory / "merges.txt").write_text("#version: 0.2\n")


@torch.no_grad()
def save_tiny_unclip(directory, embedding_dim: int = SEED_CONFIG.image_features_dim, seed: int = 0,
                     sample_size: int = 32) -> pathlib.Path:
  """A tiny `stabilityai/stable-diffusion-2-1-unclip`-layout diffusers directory.

  `embedding_dim` is the unCLIP image-embedding size (1024 for the real model); it must match
  the SEED quantizer's `image_features_dim`. Images come out at `sample_size * 2` pixels.
  """
  from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline,
                         UNet2DConditionModel)
  from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
  from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                            CLIPVisionModelWithProjection)
  out = _dir(directory)
  torch.manual_seed(seed)
  tok_dir = out / "_tokenizer_src"
  write_tiny_clip_tokenizer(tok_dir)
  tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
  text_encoder = CLIPTextModel(CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
      projection_dim=32, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
  image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
      hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=embedding_dim,
      image_size=32, patch_size=4))
  unet = UNet2DConditionModel(
      sample_size=sample_size // 8 * 8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
      cross_attention_dim=32, attention_head_dim=(2, 4), class_embed_type="projection",
      projection_class_embeddings_input_dim=embedding_dim * 2, norm_num_groups=8)
  vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                      up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
                      sample_size=sample_size * 2)
  pipe = StableUnCLIPImg2ImgPipeline(
      feature_extractor=CLIPImageProcessor(crop_size=32, size=32), image_encoder=image_encoder,
      image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embedding_dim),
      image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=tokenizer,
      text_encoder=text_encoder, unet=unet,
      scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1), vae=vae)
  pipe.save_pretrained(out)
  for f in tok_dir.iterdir():
    f.unlink()
  tok_dir.rmdir()
  return out


def save_tiny_all(root) -> dict[str, pathlib.Path]:
  """Every tiny checkpoint under `root`: {'speech', 'soundstorm', 'music', 'image', 'unclip'} -> path."""
  root = _dir(root)
  return {
      "speech": save_tiny_speech_tokenizer(root / "speechtokenizer"),
      "soundstorm": save_tiny_soundstorm(root / "soundstorm"),
      "music": save_tiny_encodec(root / "encodec_32khz"),
      "image": save_tiny_seed(root / "seed_tokenizer"),
      "unclip": save_tiny_unclip(root / "stable-diffusion-2-1-unclip"),
  }
