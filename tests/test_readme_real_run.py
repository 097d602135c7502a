"""The README's real run, exactly as written there, on this machine.

The commands are read from the fenced block under "### The real run" in README.md and run one
after the other with bash in a scratch directory. Only these things differ from what a user
types: the first line's four locations (RAW, MODELS, DATA, RUN) point into the scratch directory
(RUN is relative), every `anygpt-train` gets `--gin.` overrides for the tiny model, a CPU mesh
(XLA attention, one microbatch), short rows, batch 2 and 2 steps, and `anygpt-import` gets
`--model tiny`. The raw data is what the commands expect there: AnyGPT JSONL files per corpus
and split (pairs, interleaved documents, AnyInstruct chats), a manifest of images, tiny
random-weight SEED tokenizer files, a SentencePiece model, and a LLaMA made by transformers
written in Meta's layout (`consolidated.00.pth`, `params.json`, as Meta distributes LLaMA-2);
every corpus has a record the tokenization job rejects.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LOCATIONS = ("RAW", "MODELS", "DATA", "RUN")
# The pod's mesh file picks the TPU splash kernel and the run files 15 microbatches of one row per
# chip; on this CPU the tiny model takes XLA attention and the 2-row batch one microbatch.
TRAIN_OVERRIDES = ("--gin.model_config.name=tiny", "--gin.train.mesh_axes=\"{'data': -1, 'fsdp': 1, 'tensor': 1}\"",
                   "--gin.model_config.overrides=\"{'attention': 'xla'}\"", "--gin.train.num_microbatches=1",
                   "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS=\"{'targets': 256}\"", "--gin.TRAIN_STEPS=2")
IMPORT_OVERRIDES = ("--model tiny",)  # the last --model wins
PAIRS = {"laion_2b": "image", "journeydb": "image", "laion_aesthetics": "image", "mls": "speech",
         "commonvoice": "speech", "gigaspeech": "speech", "music": "music"}
SIZES = {"image": 8192, "speech": 1024, "music": 8192}
PREFIX = {"image": ("<soim>", "\U0001F440", "<eoim>"), "speech": ("<sosp>", "\U0001F5E3\uFE0F", "<eosp>"),
          "music": ("<somu>", "\U0001F3B6", "<eomu>")}
WORDS = "a the red blue cat dog sits runs on under sofa park song calm piano bird sings loud quiet small".split()


def readme_block() -> str:
  text = (REPO / "README.md").read_text(encoding="utf-8")
  section = text[text.index("### The real run"):]
  match = re.search(r"```bash\n(.*?)```", section, re.S)
  assert match, "README.md: no ```bash block under '### The real run'"
  return match.group(1)


def commands(block: str) -> list[str]:
  """Logical commands: continuation lines joined, a `for ... done` block kept whole, comments dropped."""
  out, current, depth = [], [], 0
  for line in block.splitlines():
    if not current and (not line.strip() or line.lstrip().startswith("#")):
      continue
    current.append(line)
    stripped = line.strip()
    depth += stripped.startswith("for ") - (stripped == "done")
    if not stripped.endswith("\\") and depth == 0:
      out.append("\n".join(current))
      current = []
  assert not current, f"unterminated command in the README block: {current}"
  return out


def codes_string(modality, rng, n):
  start, prefix, end = PREFIX[modality]
  return start + "".join(f"<{prefix}{int(c)}>" for c in rng.integers(0, SIZES[modality], n)) + end


def sentence(rng, n=5):
  return " ".join(rng.choice(WORDS, n)).capitalize() + "."


def anygpt_records(corpus, rng, n=3):
  """AnyGPT-style JSONL records of a corpus, then one the job rejects (a code out of range)."""
  records = []
  for i in range(n):
    if corpus in PAIRS:
      records.append({"text": sentence(rng), PAIRS[corpus]: codes_string(PAIRS[corpus], rng, 6)})
    elif corpus == "mmc4":
      records.append({"text": f"{sentence(rng)} {codes_string('image', rng, 4)} {sentence(rng)}"})
    else:  # anyinstruct: AnyGPT's chat records, a speech reply among them
      records.append({"id": f"chat{i}", "conversation": [[
          {"role": "user", "message": f"{codes_string('speech', rng, 4)} {sentence(rng, 3)}"},
          {"role": "assistant", "message": f"<-Ins-> {sentence(rng, 3)}\n <-Res-> {sentence(rng, 3)} "
                                           f"{codes_string('speech', rng, 4)}"}]]})
  bad = {"text": "out of range", "speech": "<sosp><\U0001F5E3\uFE0F5000><eosp>"}
  return records + [bad]


def write_raw_data(raw: pathlib.Path, rng) -> list[str]:
  from PIL import Image
  texts = []
  for split in ("train", "validation"):
    for corpus in list(PAIRS) + ["mmc4", "anyinstruct"]:
      records = anygpt_records(corpus, rng)
      texts += [json.dumps(r, ensure_ascii=False) for r in records]
      (raw / f"{corpus}.{split}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records)
                                                    + "\n", encoding="utf-8")
    lines = []
    for i in range(3):
      path = raw / "images" / f"{split}{i}.png"
      path.parent.mkdir(exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
      lines.append({"id": f"{split}{i}", "kind": "image", "path": f"images/{path.name}", "text": sentence(rng)})
    lines.append({"id": "gone", "kind": "image", "path": "images/missing.png", "text": "no such file"})
    texts += [l["text"] for l in lines]
    (raw / f"laion_coco.{split}.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  return texts


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
  """Runs every command of the README block; returns the scratch directory and the outputs."""
  import torch
  import transformers

  from anygpt_jax.vocabulary.chat_format import SYSTEM_PROMPT as CHAT_SYSTEM_PROMPT
  from anygpt_jax.model import get_config
  from anygpt_jax.testing.tiny_tokenizers import save_tiny_seed
  from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece
  from anygpt_jax.weights.meta import write_meta_checkpoint

  root = tmp_path_factory.mktemp("real_run")
  rng = np.random.default_rng(0)
  locations = {"RAW": root / "raw", "MODELS": root / "models", "DATA": root / "shards", "RUN": "runs"}
  locations["RAW"].mkdir()
  texts = write_raw_data(locations["RAW"], rng)
  models = locations["MODELS"]
  save_tiny_seed(models / "seed_tokenizer")
  spm = train_llama_like_sentencepiece(texts + [CHAT_SYSTEM_PROMPT, " ".join(WORDS)] * 2,
                                       str(models / "llama2" / "tokenizer"), 1000)
  import sentencepiece
  pieces = sentencepiece.SentencePieceProcessor(model_file=spm).get_piece_size()
  tiny = get_config("tiny")
  torch.manual_seed(0)
  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=pieces, hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
      num_hidden_layers=tiny.num_layers, num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_kv_heads,
      max_position_embeddings=tiny.max_position_embeddings, rms_norm_eps=tiny.rms_norm_eps,
      rope_theta=tiny.rope_theta))
  llama.save_pretrained(root / "hf_reference")  # what the chat model is compared with, not in MODELS
  # params.json as Meta writes it (vocab_size -1); its FFN rule gives the tiny model's width:
  # 128 * ceil(int(0.753 * int(2 * 4 * 64 / 3)) / 128) = 128. anygpt-import checks every field.
  meta = {"dim": tiny.hidden_size, "n_layers": tiny.num_layers, "n_heads": tiny.num_heads,
          "n_kv_heads": tiny.num_kv_heads, "multiple_of": 128, "ffn_dim_multiplier": 0.753,
          "norm_eps": tiny.rms_norm_eps, "vocab_size": -1}
  write_meta_checkpoint({k: v.detach().numpy() for k, v in llama.state_dict().items()}, meta,
                        str(models / "llama-2-7b"))
  (models / "llama2" / "tokenizer.model").write_bytes(pathlib.Path(spm).read_bytes())

  block = readme_block()
  cmds = commands(block)
  first = cmds[0].split()
  assert sorted(a.split("=")[0] for a in first) == sorted(LOCATIONS), cmds[0]
  env = dict(os.environ, **{k: str(v) for k, v in locations.items()})
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's machine (the tests force 8)
  env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
  results = []
  for cmd in cmds[1:]:
    script = cmd
    if cmd.startswith("anygpt-train"):
      script = cmd + " " + " ".join(TRAIN_OVERRIDES)
    elif cmd.startswith("anygpt-import"):
      script = cmd + " " + " ".join(IMPORT_OVERRIDES)
    # The scratch directory is the cwd: anygpt-train finds the repository's gin/ files from anywhere.
    result = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    results.append((cmd, result))
    allowed = (0, 3) if cmd.startswith("for ") else (0,)  # 3: the job rejected records, as it must here
    assert result.returncode in allowed, f"{cmd}\nrc={result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return root, results


def test_every_corpus_was_tokenized_with_its_rejects(real_run):
  root, _ = real_run
  for corpus in list(PAIRS) + ["laion_coco", "mmc4", "anyinstruct"]:
    for split in ("train", "validation"):
      shard = root / "shards" / corpus / f"{corpus}-{split}-00000-of-00001"
      assert shard.exists(), shard
      stats = json.loads(pathlib.Path(f"{shard}.stats.json").read_text())
      assert stats["records_out"] == 3 and sum(stats["rejected"].values()) == 1, (corpus, stats)
      assert pathlib.Path(f"{shard}.rejects.jsonl").read_text().strip()


def test_mixture_report_shows_the_paper_groups(real_run):
  _, results = real_run
  out = next(r.stdout for c, r in results if c.startswith("anygpt-mixture-report"))
  assert "mixture anygpt_pretrain: 81000 steps x 480 rows x 4500 tokens" in out
  lines = out.splitlines()
  rows = lines[2:lines.index("per modality (tokens consumed, share of the run):")]
  shares = {l.split()[0]: float(l.split()[4].rstrip("%")) for l in rows}
  assert set(shares) == set(PAIRS) | {"laion_coco", "mmc4"}
  image = sum(shares[c] for c in ("laion_2b", "laion_coco", "journeydb", "laion_aesthetics"))
  assert image == pytest.approx(30.0, abs=0.02) and shares["mls"] == pytest.approx(13.0, abs=0.01)
  assert shares["music"] == pytest.approx(25.0, abs=0.01) and shares["mmc4"] == pytest.approx(5.0, abs=0.01)


def metrics(run_dir: pathlib.Path) -> list[dict]:
  lines = (run_dir / "tensorboard" / "metrics.jsonl").read_text().splitlines()
  return [json.loads(l) for l in lines if l.strip()]


@pytest.mark.parametrize("phase, tasks", [
    ("pretrain", list(PAIRS) + ["laion_coco", "mmc4"]),
    ("continue", ["journeydb_t2i", "laion_aesthetics_t2i", "laion_coco_caption", "music_continue"]),
    ("sft", ["anyinstruct"])])
def test_each_phase_trained_two_steps_and_evaluated_every_corpus(real_run, phase, tasks):
  root, _ = real_run
  run_dir = root / "runs" / phase  # RUN is relative: the run directories are under the cwd
  assert (run_dir / "config.gin").exists() and (run_dir / "checkpoints").is_dir()
  rows = metrics(run_dir)
  steps = sorted({r["step"] for r in rows if "train/loss" in r})
  assert steps == [1, 2]
  evaluated = {k.split("/")[1] for r in rows for k in r if k.startswith("eval/") and k.endswith("/loss")
               and k.count("/") == 2}
  assert evaluated == set(tasks)
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)


def test_the_chat_model_descends_from_the_hf_weights(real_run):
  """Meta's layout -> import -> pretrain -> continue -> sft -> export: 6 small Adam steps move no
  weight far.

  A fresh initialisation would differ from the HF weights by about their own scale (0.02).
  """
  from safetensors.torch import load_file  # the export is bfloat16, which numpy cannot hold

  def load(path):
    return {k: v.float().numpy() for k, v in load_file(str(path)).items()}

  root, _ = real_run
  hf = load(next((root / "hf_reference").glob("*.safetensors")))
  exported = {}
  for f in (root / "exports" / "anygpt-7b-chat").glob("*.safetensors"):
    exported.update(load(f))
  text_rows = hf["model.embed_tokens.weight"].shape[0]
  for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
    theirs = exported[name][:text_rows]
    assert np.abs(theirs - hf[name][:text_rows]).max() < 2e-3, name
  assert np.abs(hf["model.embed_tokens.weight"]).max() > 0.02


def test_sft_run_has_the_chat_vocabulary_and_exports(real_run):
  root, results = real_run
  layout = json.loads((root / "runs" / "sft" / "vocabulary_layout.json").read_text())
  assert layout["chat_tokens"] is True
  export = root / "exports" / "anygpt-7b-chat"
  config = json.loads((export / "config.json").read_text())
  assert config["vocab_size"] == layout["vocab_size"]
  assert not any("ERROR:root:Path not found" in r.stderr for _, r in results)


def test_meta_weights_were_imported_as_a_run_directory(real_run):
  root, results = real_run
  out = next(r.stdout for c, r in results if c.startswith("anygpt-import"))
  assert "(meta)" in out, out
  run_dir = root / "runs" / "llama2-7b"
  assert (run_dir / "config.gin").exists() and (run_dir / "checkpoints" / "0").is_dir()
