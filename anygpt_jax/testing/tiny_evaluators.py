"""Tiny random evaluator models in their published layouts, for the benchmarks' tests and the
README's evaluation commands (their scores mean nothing).

  save_tiny_clip(dir)   a CLIPModel (ViT text and vision towers, 32x32 images) with its processor
                        (CLIP's byte-level tokenizer without merges, CLIP's image processor), written by
                        transformers' own `save_pretrained`: what `openai/clip-vit-large-patch14`'s
                        directory holds, as `transformers` loads it.
  save_tiny_clap(dir)   a ClapModel (RoBERTa text tower, HTSAT audio tower over CLAP's 48 kHz log-mel
                        features, 10 s window) with its processor (RoBERTa's byte-level tokenizer
                        without merges, CLAP's feature extractor as the unfused checkpoints have it),
                        as `laion/clap-htsat-unfused` or `laion/larger_clap_music` load in transformers.

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


def save_tiny_clap(directory, seed: int = 0) -> pathlib.Path:
  """A random tiny CLAP (projection dim 16) with its processor in `directory`; returns it."""
  import torch
  from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

  from anygpt_jax.testing.tiny_tokenizers import byte_level_alphabet

  root = pathlib.Path(directory)
  root.mkdir(parents=True, exist_ok=True)
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
  for char in byte_level_alphabet():
    vocab.setdefault(char, len(vocab))
  vocab["<mask>"] = len(vocab)
  tokenizer = RobertaTokenizer(vocab=vocab, merges=[])
  text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=80, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
  # HTSAT's spectrogram "image" must hold 10 s of frames (1001 at hop 480): spec_size 256 with 64 mel bins.
  audio = dict(window_size=8, num_mel_bins=64, spec_size=256, patch_size=4, patch_stride=(4, 4), hidden_size=32,
               patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[1, 2], num_classes=4)
  torch.manual_seed(seed)
  ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(root)
  features = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=10, truncation="rand_trunc",
                                  padding="repeatpad")
  ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(root)
  return root
