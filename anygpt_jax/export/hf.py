"""A HuggingFace `LlamaForCausalLM` directory from this project's parameters.

Layout (what `transformers.LlamaForCausalLM.from_pretrained` and AnyGPT's tools load):
  model-00001-of-0000N.safetensors ...   weights, sharded by size, padding rows trimmed
  model.safetensors.index.json           weight name -> shard file
  config.json                            LlamaConfig, vocab_size = the layout's real rows,
                                         max_position_embeddings >= the trained length
  generation_config.json                 bos/eos/pad ids and AnyGPT's sampling defaults
  config/{text,image,speech,music}_generate_config.json, config/generate_config.json
                                         AnyGPT's per-modality decoding settings, where its
                                         inference CLI reads them (run it from this directory)
  tokenizer.model + tokenizer files      SentencePiece + the added tokens in AnyGPT's order, the
                                         text mode (`legacy`) stated, AnyGPT's conversation format
                                         as the chat template (chat_template.jinja, and in
                                         tokenizer_config.json for older readers)
  anygpt_vocabulary.json                 the vocabulary layout (groups and ids)

Two entry points share one writer: `export_checkpoint` streams a run's orbax checkpoint (one
parameter, or one block of a scanned parameter's layers, in host memory at a time; each HF tensor
converted and written as soon as it exists), `save_hf_checkpoint` writes parameters already in
memory. Every file is written under a temporary name and renamed when complete, mode 0644.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from etils import epath

from anygpt_jax.export.safetensors_stream import SafetensorsWriter
from anygpt_jax.generation.settings import ANYGPT_GENERATE_CONFIGS
from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.hf_convert import HFTensor, hf_config_dict, hf_tensor_plan, leaf_value, to_hf_tensor
from anygpt_jax.vocabulary import chat_format
from anygpt_jax.vocabulary.layout import BOS_ID, EOS_ID, PAD_ID, VocabularyLayout

WEIGHTS_INDEX = "model.safetensors.index.json"
FILE_MODE = 0o644
DTYPES = ("float32", "bfloat16", "float16")

DECODING_DIR = "config"


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """The ids generation needs: `<s>`, the ends of a reply (`</s>` and AnyGPT's `<eos>`), padding."""

  bos: int
  eos: tuple[int, ...]
  pad: int


def token_ids(layout: VocabularyLayout) -> TokenIds:
  """From the layout: SentencePiece's `<s>`/`</s>`, AnyGPT's `<eos>`, SeqIO's padding id."""
  return TokenIds(bos=BOS_ID, eos=(EOS_ID, layout.eos_id), pad=PAD_ID)


# --- weights ---------------------------------------------------------------------------------------
def _target_dtype(dtype: str):
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r} not in {DTYPES}")
  import ml_dtypes
  return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]


def shard_plan(plan: list[HFTensor], dtype: str, max_shard_bytes: int) -> list[list[HFTensor]]:
  """Consecutive tensors of `plan` grouped into shards of at most max_shard_bytes (a larger tensor
  gets a shard of its own)."""
  itemsize = np.dtype(_target_dtype(dtype)).itemsize
  shards, current, size = [], [], 0
  for spec in plan:
    nbytes = int(np.prod(spec.shape)) * itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(spec)
    size += nbytes
  if current:
    shards.append(current)
  return shards


def _finish(tmp: epath.Path, final: epath.Path) -> None:
  tmp.replace(final)  # a new export over an old one replaces its files
  if "://" not in os.fspath(final):
    os.chmod(final, FILE_MODE)


def write_weights(tensors: Iterable[tuple[HFTensor, np.ndarray]], plan: list[HFTensor], out_dir: epath.PathLike,
                  dtype: str = "float32", max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes HF tensors, arriving in `plan` order, into safetensors shards and their index.

  Each tensor is converted to `dtype` and written as it arrives: memory holds one tensor.
  Returns the shard file names.
  """
  out = epath.Path(out_dir)
  target = _target_dtype(dtype)
  shards = shard_plan(plan, dtype, max_shard_bytes)
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  stream = iter(tensors)
  weight_map, total = {}, 0
  for name, shard in zip(names, shards):
    tmp = out / (name + ".tmp")
    declared = [(spec.name, spec.shape, np.dtype(target).name) for spec in shard]
    with SafetensorsWriter(tmp, declared, metadata={"format": "pt"}) as writer:
      for spec in shard:
        got, value = next(stream)
        if got.name != spec.name:
          raise ValueError(f"tensors out of order: {got.name} where {spec.name} was planned")
        writer.write(spec.name, value)  # converted to the target dtype block by block
        total += value.size * np.dtype(target).itemsize
        weight_map[spec.name] = name
        del value
    _finish(tmp, out / name)
  tmp = out / (WEIGHTS_INDEX + ".tmp")
  tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  _finish(tmp, out / WEIGHTS_INDEX)
  for stale in out.glob("model-*-of-*.safetensors"):  # shards of an earlier export into this directory
    if stale.name not in names:
      stale.unlink()
  return names


def params_tensors(params: Mapping[str, Any], plan: list[HFTensor]) -> Iterator[tuple[HFTensor, np.ndarray]]:
  """HF tensors from a parameter tree in memory, one at a time."""
  for spec in plan:
    yield spec, to_hf_tensor(spec, leaf_value(params, spec), contiguous=False)


def checkpoint_tensors(arrays, plan: list[HFTensor]) -> Iterator[tuple[HFTensor, np.ndarray]]:
  """HF tensors read from an orbax checkpoint (`orbax_arrays.CheckpointArrays`) in plan order.

  A scanned parameter is read in blocks of its stored chunks along the layer axis; every other
  parameter whole. Memory holds one block (or parameter) and one HF tensor.
  """
  for leaf, group in itertools.groupby(plan, key=lambda spec: spec.leaf):
    group = list(group)
    if group[0].layer is None:
      value = arrays.read(leaf)
      for spec in group:
        yield spec, to_hf_tensor(spec, value, contiguous=False)  # the writer copies block by block
      del value
      continue
    by_layer = {spec.layer: spec for spec in group}
    for start, block in arrays.layer_blocks(leaf):
      for offset in range(block.shape[0]):
        spec = by_layer[start + offset]
        yield spec, to_hf_tensor(spec, block[offset], contiguous=False)
      del block


# --- configuration, tokenizer ----------------------------------------------------------------------
def generation_config(layout: VocabularyLayout, ids: TokenIds | None = None) -> dict:
  """AnyGPT's sampling defaults (paper Table 9: top-p 0.7); generation stops on </s> or <eos>."""
  ids = ids or token_ids(layout)
  return {"bos_token_id": ids.bos, "eos_token_id": list(ids.eos), "pad_token_id": ids.pad, "do_sample": True,
          "top_p": 0.7, "temperature": 1.0, "max_new_tokens": 2000}


def decoding_configs(layout: VocabularyLayout, ids: TokenIds | None = None) -> dict[str, dict]:
  """File name (under `config/`) -> AnyGPT's decoding settings, with this vocabulary's ids."""
  ids = ids or token_ids(layout)
  extra = {"bos_token_id": ids.bos, "eos_token_id": list(ids.eos), "pad_token_id": ids.pad}
  return {(f"{m}_generate_config.json" if m else "generate_config.json"): dict(settings, **extra)
          for m, settings in ANYGPT_GENERATE_CONFIGS.items()}


def _legacy_tokenizer_json(path: str) -> None:
  """Rewrites tokenizer.json so the tokenizers backend encodes in `legacy=True` mode: every text
  chunk between added tokens gets SentencePiece's dummy prefix (AnyGPT's transformers 4.34.1)."""
  with open(path) as f:
    tok = json.load(f)
  tok["normalizer"] = {"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
  tok["pre_tokenizer"] = None
  for added in tok["added_tokens"]:
    added["normalized"] = False  # matched on the raw string, as AnyGPTVocabulary splits it
  with open(path, "w") as f:
    json.dump(tok, f, ensure_ascii=False)


def save_tokenizer(spm_path: str, layout: VocabularyLayout, out_dir: str, legacy: bool = True) -> None:
  """tokenizer.model plus AnyGPT's added tokens, in order, as HF tokenizer files, the mode stated,
  with AnyGPT's conversation format as the chat template (`chat_format.jinja_chat_template`).

  legacy=False: the `LlamaTokenizer` of transformers 5 (and 4.x's with `legacy: false`).
  legacy=True: the config says `legacy: true` (what 4.34.1's slow tokenizer, AnyGPT's, does) and
  tokenizer.json is the legacy normalizer, loaded as is (`PreTrainedTokenizerFast`) by transformers 5.
  """
  import transformers

  shutil.copyfile(spm_path, os.path.join(out_dir, "tokenizer.model"))
  # transformers 5 converts tokenizer.model offline; without add_bos_token it would add no <s>.
  tokenizer = transformers.LlamaTokenizer.from_pretrained(out_dir, add_bos_token=True)
  if tokenizer.vocab_size != layout.text_vocab_size:
    raise ValueError(f"{spm_path} has {tokenizer.vocab_size} pieces, the layout expects {layout.text_vocab_size}")
  tokenizer.add_tokens(layout.added_tokens(), special_tokens=False)
  tokenizer.chat_template = chat_format.jinja_chat_template(legacy)
  tokenizer.save_pretrained(out_dir)  # transformers 5 writes the template to chat_template.jinja
  config_path = os.path.join(out_dir, "tokenizer_config.json")
  with open(config_path) as f:
    config = json.load(f)
  # Engines on transformers before 4.43 read the template from tokenizer_config.json only.
  config.update(legacy=legacy, add_bos_token=True, add_eos_token=False, chat_template=tokenizer.chat_template)
  if legacy:
    _legacy_tokenizer_json(os.path.join(out_dir, "tokenizer.json"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
  with open(config_path, "w") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)


def write_metadata(config: ModelConfig, layout: VocabularyLayout, out_dir: epath.PathLike, dtype: str,
                   spm_path: str | None = None, legacy: bool = True, trained_length: int | None = None,
                   ids: TokenIds | None = None) -> None:
  """Everything but the weights: config.json, generation configs, tokenizer, vocabulary layout.

  `ids` default to `token_ids(layout)`.
  """
  import transformers  # its own writers keep config.json in the format the installed version reads

  ids = ids or token_ids(layout)
  positions = max(config.max_position_embeddings, trained_length or 0)
  with tempfile.TemporaryDirectory() as local:  # transformers writes locally; copied out (gs:// too)
    hf_config = transformers.LlamaConfig(
        **hf_config_dict(config.replace(max_position_embeddings=positions), vocab_size=layout.vocab_size),
        bos_token_id=ids.bos, eos_token_id=ids.eos[0], pad_token_id=ids.pad, architectures=["LlamaForCausalLM"],
        dtype=dtype)
    hf_config.save_pretrained(local)
    _state_rope_theta_for_every_reader(os.path.join(local, "config.json"), config.rope_theta)
    transformers.GenerationConfig(**generation_config(layout, ids)).save_pretrained(local)
    with open(os.path.join(local, "anygpt_vocabulary.json"), "w") as f:
      json.dump(layout.to_json_dict(), f, indent=2, ensure_ascii=False)
    os.makedirs(os.path.join(local, DECODING_DIR))
    for name, settings in decoding_configs(layout, ids).items():
      with open(os.path.join(local, DECODING_DIR, name), "w") as f:
        json.dump(settings, f, indent=2)
    if spm_path:
      save_tokenizer(spm_path, layout, local, legacy)
    out = epath.Path(out_dir)
    for root, _, files in os.walk(local):
      relative = os.path.relpath(root, local)
      target_dir = out if relative == "." else out / relative
      target_dir.mkdir(parents=True, exist_ok=True)
      for name in files:
        tmp = target_dir / (name + ".tmp")
        tmp.write_bytes(open(os.path.join(root, name), "rb").read())
        _finish(tmp, target_dir / name)


def _state_rope_theta_for_every_reader(path: str, rope_theta: float) -> None:
  """transformers 5 writes RoPE's base only inside `rope_parameters`, which transformers 4.x (AnyGPT's
  4.34.1, most serving stacks) does not read: it would load a base of 5e5 as the default 1e4. The
  top-level `rope_theta` is what 4.x reads, and 5 reads it too."""
  with open(path) as f:
    config = json.load(f)
  config["rope_theta"] = float(rope_theta)
  with open(path, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)


def _check_vocabulary(config: ModelConfig, layout: VocabularyLayout) -> None:
  if config.vocab_size < layout.vocab_size:
    raise ValueError(f"model has {config.vocab_size} rows, fewer than the layout's {layout.vocab_size}")


# --- entry points ----------------------------------------------------------------------------------
def save_hf_checkpoint(params: Any, config: ModelConfig, layout: VocabularyLayout, out_dir: str,
                       spm_path: str | None = None, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
                       legacy: bool = True, trained_length: int | None = None) -> str:
  """Exports `params` (in memory) as a HuggingFace LLaMA directory; returns `out_dir`.

  Args:
    params: the model's parameter tree (numpy or host-addressable jax arrays).
    config: its ModelConfig; its padded rows beyond `layout.vocab_size` are dropped.
    layout: the vocabulary layout the model was trained with.
    spm_path: the SentencePiece model; tokenizer files are written when given.
    dtype: 'float32', 'bfloat16' or 'float16' for the saved weights.
    legacy: the text mode the run's data pipeline used (stated in the tokenizer config).
    trained_length: the packed length trained on (max_position_embeddings is at least this).
  """
  _check_vocabulary(config, layout)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  plan = hf_tensor_plan(config, vocab_rows=layout.vocab_size)
  write_weights(params_tensors(params, plan), plan, out_dir, dtype, max_shard_bytes)
  write_metadata(config, layout, out_dir, dtype, spm_path, legacy, trained_length)
  return out_dir


def export_checkpoint(model_dir: epath.PathLike, out_dir: epath.PathLike, config: ModelConfig,
                      layout: VocabularyLayout, step: int | None = None, spm_path: str | None = None,
                      dtype: str = "bfloat16", max_shard_bytes: int = 5 * 2**30, legacy: bool = True,
                      trained_length: int | None = None, ids: TokenIds | None = None) -> int:
  """Streams a run's orbax checkpoint into a HuggingFace directory; returns the step exported.

  Peak host memory is one stored parameter (or one chunk-block of a scanned one) plus one HF
  tensor; nothing goes to a device. Paths may be local, relative or gs://-style.
  """
  from anygpt_jax.export.orbax_arrays import CheckpointArrays

  _check_vocabulary(config, layout)
  arrays = CheckpointArrays(model_dir, step)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  plan = hf_tensor_plan(config, vocab_rows=layout.vocab_size)
  write_weights(checkpoint_tensors(arrays, plan), plan, out_dir, dtype, max_shard_bytes)
  write_metadata(config, layout, out_dir, dtype, spm_path, legacy, trained_length, ids)
  return arrays.step
