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
  save_tiny_whisper(dir) a multilingual WhisperForConditionalGeneration (80 mel bins) with its processor
                        (Whisper's byte-level tokenizer without merges, its special tokens) and the
                        generation config Whisper's `generate(language=, task=)` reads, as
                        `openai/whisper-medium` loads.
  save_tiny_wavlm_sv(dir) a WavLMForXVector (TDNN x-vector head) with its feature extractor, as
                        `microsoft/wavlm-base-plus-sv` loads.

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


WHISPER_SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                          "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")


def save_tiny_whisper(directory, seed: int = 0) -> pathlib.Path:
  """A random tiny multilingual Whisper (one layer each side) with its processor in `directory`."""
  import torch
  from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                            WhisperProcessor, WhisperTokenizer)

  from anygpt_jax.testing.tiny_tokenizers import byte_level_alphabet

  root = pathlib.Path(directory)
  root.mkdir(parents=True, exist_ok=True)
  tokenizer = WhisperTokenizer(vocab={c: i for i, c in enumerate(byte_level_alphabet())}, merges=[])
  tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIAL_TOKENS[1:])})
  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIAL_TOKENS}
  end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
  config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_source_positions=1500, max_target_positions=64, pad_token_id=end, bos_token_id=end,
                         eos_token_id=end, decoder_start_token_id=start)
  torch.manual_seed(seed)
  model = WhisperForConditionalGeneration(config)
  model.generation_config = GenerationConfig(
      decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end, max_length=64,
      is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"]},
      task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
      no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"], suppress_tokens=[],
      begin_suppress_tokens=[end])
  model.save_pretrained(root)
  processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
  processor.save_pretrained(root)
  return root


def save_tiny_wavlm_sv(directory, seed: int = 0) -> pathlib.Path:
  """A random tiny WavLM speaker-verification model (x-vector dim 16) with its feature extractor."""
  import torch
  from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

  root = pathlib.Path(directory)
  root.mkdir(parents=True, exist_ok=True)
  config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4, tdnn_dim=(16, 16, 32), tdnn_kernel=(5, 3, 1),
                       tdnn_dilation=(1, 2, 1), xvector_output_dim=16, num_buckets=32, max_bucket_distance=100)
  torch.manual_seed(seed)
  WavLMForXVector(config).save_pretrained(root)
  # wavlm-base-plus-sv's own settings: raw 16 kHz samples, not normalised, with an attention mask.
  Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                           return_attention_mask=True).save_pretrained(root)
  return root
