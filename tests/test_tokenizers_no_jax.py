"""The tokenizer package and the job run on machines without a TPU stack: nothing they load imports JAX."""

import json
import subprocess
import sys
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

_PROBE = r"""
import json, sys
import anygpt_jax.tokenizers
from anygpt_jax.tokenizers import (anygpt_data, audio_io, demo_corpus, image, inputs, job, media, music, ray_engine,
                                   readers, seed_model, soundstorm, speech, tfrecord, tiny)
from anygpt_jax.tokenizers.readers import anyinstruct, mmc4, speech_sets, webdataset
import tools.tokenize_media
from anygpt_jax.data import shards
speech.speechtokenizer_class()  # the speechtokenizer package is where TensorFlow (and so JAX) would come in
out = sys.argv[1]
rec = {"id": "a", "text": "hi", "speech": "<sosp><🗣️5><eosp>"}
open(out + "/a.jsonl", "w").write(json.dumps(rec) + "\n")
rc = tools.tokenize_media.main(["--anygpt-data", out + "/a.jsonl", "--corpus", "c", "--output-dir", out,
                                "--no-progress"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow"))
print(json.dumps({"rc": rc, "loaded": loaded}))
"""


def test_tokenizers_and_job_do_not_import_jax_or_tensorflow(tmp_path):
  proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == {"rc": 0, "loaded": []}
  assert (tmp_path / "c-train-00000-of-00001").stat().st_size > 0
