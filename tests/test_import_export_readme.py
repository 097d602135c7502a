"""The README's "Import and export" commands, run as written with tiny weights in the real layout."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from anygpt_jax.model import get_config, hf_config_dict
from anygpt_jax.vocabulary.layout import VocabularyLayout
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece

REPO = pathlib.Path(__file__).resolve().parent.parent
TEXTS = [f"a photo of {w} number {i} on a sunny day" for i in range(200) for w in ("cat", "dog", "violin")]


def readme_commands(prefix: str) -> list[str]:
  """Command lines of the section's bash block that start with `prefix` (continuations joined)."""
  text = (REPO / "README.md").read_text()
  section = text.split("## Import and export", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
  return [line.strip() for line in block.splitlines() if line.strip().startswith(prefix)]


def test_readme_import_and_export_commands(tmp_path):
  commands = readme_commands("anygpt-")
  assert [c.split()[0] for c in commands] == ["anygpt-import", "anygpt-export"]
  spm = train_llama_like_sentencepiece(TEXTS, str(tmp_path / "spm"), vocab_size=300)
  layout = VocabularyLayout(text_vocab_size=300)
  torch.manual_seed(0)
  config = get_config("tiny").with_vocabulary(layout)
  text_only = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(config, vocab_size=300)))
  text_only.save_pretrained(tmp_path / "llama", max_shard_size="200KB")  # a sharded text-only LLaMA
  env = dict(os.environ, WEIGHTS=str(tmp_path / "llama"), MODEL="tiny", SPM=spm, RUN="runs/tiny",
             EXPORT="exports/tiny-hf", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  for command in commands:
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "exports" / "tiny-hf").eval()
  assert hf.config.vocab_size == layout.vocab_size
  embedding = hf.model.embed_tokens.weight.float().detach().numpy()
  expected = text_only.model.embed_tokens.weight.detach().numpy()
  import ml_dtypes
  np.testing.assert_array_equal(embedding[:300], expected.astype(ml_dtypes.bfloat16).astype(np.float32))
  mean = expected.mean(0).astype(ml_dtypes.bfloat16).astype(np.float32)  # --new_rows_init mean
  np.testing.assert_allclose(embedding[300:], np.broadcast_to(mean, embedding[300:].shape), atol=1e-3)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "exports" / "tiny-hf")
  assert tokenizer.convert_tokens_to_ids("<soim>") == layout.modality("image").start_id


@pytest.mark.slow
def test_readme_benchmark_commands_run(tmp_path):
  """The section's benchmark commands, on the tiny configuration (the README's figures are for `1b`)."""
  section = (REPO / "README.md").read_text().split("## Import and export", 1)[1].split("\n## ", 1)[0]
  commands = re.findall(r"`(python -m tools\.bench_export[^`]*)`", section)
  assert len(commands) == 2, commands
  expected = {False: "tensors equal in both exports", True: "fit (CPU): seconds ="}
  for command in commands:
    command = command.replace("--config 1b", "--config tiny").replace("--layers_series 2,4,8", "--layers_series 1,2")
    done = subprocess.run(command.replace("python", sys.executable, 1).split() + [f"--workdir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True)
    assert expected["--layers_series" in command] in done.stdout, done.stderr[-3000:]
