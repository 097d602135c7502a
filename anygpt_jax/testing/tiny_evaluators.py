"""Tiny random evaluator models in their published layouts, for the benchmarks' tests and the
README's evaluation commands (their scores mean nothing).

  save_tiny_clip(dir)   a CLIPModel (ViT text and vision towers, 32x32 images) with its processor
                        (CLIP's byte-level tokenizer without merges, CLIP's image processor), written by
                        transformers' own `save_pretrained`: what `openai/clip-vit-large-patch14`'s
                        directory holds, as `transformers` loads it.

PyTorch and transformers; no JAX.
"""

from __future__ import annotations

import pathlib


def save_tiny_clip(directory, seed: int = 0) -> pathlib.Path:
  """A random tiny CLIP (projection dim 16) with its processor in `directory`; returns it."""
  import torch
  from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

  from anygpt_jax.testing.tiny_tokenizers import write_tiny_clip_tokenizer

  root = pathlib.Path(directory)
  write_tiny_clip_tokenizer(root)  # CLIP's byte-level BPE vocabulary, no merges
  tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
  config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id, **tower),
                      vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16)
  torch.manual_seed(seed)
  CLIPModel(config).save_pretrained(root)
  image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root)
  return root
