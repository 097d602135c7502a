"""SpeechTokenizer loads from the file names AnyGPT ships (`config.json` + `ckpt.dev`)."""

import os
import shutil

import numpy as np
import pytest
import torch

from anygpt_jax.testing import tiny_tokenizers as tiny
from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker

torch.set_num_threads(1)


def test_anygpt_layout_ckpt_dev_loads_the_same_model(tmp_path):
  released = tiny.save_tiny_speech_tokenizer(tmp_path / "speechtokenizer_hubert_avg")
  anygpt = tmp_path / "models" / "speechtokenizer"
  anygpt.mkdir(parents=True)
  shutil.copy(released / "config.json", anygpt / "config.json")
  shutil.copy(released / "SpeechTokenizer.pt", anygpt / "ckpt.dev")
  wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
  ours = SpeechTokenizerWorker(str(anygpt)).encode_semantic([wave])[0]
  np.testing.assert_array_equal(ours, SpeechTokenizerWorker(str(released)).encode_semantic([wave])[0])

  os.remove(anygpt / "ckpt.dev")
  with pytest.raises(FileNotFoundError, match=r"SpeechTokenizer.pt or ckpt.dev .*\['config.json'\]"):
    SpeechTokenizerWorker(str(anygpt))
