"""`anygpt-serve --engine vllm` in front of a real vLLM (vLLM's CPU build, `make vllm-env`) on the
demo-sized export, through the README's two lines ("Serving on a GPU box"): greedy answers equal the
JAX engine's and transformers', every sampled media span holds only its modality's codes and closes,
a client that hangs up aborts its vLLM request, and a vLLM killed mid-request gives 503 with a reason
until it is restarted. Slow: vLLM starts in about a minute each time.

The README's lines run as written but for the ports, the export and tokenizer paths (links in the
scratch directory), `--dtype float32 --max-model-len 1024` appended to vLLM's (the JAX engine and
transformers compute in float32 here; the last flag wins), and to the front's a media directory and
short answers for this CPU.
"""

import json
import os
import pathlib
import shlex
import subprocess
import threading
import time
import urllib.request

import numpy as np
import openai
import pytest

from anygpt_jax.testing import generation_setup
from anygpt_jax.testing.vllm_server import VllmServer
from test_serve import call, free_port, running
from tools import serve

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).resolve().parent.parent
VLLM_VENV = REPO / ".venv-vllm"
MEDIA = ("image", "speech", "music")
MODEL = "anygpt-7b-chat"  # the front names the model after --model's directory


def readme_lines() -> tuple[str, str]:
  section = (REPO / "README.md").read_text().split("### Serving on a GPU box (vLLM)", 1)[1].split("\n## ", 1)[0]
  lines = [l for l in section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines() if l.strip()]
  vllm, front = lines
  assert "vllm.entrypoints.openai.api_server" in vllm and front.startswith("anygpt-serve --engine vllm"), lines
  return vllm, front


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The demo-sized export (vLLM's CPU attention takes head sizes from 32) and the tiny tokenizers,
  linked where the README's lines look for them."""
  if not (VLLM_VENV / ".installed").exists():
    subprocess.run(["make", "vllm-env"], cwd=REPO, check=True, timeout=1800)
  built = generation_setup.build(tmp_path_factory.mktemp("vllm"), "demo")
  cwd = built["root"] / "cwd"
  (cwd / "exports").mkdir(parents=True)
  (cwd / "exports" / "anygpt-7b-chat").symlink_to(built["export"])
  (cwd / "models").symlink_to(built["root"] / "tokenizers")
  return {**built, "cwd": cwd}


def readme_vllm(cwd: pathlib.Path, log: pathlib.Path) -> VllmServer:
  """The README's vLLM line on a free port, float32 and a 1024-token context appended."""
  port = free_port()
  env_part, command = readme_lines()[0].replace("--port 8001", f"--port {port}").split(" python ", 1)
  argv = ["python", *shlex.split(command), "--dtype", "float32", "--max-model-len", "1024"]
  return VllmServer(argv, port, VLLM_VENV, dict(kv.split("=") for kv in env_part.split()), log, cwd=cwd)


@pytest.fixture(scope="module")
def stack(setup):
  """vLLM, the vLLM-engine front and a JAX-engine front on the same export, each on 127.0.0.1."""
  vllm = readme_vllm(setup["cwd"], setup["root"] / "vllm.log")
  vllm.start()
  front_line = readme_lines()[1].replace("http://127.0.0.1:8001", vllm.url)
  argv = shlex.split(front_line)[1:] + [f"--media_dir={setup['media']}", "--image_steps=2", "--set=text.max_new_tokens=8",
                                        "--set=speech.max_new_tokens=40", "--set=music.max_new_tokens=40"]
  old = os.getcwd()
  os.chdir(setup["cwd"])
  try:
    apps = {}
    for engine in ("vllm", "jax"):
      args = serve.build_parser().parse_args(argv + [f"--engine={engine}", f"--output_dir=serve_{engine}"])
      args.output_dir = os.path.abspath(args.output_dir)
      apps[engine] = serve.build_app(args)
  finally:
    os.chdir(old)
  ports = {engine: free_port() for engine in apps}
  with running(apps["vllm"], ports["vllm"]), running(apps["jax"], ports["jax"]):
    clients = {engine: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                                     timeout=300) for engine, port in ports.items()}
    yield {"vllm": vllm, "clients": clients, "urls": {e: f"http://127.0.0.1:{p}" for e, p in ports.items()},
           "apps": apps, **setup}
  vllm.kill()


def ask(client, task: str, **kwargs):
  return client.completions.create(model=MODEL, prompt=task, temperature=0, **kwargs)


TASKS = ("text|image|a red car", "text|speech|hello there", "text|music|a calm violin", "speech|text|{speech}",
         "image|text|{photo}")


def test_greedy_answers_equal_the_jax_engine_and_transformers(stack, tmp_path):
  import torch
  import transformers

  from anygpt_jax.generation.hf import ModalityConstraintProcessor
  from anygpt_jax.serving.protocol import MediaInputs, parse_completion

  media = stack["media"]
  tasks = [t.format(speech=media / "speech.wav", photo=media / "photo.png") for t in TASKS]
  got = {engine: [ask(client, t, extra_body={"num_beams": 1}) for t in tasks]
         for engine, client in stack["clients"].items()}
  ids = {engine: [c.choices[0].model_extra["token_ids"] for c in replies] for engine, replies in got.items()}
  assert ids["vllm"] == ids["jax"]
  assert all(ids["vllm"])
  # transformers on the same export, the request's own settings and the same constraints.
  service = stack["apps"]["vllm"].state.service
  model = transformers.LlamaForCausalLM.from_pretrained(stack["export"]).eval()
  for task, reply in zip(tasks, got["vllm"]):
    parsed = parse_completion({"prompt": task, "temperature": 0, "num_beams": 1},
                              MediaInputs((str(media),), str(tmp_path), 1 << 20))
    request = service.prepare(parsed).request
    s = request.settings
    prompt = torch.tensor([list(request.prompt)])
    assert prompt[0].tolist() == reply.model_extra["prompt_token_ids"]
    processor = ModalityConstraintProcessor(service.tables, prompt.shape[1], s.max_new_tokens, [request.modality])
    with torch.no_grad():
      out = model.generate(prompt, do_sample=False, max_new_tokens=s.max_new_tokens,
                           min_new_tokens=s.min_new_tokens, repetition_penalty=s.repetition_penalty,
                           logits_processor=[processor], eos_token_id=list(s.stop_ids), pad_token_id=0)
    assert out[0, prompt.shape[1]:].tolist() == reply.choices[0].model_extra["token_ids"], task


def test_sampled_media_spans_hold_only_their_codes_and_close(stack):
  from anygpt_jax.generation import find_spans

  client, layout = stack["clients"]["vllm"], stack["apps"]["vllm"].state.service.vocabulary.layout
  for modality in MEDIA:
    for seed in range(3):
      choice = client.completions.create(model=MODEL, prompt=f"text|{modality}|a song about seed {seed}",
                                         seed=seed, temperature=1.0).choices[0]
      spans = find_spans(layout, choice.model_extra["token_ids"])
      assert [s.modality for s in spans] == [modality] and spans[0].closed, (modality, seed)
      assert choice.model_extra["media"][0]["modality"] == modality


def vllm_metric(url: str, name: str, **labels) -> float:
  """A vLLM Prometheus metric at `url`, summed over the series whose labels include `labels`."""
  total = 0.0
  for line in urllib.request.urlopen(url + "/metrics", timeout=10).read().decode().splitlines():
    if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
      total += float(line.rsplit(" ", 1)[1])
  return total


def finished(url: str) -> float:
  """Requests vLLM decoded to their end (a stop id or the length)."""
  return sum(vllm_metric(url, "vllm:request_success_total", finished_reason=r) for r in ("stop", "length"))


# A text answer of 850 tokens (min_tokens holds it open): seconds of decoding on this CPU.
LONG_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 850,
             "min_tokens": 850, "temperature": 0}


def long_request(url: str, result: dict):
  """LONG_CHAT in a thread; its (status, answer) lands in `result`."""
  thread = threading.Thread(target=lambda: result.update(answer=call(url + "/v1/chat/completions", LONG_CHAT,
                                                                     timeout=120)))
  thread.start()
  return thread


def test_a_client_that_hangs_up_aborts_its_vllm_request(stack):
  vllm, front = stack["vllm"], stack["apps"]["vllm"].state.service.engine
  aborted, done = front.aborted, finished(vllm.url)
  with pytest.raises(TimeoutError):  # the client gives up after 1.5 s, seconds before the answer is done
    call(stack["urls"]["vllm"] + "/v1/chat/completions", LONG_CHAT, timeout=1.5)
  deadline = time.monotonic() + 60
  while (front.aborted == aborted or vllm_metric(vllm.url, "vllm:num_requests_running")) and \
      time.monotonic() < deadline:
    time.sleep(0.2)
  assert front.aborted == aborted + 1
  # vLLM holds no request and finished none: it dropped the answer instead of decoding it to the end.
  assert vllm_metric(vllm.url, "vllm:num_requests_running") == 0 and finished(vllm.url) == done


def test_beam_search_is_refused_with_the_reason(stack):
  with pytest.raises(openai.BadRequestError, match="does not run beam search"):
    ask(stack["clients"]["vllm"], f"image|text|{stack['media'] / 'photo.png'}", extra_body={"num_beams": 3})


def test_a_killed_vllm_is_503_with_the_reason_and_a_restarted_one_serves(stack):
  vllm, url, client = stack["vllm"], stack["urls"]["vllm"], stack["clients"]["vllm"]
  result = {}
  thread = long_request(url, result)
  time.sleep(2)
  vllm.kill()
  thread.join(timeout=60)
  status, answer = result["answer"]
  assert status == 503 and "vLLM engine" in answer["error"]["message"], answer
  with pytest.raises(openai.APIStatusError) as e:
    ask(client, "text|image|a cat")
  assert e.value.status_code == 503 and "unreachable" in str(e.value)
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(url + "/health")
  assert e.value.code == 503 and "unreachable" in json.loads(e.value.read())["reason"]
  vllm.start()  # the front itself is not restarted
  assert json.load(urllib.request.urlopen(url + "/health"))["ok"]
  (item,) = ask(client, "text|image|a cat").choices[0].model_extra["media"]
  assert item["modality"] == "image" and item["codes"] == 32
  assert np.isfinite(json.load(urllib.request.urlopen(url + "/health"))["served"])


def test_the_readme_vllm_load_benchmark_runs(capsys):
  """The README's `bench_serve --vllm_venv` line, with few requests: the vLLM engine's rows, no failure."""
  from tools import bench_serve
  (line,) = [l for l in (REPO / "README.md").read_text().splitlines()
             if l.startswith("python -m tools.bench_serve") and "--vllm_venv" in l]
  argv = shlex.split(line)[3:]
  assert argv[argv.index("--vllm_venv") + 1] == ".venv-vllm" and argv[argv.index("--config") + 1] == "demo"
  assert bench_serve.main(["--config", "demo", "--vllm_venv", str(VLLM_VENV), "--requests", "3", "--clients", "3",
                           "--max_tokens", "4", "--repeats", "1"]) == 0
  rows = [l.split("|") for l in capsys.readouterr().out.splitlines() if l.startswith("| ")][1:]  # after the header
  assert [r[1].strip() for r in rows] == ["front + JAX engine", "front + vLLM engine",
                                          "anygpt-generate, one at a time"]
  assert all(r[6].strip() == "0" for r in rows)
