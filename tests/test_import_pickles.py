"""A pickled checkpoint from the internet must never run code: every `torch.load` in the repository
passes `weights_only=True`, and a `.bin` whose pickle calls a function is refused before it runs."""

import ast
import pathlib
import pickle

import pytest

from anygpt_jax.weights.pickled import UnsafePickleError, load_pickled_tensors
from anygpt_jax.weights.sources import open_source

REPO = pathlib.Path(__file__).resolve().parent.parent


class _WritesAFile:
  """Unpickling this calls `pathlib.Path.touch(marker)`: what an attacker's payload would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "consolidated.00.pth"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, name):
  import torch

  marker = tmp_path / "pwned"
  directory = tmp_path / "ckpt"
  directory.mkdir()
  # A real torch zip file whose state dict holds the payload next to a tensor.
  torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "payload": _WritesAFile(marker)}, directory / name)
  (directory / ("config.json" if name.endswith(".bin") else "params.json")).write_text("{}")
  with pytest.raises(UnsafePickleError, match=name):
    open_source(str(directory))
  assert not marker.exists(), "the payload ran"
  # The same file through plain pickle semantics would run it: the test's payload is real.
  with pytest.raises(UnsafePickleError):
    load_pickled_tensors(directory / name)
  pickle.loads(pickle.dumps(_WritesAFile(marker)))
  assert marker.exists()


def _torch_load_calls(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
      yield node


def test_every_torch_load_in_the_repository_is_weights_only():
  files = [p for d in ("anygpt_jax", "tools", "tests", "tasks") for p in (REPO / d).rglob("*.py")]
  calls, offenders = 0, []
  for path in files:
    for call in _torch_load_calls(ast.parse(path.read_text(), str(path))):
      calls += 1
      flags = {k.arg: k.value for k in call.keywords}
      value = flags.get("weights_only")
      if not (isinstance(value, ast.Constant) and value.value is True):
        offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
  assert calls >= 5  # the scan sees the repository's call sites
  assert not offenders, f"torch.load without weights_only=True: {offenders}"
