"""`anygpt-import` into a gs:// run directory and `anygpt-export --model_dir gs://...` out of it, on
the local GCS emulator (the `gcs` fixture of conftest.py): the commands a user types, as
subprocesses, with a tiny LLaMA in HF layout. fp32 in and out: bit-exact."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from anygpt_jax.model import get_config, hf_config_dict
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

TEXTS = [f"a photo of {w} number {i} on a sunny day" for i in range(200) for w in ("cat", "dog", "violin")]


def _run(command: list[str], cwd, env):
  # A hang in the emulator (see test_train_paths.py) fails the test instead of stalling the suite.
  done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
  return done


# Slow: two commands, each importing JAX and orbax (the export also parses the run's gin config in a
# child that imports TensorFlow): about 35 s of CPU, over the fast suite's budget.
@pytest.mark.slow
def test_import_to_a_bucket_and_export_from_it(gcs, tmp_path):
  bucket, emulator = gcs
  spm = train_llama_like_sentencepiece(TEXTS, str(tmp_path / "spm"), vocab_size=300)
  layout = VocabularyLayout(text_vocab_size=300)
  torch.manual_seed(0)
  config = get_config("tiny").with_vocabulary(layout)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(config, vocab_size=300)))
  hf.save_pretrained(tmp_path / "llama")
  bin_dir = pathlib.Path(sys.executable).parent
  env = dict(os.environ, **emulator)
  run = f"gs://{bucket.name}/runs/imported"

  _run([str(bin_dir / "anygpt-import"), f"--source={tmp_path / 'llama'}", "--model=tiny", f"--spm={spm}",
        f"--output_dir={run}"], tmp_path, env)
  names = [n[len("runs/imported/"):] for n in bucket.names() if n.startswith("runs/imported/")]
  assert "config.gin" in names and "checkpoints/0/commit_success.txt" in names, names
  # The arrays themselves (tensorstore's GCS driver), not only orbax's metadata (epath), are in the bucket.
  assert any(n.startswith("checkpoints/0/state/ocdbt.process_0/d/") for n in names), names

  _run([str(bin_dir / "anygpt-export"), f"--model_dir={run}", "--output_dir=exported", "--dtype=float32"],
       tmp_path, env)
  assert not list(tmp_path.glob("gs:*"))  # nothing landed in a local folder named after the URL
  out = tmp_path / "exported"
  exported = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
  theirs, ours = hf.state_dict(), exported.state_dict()
  for name, value in theirs.items():
    rows = value.shape[0] if name in ("model.embed_tokens.weight", "lm_head.weight") else None
    np.testing.assert_array_equal(ours[name][:rows].numpy(), value.numpy(), err_msg=name)
  assert exported.config.vocab_size == layout.vocab_size
  assert json.loads((out / "config.json").read_text())["vocab_size"] == layout.vocab_size
