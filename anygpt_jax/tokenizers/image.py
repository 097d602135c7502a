"""Image tokenizer (SEED-2, 32 codes of 8192 per image) and de-tokenizer (SD-2.1 unCLIP).

Preprocessing is SEED's: resize to 224 x 224 (bicubic, no crop), scale to [0, 1], CLIP mean/std.
Decoding is SEED's: codes -> 1024-d unCLIP image embedding -> `StableUnCLIPImg2ImgPipeline`
(guidance 10, noise_level 0, 20 steps) loaded from a local `stable-diffusion-2-1-unclip` directory.
"""

from __future__ import annotations

import io
import pathlib
import re

import numpy as np
import torch
from PIL import Image

from anygpt_jax.tokenizers.media import MediaError, MediaRef
from anygpt_jax.tokenizers.seed_model import SeedQuantizer, load_seed_quantizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SEED_FILE = "seed_quantizer.pt"
VIT_FILE = "eva_vit_g.pth"


# What PIL raises for bytes it cannot decode (UnidentifiedImageError is an OSError; a cut-off
# file raises OSError "image file is truncated"; broken headers raise SyntaxError/ValueError).
# Only opening and decoding are guarded: anything else (a TypeError, an AttributeError, any error
# of the mode conversion after the pixels are decoded) is a bug in our code and propagates.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_image(source: str | MediaRef, strict_rgb: bool = False) -> Image.Image:
  """Opens a file or a tar member, fully decoded, as RGB.

  Grayscale, palette and CMYK images are converted; images with alpha are composited on
  white. With `strict_rgb` any non-RGB mode is rejected instead (reason `bad_image_mode`).
  Raises MediaError: missing_file, truncated_image (cut-off data), undecodable_image (the
  decoder's message in the detail), bad_image_mode.
  """
  ref = source if isinstance(source, MediaRef) else MediaRef(str(source))
  data = io.BytesIO(ref.read_bytes())
  try:
    img = Image.open(data)
    img.load()  # decode now: a truncated file fails here, not later in a worker
  except DECODE_ERRORS as e:
    reason = "truncated_image" if "truncated" in str(e) else "undecodable_image"
    # PIL names the in-memory buffer by its address: keep the detail reproducible.
    message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", str(e))
    raise MediaError(reason, f"{ref.name}: {type(e).__name__}: {message}") from None
  with img:
    mode = img.mode
    if mode == "RGB":
      return img.copy()
    if strict_rgb:
      raise MediaError("bad_image_mode", f"{ref.name}: mode {mode}")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
      rgba = img.convert("RGBA")
      white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def preprocess(images: list[Image.Image], size: int = 224) -> torch.Tensor:
  """RGB PIL images -> float32 (b, 3, size, size), bicubic-resized and CLIP-normalised."""
  mean = np.asarray(CLIP_MEAN, dtype=np.float32)
  std = np.asarray(CLIP_STD, dtype=np.float32)
  arrays = []
  for img in images:
    x = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    arrays.append(((x - mean) / std).transpose(2, 0, 1))
  return torch.from_numpy(np.stack(arrays))


class SeedImageWorker:
  """SEED-2 from local files: `seed_quantizer.pt` (+ `eva_vit_g.pth` when the ViT is separate)."""

  def __init__(self, path: str, device: str = "cpu"):
    path = pathlib.Path(path)
    seed_file = path / SEED_FILE if path.is_dir() else path
    vit_file = seed_file.parent / VIT_FILE
    self.model: SeedQuantizer = load_seed_quantizer(str(seed_file), str(vit_file) if vit_file.exists() else None)
    self.model.to(device)
    self.device = device
    self.image_size = self.model.cfg.image_size
    self.codes_per_image = self.model.cfg.num_query_tokens
    self.codebook_size = self.model.cfg.codebook_size

  def encode_batch(self, images: list[Image.Image]) -> list[np.ndarray]:
    """RGB images -> one int64 (32,) array of codes in [0, 8192) per image."""
    pixels = preprocess(images, self.image_size).to(self.device)
    codes = self.model.encode(pixels).cpu().numpy().astype(np.int64)
    return list(codes)

  def unclip_embedding(self, codes: np.ndarray) -> torch.Tensor:
    """int (b, 32) or (32,) codes -> float32 (b, 1024) unCLIP image embeddings."""
    codes = torch.as_tensor(np.atleast_2d(np.asarray(codes)), dtype=torch.long).to(self.device)
    return self.model.unclip_embedding(codes)


class ImageDetokenizer:
  """SEED codes -> PIL image through Stable Diffusion 2.1 unCLIP (diffusers, local directory)."""

  def __init__(self, seed: SeedImageWorker, unclip_dir: str, device: str = "cpu"):
    from diffusers import StableUnCLIPImg2ImgPipeline
    self.seed = seed
    self.pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(unclip_dir).to(device)
    self.pipe.set_progress_bar_config(disable=True)

  def __call__(self, codes: np.ndarray, guidance_scale: float = 10.0, num_inference_steps: int = 20,
               seed: int = 0, height: int | None = None, width: int | None = None) -> Image.Image:
    """int (32,) codes -> one RGB image (the pipeline's native size unless height/width given)."""
    embeds = self.seed.unclip_embedding(codes).to(self.pipe.device, self.pipe.unet.dtype)
    generator = torch.Generator().manual_seed(seed)
    out = self.pipe(image_embeds=embeds, prompt="", guidance_scale=guidance_scale, noise_level=0,
                    num_inference_steps=num_inference_steps, generator=generator, height=height, width=width)
    return out.images[0]
