"""Each role's commands run with only that role's packages installed.

The tokenizer package and the job run on machines without a TPU stack (nothing they load imports
JAX or TensorFlow); the trainer's commands run on machines without PyTorch. Each probe runs in a
subprocess where every distribution outside the role (`pip install anygpt-jax[role]`, resolved
over this environment by tests/roles.py) is unimportable, as if it had never been installed.
"""

import importlib.metadata
import json
import subprocess
import sys

import roles

_TOKENIZE_PROBE = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("jax") is importlib.util.find_spec("tensorflow") is None  # as if not installed
import anygpt_jax.tokenizers
from anygpt_jax.tokenizers import (anygpt_data, audio_io, image, inputs, job, media, music, ray_engine,
                                   readers, seed_model, soundstorm, speech, tfrecord)
from anygpt_jax.tokenizers.readers import anyinstruct, mmc4, speech_sets, webdataset
from anygpt_jax.testing import demo_corpus, tiny_tokenizers
from anygpt_jax.tools import tokenize_media, vocab
from anygpt_jax.data import shards
speech.speechtokenizer_class()  # the speechtokenizer package is where TensorFlow (and so JAX) would come in
out = sys.argv[1]
rec = {"id": "a", "text": "hi", "speech": "<sosp><🗣️5><eosp>"}
open(out + "/a.jsonl", "w").write(json.dumps(rec) + "\n")
rc = tokenize_media.main(["--anygpt_data", out + "/a.jsonl", "--corpus", "c", "--output_dir", out, "--no_progress"])
rc_vocab = vocab.main(["--text_vocab_size", "32000"])
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in
                ("jax", "jaxlib", "flax", "tensorflow", "seqio"))
print(json.dumps({"rc": rc, "rc_vocab": rc_vocab, "loaded": loaded}))
"""

_TRAIN_PROBE = r"""
import contextlib, io, json, sys
from anygpt_jax.cli import gin_config
gin_config.import_configurables()  # the trainer's whole import graph: model, SeqIO pipeline, checkpoints
codes = {}
for name, module in COMMANDS.items():
  command = __import__("anygpt_jax.tools." + module, fromlist=["main"])
  with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
      command.main(["--help"])
    except SystemExit as e:
      codes[name] = (e.code, out.getvalue().split()[:2])
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in
                ("torch", "torchaudio", "diffusers", "speechtokenizer", "encodec"))
print(json.dumps({"codes": codes, "loaded": loaded}))
"""


_SCORE_PROBE = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("jax") is importlib.util.find_spec("tensorflow") is None  # as if not installed
from anygpt_jax.evaluation import benchmarks
from anygpt_jax.testing import benchmark_data
from anygpt_jax.tools import eval as eval_cli
out = sys.argv[1]
data = str(benchmark_data.write_librispeech(out + "/LibriSpeech", utterances_per_chapter=1))
items = benchmarks.get("librispeech_asr").items(data)
(run := __import__("pathlib").Path(out) / "eval" / "librispeech_asr").mkdir(parents=True)
(run / "run.json").write_text(json.dumps({"model": "m", "step": None, "data": data, "limit": None, "seed": 0,
                                          "settings": {"num_beams": 5}}))
lines = [json.dumps({"id": item.id, "text": item.references[0].lower()}) for item in items]
(run / "generations-00000-of-00001.jsonl").write_text("\n".join(lines) + "\n")
rc = eval_cli.main(["score", "--output_dir", out + "/eval"])
wer = json.load(open(out + "/eval/report.json"))["benchmarks"][0]["scores"]["WER"]
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in
                ("jax", "jaxlib", "flax", "tensorflow", "seqio"))
print(json.dumps({"rc": rc, "wer": wer, "loaded": loaded}))
"""


def _role_blocker(role: str) -> str:
  """Source that makes every distribution of the full install outside `role` unimportable."""
  requires = importlib.metadata.distribution("anygpt-jax").requires
  others = set(roles.closure(requires, "dev")) - set(roles.closure(requires, role))
  return roles.blocking_code(others)


def _probe(role: str, code: str, *args: str, cwd=None) -> dict:
  proc = subprocess.run([sys.executable, "-c", _role_blocker(role) + code, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tokenize_role_runs_without_jax_or_tensorflow(tmp_path):
  result = _probe("tokenize", _TOKENIZE_PROBE, str(tmp_path), cwd=tmp_path)
  assert result == {"rc": 0, "rc_vocab": 0, "loaded": []}
  assert (tmp_path / "c-train-00000-of-00001").stat().st_size > 0


def test_train_role_commands_import_without_torch(tmp_path):
  result = _probe("train", f"COMMANDS = {roles.TRAIN_COMMANDS!r}\n" + _TRAIN_PROBE, cwd=tmp_path)
  assert result["loaded"] == []
  # Every command parsed --help: exit code 0 and its own usage line.
  assert result["codes"] == {name: [0, ["usage:", name]] for name in roles.TRAIN_COMMANDS}


def test_eval_scoring_runs_in_the_tokenize_role(tmp_path):
  """`anygpt-eval score` on the scoring box: no JAX, TensorFlow or SeqIO."""
  result = _probe("tokenize", _SCORE_PROBE, str(tmp_path), cwd=tmp_path)
  assert result == {"rc": 0, "wer": 0.0, "loaded": []}
