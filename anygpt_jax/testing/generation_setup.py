"""A tiny exported model with the tiny media tokenizers and sample media: what the generation and
serving tests (and their benchmarks) run requests against.

`build(root)` writes, under `root`: the tiny tokenizers (`tiny_tokenizers.save_tiny_all`), a
300-piece SentencePiece model, a random `tiny` LLaMA exported by `anygpt-export`'s writer, and a
photo, two speech clips and a music clip. It returns their paths and the `anygpt-generate` flags
that load the tokenizers with answers short enough for a CPU. Needs JAX and torch.
"""

from __future__ import annotations

import pathlib

import numpy as np

TEXTS = [f"a photo of {w} number {i} on a sunny day, spoken slowly" for i in range(200)
         for w in ("cat", "dog", "violin", "street")]


def build(root: pathlib.Path, config_name: str = "tiny") -> dict:
  """A random `config_name` model and the rest, under `root`.

  Returns {'root', 'export' (the HF directory), 'media' (photo.png, speech.wav, voice.wav, music.wav),
  'models' (tokenizer paths by name), 'flags' (anygpt-generate's model flags)}."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from PIL import Image

  from anygpt_jax.export import save_hf_checkpoint
  from anygpt_jax.model import Transformer, get_config
  from anygpt_jax.testing import tiny_tokenizers as tiny
  from anygpt_jax.tokenizers import audio_io
  from anygpt_jax.vocabulary import VocabularyLayout
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

  root = pathlib.Path(root)
  models = tiny.save_tiny_all(root / "tokenizers")
  spm = train_llama_like_sentencepiece(TEXTS, str(root / "spm"), vocab_size=300)
  layout = VocabularyLayout(text_vocab_size=300)
  cfg = get_config(config_name, max_position_embeddings=1024).with_vocabulary(layout)
  params = nn.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  export = save_hf_checkpoint(jax.tree.map(np.asarray, params), cfg, layout, str(root / "hf"), spm_path=spm)
  media = root / "media"
  media.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(media / "photo.png")
  audio_io.write_wav(str(media / "speech.wav"), 0.3 * rng.standard_normal(16000).astype(np.float32), 16000)
  audio_io.write_wav(str(media / "voice.wav"), 0.3 * rng.standard_normal(24000).astype(np.float32), 16000)
  audio_io.write_wav(str(media / "music.wav"), 0.3 * rng.standard_normal(32000).astype(np.float32), 32000)
  flags = [f"--image_model={models['image']}", f"--unclip_model={models['unclip']}",
           f"--speech_model={models['speech']}", f"--soundstorm_model={models['soundstorm']}",
           f"--music_model={models['music']}", "--image_steps=2", "--set=text.max_new_tokens=6",
           "--set=speech.max_new_tokens=30", "--set=music.max_new_tokens=30", "--set=image.max_new_tokens=40"]
  return {"root": root, "export": export, "media": media, "models": models, "flags": flags}
