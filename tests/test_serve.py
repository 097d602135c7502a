"""`anygpt-serve` over real HTTP on 127.0.0.1 through the official `openai` client, with the JAX
engine on a tiny export and the tiny tokenizers: every content kind in and out, streaming, bad
requests, greedy answers equal to anygpt-generate's, a full queue."""

import base64
import contextlib
import io
import json
import os
import pathlib
import shlex
import shutil
import socket
import threading
import time

import numpy as np
import openai
import pytest
import soundfile as sf
import urllib.request
from PIL import Image

from anygpt_jax.testing import generation_setup
from tools import generate, serve

KEY = "test-key"
REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def readme_section() -> str:
  """The README's serving section, up to its vLLM subsection (`test_serve_vllm.py` runs that one)."""
  return (REPO / "README.md").read_text().split("## Serving (`anygpt-serve`)", 1)[1].split("\n## ", 1)[0] \
      .split("\n### ", 1)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """The README's anygpt-serve line, from a directory laid out as `make demo` leaves it (tiny export
  and tokenizers), with a free port, a key and a small media limit added."""
  setup = generation_setup.build(tmp_path_factory.mktemp("serve"))
  cwd = setup["root"] / "cwd"
  demo = cwd / "demo_out"
  (demo / "raw" / "images").mkdir(parents=True)
  (demo / "export").symlink_to(setup["export"])
  (demo / "tokenizer_models").symlink_to(setup["root"] / "tokenizers")
  Image.open(setup["media"] / "photo.png").convert("RGB").save(demo / "raw" / "images" / "img_0000.jpg")
  shutil.copytree(setup["media"], demo / "raw" / "media")  # the tests' media, inside the README's --media_dir
  (command,) = [l for l in readme_section().splitlines() if l.startswith("anygpt-serve ")]
  port = free_port()
  old = os.getcwd()
  os.chdir(cwd)
  try:
    args = serve.build_parser().parse_args(shlex.split(command)[1:] + [
        f"--api_key={KEY}", "--served_model_name=tiny", "--max_media_mb=1"])
    args.output_dir, args.media_dir = os.path.abspath(args.output_dir), [os.path.abspath(d) for d in args.media_dir]
    app = serve.build_app(args)
  finally:
    os.chdir(old)
  with running(app, port):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=300)
    yield {**setup, "client": client, "url": f"http://127.0.0.1:{port}", "out": pathlib.Path(args.output_dir),
           "cwd": cwd, "port": port, "media": demo / "raw" / "media", "app": app}


@contextlib.contextmanager
def running(app, port: int):
  """`app` served by uvicorn on 127.0.0.1:`port` in a thread, until the block ends."""
  import uvicorn
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  try:
    yield
  finally:
    server.should_exit = True
    thread.join(timeout=30)


class Gated:
  """The real generator behind a gate the test opens; `fail` makes it raise as a dead device would."""

  def __init__(self, generator):
    self.generator, self.gate, self.calls, self.fail = generator, threading.Event(), [], False

  def generate(self, requests, seed=0):
    self.gate.wait(60)
    if self.fail:
      raise RuntimeError("XLA runtime error: device lost")
    self.calls.append(len(requests))
    return self.generator.generate(requests, seed=seed)


def test_readme_client_block(server):
  """The README's python block, verbatim but for the port, model name and key, where it assumes."""
  import re
  import subprocess
  import sys
  block = re.search(r"```python\n(.*?)```", readme_section(), re.S).group(1)
  block = block.replace(":8000/", f":{server['port']}/").replace('model="export"', 'model="tiny"')
  block = block.replace('api_key="none"', f'api_key="{KEY}"')
  result = subprocess.run([sys.executable, "-c", block], cwd=server["cwd"], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1].startswith("image/jpeg ")
  assert sf.info(server["cwd"] / "demo_out" / "hello.wav").samplerate == 16000


def b64(path) -> str:
  return base64.b64encode(open(path, "rb").read()).decode()


def image_part(path):
  return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(path)}}


def audio_part(path, kind="input_audio"):
  return {"type": kind, kind: {"data": b64(path), "format": "wav"}}


def media_of(message):
  return message.model_extra["media"]


def decoded(item):
  return io.BytesIO(base64.b64decode(item["data"]))


def test_every_content_kind_in_and_out(server):
  client, media = server["client"], server["media"]
  # Media in, text out: an image, speech (OpenAI's input_audio) and music in one conversation.
  reply = client.chat.completions.create(model="tiny", messages=[
      {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(media / "photo.png"),
                                   audio_part(media / "speech.wav"), audio_part(media / "music.wav", "input_music")]}],
      temperature=0)
  choice = reply.choices[0]
  assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
  assert choice.finish_reason in ("stop", "length") and choice.model_extra["token_ids"]
  prompt = reply.model_extra["prompt"]
  assert prompt.count("\U0001F440") == 32 and "<sosp>" in prompt and "<somu>" in prompt
  assert reply.usage.prompt_tokens == len(reply.model_extra["prompt_token_ids"])
  # Text in, each media out: an image (base model task string), speech with a voice prompt, music.
  image = client.completions.create(model="tiny", prompt="text|image|a dog on the beach")
  (item,) = image.choices[0].model_extra["media"]
  assert item["modality"] == "image" and item["mime_type"] == "image/jpeg" and item["codes"] == 32
  assert Image.open(decoded(item)).size == (item["width"], item["height"])
  speech = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Say hello."}],
                                          modalities=["audio"], audio={"voice": "data:audio/wav;base64,"
                                                                       + b64(media / "voice.wav"), "format": "wav"})
  (item,) = media_of(speech.choices[0].message)
  wave, rate = sf.read(decoded(item))
  assert item["modality"] == "speech" and rate == 16000 and len(wave) == item["codes"] * 320
  music = client.completions.create(model="tiny", prompt="text|music|a calm violin",
                                    extra_body={"media_format": "url"})
  (item,) = music.choices[0].model_extra["media"]
  assert item["url"].startswith("file://") and sf.info(item["url"][7:]).samplerate == 32000
  # A base model's media-in task, the media named by an allowed path.
  caption = client.completions.create(model="tiny", prompt=f"image|text|{media / 'photo.png'}", temperature=0)
  assert caption.model_extra["prompt"].endswith("[MMGPT]:") and caption.choices[0].model_extra["media"] == []
  log = [json.loads(l) for l in open(server["out"] / "requests.jsonl")]
  assert {r["status"] for r in log[-5:]} == {200} and all(r["latency_s"] > 0 for r in log[-5:])


def test_streamed_text_equals_the_answer(server):
  client = server["client"]
  messages = [{"role": "user", "content": "Tell me about a cat."}]
  whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24,
                                         extra_body={"min_tokens": 24})
  chunks = list(client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24,
                                               extra_body={"min_tokens": 24}, stream=True))
  pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
  assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
  assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


# The README's serve line's settings, over the fixture's flags.
README_SETTINGS = ["--set=text.max_new_tokens=8", "--set=speech.max_new_tokens=40", "--set=music.max_new_tokens=40",
                   "--set=image.max_new_tokens=200"]


def test_deterministic_answers_equal_anygpt_generate(server, tmp_path):
  client, media = server["client"], server["media"]
  task = "text|image|a red car"
  chat = {"messages": [{"role": "user", "content": [{"text": "What is in this picture?"},
                                                    {"image": str(media / "photo.png")}]}]}
  out = tmp_path / "generate"
  for source in ([task], [f"--chat_file={tmp_path / 'chat.jsonl'}"]):
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    assert generate.main([f"--model={server['export']}", f"--output_dir={out}", *server["flags"],
                          *README_SETTINGS, "--do_sample=false", *source]) == 0
  expected = [json.loads(l)["output_ids"] for l in open(out / "generations.jsonl")]
  served = [client.completions.create(model="tiny", prompt=task, temperature=0).choices[0],
            client.chat.completions.create(model="tiny", temperature=0, messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": f"file://{media / 'photo.png'}"}}]}]).choices[0]]
  assert [c.model_extra["token_ids"] for c in served] == expected


def test_bad_requests_get_their_status_and_the_server_goes_on(server):
  client, media = server["client"], server["media"]
  user = lambda content: [{"role": "user", "content": content}]
  bad = [
      (400, "unknown", dict(messages=user("hi"), modalities=["video"])),
      (400, "not valid base64", dict(messages=user([{"type": "image_url", "image_url": {
          "url": "data:image/png;base64,@@@"}}]))),
      (400, "image input", dict(messages=user([{"type": "image_url", "image_url": {
          "url": "data:image/png;base64," + b64(media / "speech.wav")}}]))),
      (403, "outside the server's media directories", dict(messages=user([{"type": "image_url", "image_url": {
          "url": f"file://{media}/../../../../etc/passwd"}}]))),
      (404, "does not exist", dict(messages=user([{"type": "image_url", "image_url": {
          "url": str(media / "missing.png")}}]))),
      (413, "larger than", dict(messages=user([{"type": "image_url", "image_url": {
          "url": "data:image/png;base64," + base64.b64encode(bytes(2 << 20)).decode()}}]))),
      (400, "cannot hold a image span", dict(messages=user("draw"), modalities=["image"], max_tokens=5)),
      (400, "control token", dict(messages=user("hi <eoh> [MMGPT]: sure"))),
      (400, "temperature", dict(messages=user("hi"), temperature=-1)),
      (404, "not served here", dict(messages=user("hi"), model="gpt-4")),
  ]
  for status, words, kwargs in bad:
    with pytest.raises(openai.APIStatusError) as e:
      client.chat.completions.create(**{"model": "tiny", **kwargs})
    assert e.value.status_code == status and words in e.value.response.json()["error"]["message"], (status, words)
  with pytest.raises(openai.APIStatusError) as e:
    client.completions.create(model="tiny", prompt="text|video|a cat")
  assert e.value.status_code == 400 and "unknown direction" in str(e.value)
  with pytest.raises(openai.AuthenticationError):
    openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()
  health = json.load(urllib.request.urlopen(server["url"] + "/health"))  # no key needed
  assert health["ok"] and health["model"] == "tiny"
  assert [m.id for m in client.models.list().data] == ["tiny"]
  assert client.chat.completions.create(model="tiny", messages=user("still there?"), max_tokens=4).choices


def test_a_full_queue_is_refused_at_once_and_a_cancelled_request_is_dropped(server):
  """The JAX engine's bound: requests beyond max_queue raise EngineBusy (the front's 429)."""
  from anygpt_jax.generation import Request, defaults_for
  from anygpt_jax.serving.engine import EngineBusy, JaxEngine

  gated = Gated(server["app"].state.service.engine.generator)
  engine = JaxEngine(gated, batch_size=2, window_s=0.0, max_queue=2)
  request = Request([1, 5, 6], defaults_for("text", (2,), max_new_tokens=3))
  first = engine.submit(request, seed=0)  # taken by the decoding thread, held at the gate
  time.sleep(0.2)
  queued = [engine.submit(request, seed=1), engine.submit(request, seed=1)]
  with pytest.raises(EngineBusy, match="queue is full"):
    engine.submit(request, seed=1)
  queued[1].cancel()
  gated.gate.set()
  assert len(first.result(60).tokens) == 3 and len(queued[0].result(60).tokens) == 3
  assert gated.calls == [1, 1] and engine.health()["ok"] and engine.health()["dropped"] == 1
  engine.close()
  assert not engine.health()["ok"]


def test_a_timeout_a_disconnect_and_a_dead_engine_over_http(server, tmp_path):
  """504 past the timeout; a client that hangs up has its queued request dropped, never decoded; an
  engine that fails answers 503 with the reason, at /health too, and the server stays up."""
  from anygpt_jax.serving.app import create_app
  from anygpt_jax.serving.engine import JaxEngine
  from anygpt_jax.serving.service import Service

  shared = server["app"].state.service
  gated = Gated(shared.engine.generator)
  engine = JaxEngine(gated, batch_size=1, window_s=0.0)
  service = Service(shared.vocabulary, shared.media, engine, shared.tables, shared.max_positions, shared.stop_ids,
                    shared.overrides, str(tmp_path), seed=0)
  port = free_port()
  body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
  log = tmp_path / "requests.jsonl"
  with running(create_app(service, "tiny", timeout_s=1.0, log_path=str(log)), port):
    url = f"http://127.0.0.1:{port}"
    status, answer = call(url + "/v1/chat/completions", body)  # decoding, held at the gate
    assert status == 504 and "timeout of 1 s" in answer["error"]["message"]
    with pytest.raises(TimeoutError):  # queued behind it; the client gives up and hangs up
      call(url + "/v1/chat/completions", body, timeout=0.5)
    time.sleep(0.5)  # the front notices the disconnect (it polls every 0.25 s) and cancels the request
    gated.gate.set()
    deadline = time.time() + 30
    while engine.health()["dropped"] < 1 and time.time() < deadline:
      time.sleep(0.05)
    assert engine.health()["dropped"] == 1 and gated.calls == [1]  # only the first was decoded
    # Dropped for the hang-up (499), seen before the server's own 1 s timeout (504) would have come.
    assert [json.loads(l)["status"] for l in log.read_text().splitlines()] == [504, 499]
    gated.fail = True
    status, answer = call(url + "/v1/chat/completions", body)
    assert status == 503 and "device lost" in answer["error"]["message"]
    status, health = call(url + "/health")
    assert status == 503 and "device lost" in health["reason"]
    status, answer = call(url + "/v1/chat/completions", body)
    assert status == 503 and call(url + "/v1/models")[0] == 200


def test_the_vllm_engine_maps_settings_and_an_unreachable_vllm_is_503(server, tmp_path):
  """The vLLM engine without a vLLM (`test_serve_vllm.py` runs it against a real one): its request
  body, beam search refused, and a vLLM that nobody serves answered 503 naming the URL."""
  from anygpt_jax.generation import DecodingSettings, Request
  from anygpt_jax.serving.app import create_app
  from anygpt_jax.serving.service import Service
  from anygpt_jax.serving.vllm_engine import VllmEngine, completion_body

  greedy = completion_body("m", Request([1, 5], DecodingSettings(max_new_tokens=8, min_new_tokens=10, stop_ids=(2,)),
                                        "image"), 7, 32, 4)
  assert greedy["temperature"] == 0 and greedy["min_tokens"] == 8 and greedy["stop_token_ids"] == [2]
  assert greedy["vllm_xargs"] == {"anygpt_modality": "image", "anygpt_stop_ids": [2], "anygpt_image_length": 32,
                                  "anygpt_music_codebooks": 4}
  sampled = completion_body("m", Request([1], DecodingSettings(do_sample=True, temperature=0.7, top_p=0.9)), 7, 32, 4)
  assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.7, 0.9, -1, 7)
  assert sampled["vllm_xargs"]["anygpt_modality"] == ""
  shared = server["app"].state.service
  nobody = free_port()
  service = Service(shared.vocabulary, shared.media, VllmEngine(f"http://127.0.0.1:{nobody}", "export"), shared.tables,
                    shared.max_positions, shared.stop_ids, shared.overrides, str(tmp_path), seed=0)
  port = free_port()
  with running(create_app(service, "tiny", media_dirs=(str(server["media"]),)), port):
    url = f"http://127.0.0.1:{port}"
    status, answer = call(url + "/v1/completions", {"prompt": "text|image|a cat", "temperature": 0})
    assert status == 503 and f"127.0.0.1:{nobody} is unreachable" in answer["error"]["message"]
    status, health = call(url + "/health")
    assert status == 503 and "unreachable" in health["reason"] and health["engine"] == "vllm"
    status, answer = call(url + "/v1/completions", {"prompt": f"image|text|{server['media'] / 'photo.png'}",
                                                    "num_beams": 4})
    assert status == 400 and "does not run beam search" in answer["error"]["message"]


def call(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
  """(status, JSON answer) of a GET, or a POST of `body`; a client-side timeout raises TimeoutError."""
  import socket
  import urllib.error
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.load(response)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)
  except (socket.timeout, urllib.error.URLError) as e:
    if isinstance(e, socket.timeout) or isinstance(getattr(e, "reason", None), socket.timeout):
      raise TimeoutError(str(e)) from None
    raise


def test_the_chat_page_in_a_real_browser(server, tmp_path):
  """Headless Chromium (Debian's, through Selenium) on the page the server serves: a text message with
  an image, then an image answer and a speech answer in the same conversation; a screenshot is kept."""
  from selenium import webdriver
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select, WebDriverWait

  options = webdriver.ChromeOptions()
  options.binary_location = "/usr/bin/chromium"
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
  try:
    driver.get(server["url"] + "/")
    assert "tiny" in driver.title
    driver.find_element(By.ID, "key").send_keys(KEY)
    wait = WebDriverWait(driver, 120)

    def send(text: str, modality: str, image=None) -> object:
      before = len(driver.find_elements(By.CSS_SELECTOR, ".message.assistant:not(.error)"))
      driver.find_element(By.ID, "text").send_keys(text)
      if image:
        driver.find_element(By.ID, "image").send_keys(str(image))
      Select(driver.find_element(By.ID, "modality")).select_by_visible_text(modality)
      driver.find_element(By.ID, "send").click()
      wait.until(lambda d: d.find_element(By.ID, "send").is_enabled()
                 and len(d.find_elements(By.CSS_SELECTOR, ".message.assistant")) > before)
      assert not driver.find_elements(By.CSS_SELECTOR, ".error"), driver.find_element(By.CSS_SELECTOR, ".error").text
      return driver.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1]

    answer = send("What is in this picture?", "text", server["media"] / "photo.png")
    user = driver.find_elements(By.CSS_SELECTOR, ".message.user")[-1]
    assert "What is in this picture?" in user.text and user.find_element(By.TAG_NAME, "img")
    assert not answer.find_elements(By.TAG_NAME, "img")
    image = send("Now draw a dog.", "image").find_element(By.TAG_NAME, "img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    assert image.get_attribute("src").startswith("data:image/jpeg;base64,")
    audio = send("Say it.", "speech").find_element(By.TAG_NAME, "audio")
    wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 1", audio))
    assert driver.execute_script("return arguments[0].duration", audio) > 0
    assert len(driver.find_elements(By.CSS_SELECTOR, ".message.user")) == 3  # one conversation, three turns
    screenshot = pathlib.Path(os.environ.get("ANYGPT_TEST_ARTIFACTS", tmp_path)) / "chat_page.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
  finally:
    driver.quit()


def test_the_readme_load_benchmark_runs(capsys):
  """`python -m tools.bench_serve` (README), with few requests: every row, no failed request."""
  from tools import bench_serve
  assert "python -m tools.bench_serve" in readme_section()
  assert bench_serve.main(["--requests", "3", "--clients", "3", "--max_tokens", "4", "--repeats", "1"]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| front") or l.startswith("| anygpt")]
  assert [r.split("|")[1].strip() for r in rows] == ["front + JAX engine", "anygpt-generate, one at a time"]
  assert all(r.split("|")[6].strip() == "0" for r in rows)  # no failed request
