"""An imported checkpoint as a run directory of ours: what `anygpt-import` writes.

  {output_dir}/config.gin                 model_config and vocabulary_layout bindings
  {output_dir}/vocabulary_layout.json     the layout
  {output_dir}/checkpoints/0/             orbax step 0: state = {'params': ...}, config, layout

`anygpt-export` exports it like any run, and `anygpt-train` warm-starts from it
(`warm_start_params.source = 'run'`, `warm_start_params.path = output_dir`). It holds parameters
only (no optimizer state, no data position): a run starts from it, it does not resume it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from etils import epath

from anygpt_jax import filesystem
from anygpt_jax.vocabulary.layout import VocabularyLayout

IMPORT_STEP = 0


def run_gin_text(model_name: str, overrides: Mapping[str, Any], layout: VocabularyLayout,
                 sentencepiece_model: str | None, note: str = "") -> str:
  """The gin bindings that rebuild the model configuration and vocabulary layout."""
  lines = [f"# {line}" for line in note.splitlines()]
  lines += [f"model_config.name = {model_name!r}", f"model_config.overrides = {dict(overrides)!r}"]
  if sentencepiece_model:
    lines.append(f"vocabulary_layout.sentencepiece_model = {sentencepiece_model!r}")
  else:
    lines += [f"vocabulary_layout.text_vocab_size = {layout.text_vocab_size}",
              "vocabulary_layout.sentencepiece_model = None"]
  lines += [f"vocabulary_layout.chat_tokens = {layout.chat_tokens}",
            f"vocabulary_layout.pad_multiple = {layout.pad_multiple}"]
  return "\n".join(lines) + "\n"


def per_layer_chunks(params: Any) -> Any:
  """Orbax save arguments: a scanned parameter ('layers' subtree, [layers, ...]) stored in one
  chunk per layer; every other parameter in chunks of at most 64 MiB."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  def args(path, leaf):
    if any(getattr(key, "key", None) == "layers" for key in path) and np.ndim(leaf) > 1:
      return ocp.SaveArgs(chunk_byte_size=max(1, leaf.nbytes // leaf.shape[0]), shard_axes=(0,))
    return ocp.SaveArgs(chunk_byte_size=64 * 2**20)  # the embedding and head: decoded in parts
  return jax.tree_util.tree_map_with_path(args, params)


def save_params_as_run(params: Any, layout: VocabularyLayout, output_dir: str, gin_text: str) -> epath.Path:
  """Writes `params` (numpy or jax arrays) as step 0 of a run directory; returns the directory.

  Raises:
    FileExistsError: `output_dir` already has checkpoints (an import never overwrites a run).
  """
  import orbax.checkpoint as ocp

  from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints

  directory = filesystem.resolve(output_dir)
  checkpoints = Checkpoints(output_dir, CheckpointConfig(async_save=False))
  try:
    if checkpoints.latest_step() is not None:
      raise FileExistsError(f"{checkpoints.directory} already holds step {checkpoints.latest_step()}; "
                            "import into a new directory")
    # The items of `Checkpoints.save`, with one storage chunk per layer of a scanned parameter, so
    # that a reader (the streaming export) decodes one layer at a time.
    checkpoints.manager.save(IMPORT_STEP, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave({"params": params}, save_args={"params": per_layer_chunks(params)}),
        config=ocp.args.JsonSave({"operative_gin": gin_text}),
        layout=ocp.args.JsonSave(layout.to_json_dict())), force=True)
    checkpoints.wait_until_finished()
  finally:
    checkpoints.close()
  (directory / "config.gin").write_text(gin_text)
  (directory / "vocabulary_layout.json").write_text(json.dumps(layout.to_json_dict(), indent=1))
  return directory
