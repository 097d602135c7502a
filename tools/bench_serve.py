"""Load on `anygpt-serve`: requests/s and p50/p99 latency at several client counts, beside the same
requests one at a time through anygpt-generate's path, in one run on one machine.

  python -m tools.bench_serve --requests 64 --clients 1 --clients 8 --clients 32 --max_tokens 16

Builds a random-weight model of `--config` exported as anygpt-export writes it with the tiny
tokenizers (`anygpt_jax.testing.generation_setup`), starts the front with the JAX engine in this
process on 127.0.0.1 (a free port; nothing else is contacted), and sends `--requests` chat requests
(greedy, exactly `--max_tokens` new tokens each, so every row does the same work) from C client
threads for each `--clients` C, after an untimed warm-up round of the same requests (it compiles
the shapes that load makes); each row is the run of median requests/s among `--repeats` timed
runs. The baseline decodes the same requests one at a time with `anygpt-generate`'s own function
(`generation.session.generate_records`, batch 1) on the same model, loaded once, after the same warm-up
and with the same repeats. A failed request is counted, never retried.

  python -m tools.bench_serve --config demo --vllm_venv .venv-vllm --requests 64 --clients 1 --clients 8 --clients 32 --max_tokens 16

adds the front with the vLLM engine: vLLM's CPU build from `--vllm_venv` (`make vllm-env`) started
on the same export on 127.0.0.1 with the modality constraints (`anygpt_jax.testing.vllm_server`),
the front in front of it, the same loads, then vLLM alone with the constraints processor on and off
(the same greedy completions at 8 clients: what the processor costs). vLLM's CPU attention needs
head sizes from 32, hence `--config demo` (the `tiny` model's are 16).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from anygpt_jax.cli.flags import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
  p = ArgumentParser(prog="bench_serve", description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="tiny", help="model configuration (random weights)")
  p.add_argument("--requests", type=int, default=64, help="requests per client count (and for the baseline)")
  p.add_argument("--clients", type=int, action="append", default=None, help="concurrent clients (repeatable)")
  p.add_argument("--max_tokens", type=int, default=16, help="new tokens per request (exactly)")
  p.add_argument("--batch_window_ms", type=float, default=20)
  p.add_argument("--repeats", type=int, default=3, help="timed runs per row; the run of median requests/s is printed")
  p.add_argument("--vllm_venv", default=None, help="vLLM's environment (make vllm-env): adds the vLLM engine's rows")
  return p


def chat_body(index: int, max_tokens: int) -> dict:
  return {"messages": [{"role": "user", "content": f"Tell me about photo number {index}."}], "temperature": 0,
          "num_beams": 1, "max_tokens": max_tokens, "min_tokens": max_tokens}


def post(url: str, body: dict) -> float:
  """Seconds one request took; raises on a failed request."""
  start = time.perf_counter()
  request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=600) as response:
    json.load(response)
  return time.perf_counter() - start


def load(url: str, bodies: list[dict], clients: int) -> dict:
  """Sends `bodies` from `clients` threads; {'rps', 'p50', 'p99', 'failed'}."""
  latencies, failed = [], 0
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    for future in [pool.submit(post, url, body) for body in bodies]:
      try:
        latencies.append(future.result())
      except (urllib.error.URLError, OSError, ValueError):
        failed += 1
  return summary(latencies, time.perf_counter() - start, failed)


def median_run(runs: list[dict]) -> dict:
  """The run whose requests/s is the median (failures of every run added up)."""
  chosen = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
  return {**chosen, "failed": sum(r["failed"] for r in runs)}


def summary(latencies: list[float], wall: float, failed: int) -> dict:
  ordered = sorted(latencies) or [float("nan")]
  percentile = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
  return {"rps": len(latencies) / wall, "p50": statistics.median(ordered), "p99": percentile(0.99), "failed": failed}


def sequential(setup: dict, bodies: list[dict], max_tokens: int, root: pathlib.Path, repeats: int) -> dict:
  """The same chats one at a time through anygpt-generate's generate_records (batch 1)."""
  from anygpt_jax.cli.generation_flags import session_from_args
  from anygpt_jax.generation.requests import parse_chat
  from anygpt_jax.generation.session import generate_records

  from . import generate

  args = generate.build_parser().parse_args([f"--model={setup['export']}", f"--output_dir={root / 'generate'}",
                                             *setup["flags"], "--do_sample=false", "--num_beams=1",
                                             f"--max_new_tokens={max_tokens}", f"--min_new_tokens={max_tokens}"])
  session = session_from_args(args)
  tasks = [parse_chat(json.dumps({"messages": body["messages"]})) for body in bodies]
  for task in tasks:  # warm-up: compiles each prompt-length bucket
    generate_records(session, [(0, task)], args.output_dir, 1, 0)
  runs = []
  for _ in range(repeats):
    latencies, failed = [], 0
    start = time.perf_counter()
    for index, task in enumerate(tasks):
      begin = time.perf_counter()
      (record,) = generate_records(session, [(index, task)], args.output_dir, 1, 0)
      latencies.append(time.perf_counter() - begin)
      failed += "error" in record
    runs.append(summary(latencies, time.perf_counter() - start, failed))
  return median_run(runs)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def front_rows(name: str, serve_argv: list[str], bodies: list[dict], clients: list[int], repeats: int) -> list:
  """(name, clients, median run) per client count, for the front `serve_argv` builds, on 127.0.0.1."""
  import uvicorn

  from . import serve

  port = free_port()
  app = serve.build_app(serve.build_parser().parse_args(serve_argv))
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  url = f"http://127.0.0.1:{port}/v1/chat/completions"
  rows = []
  try:
    for count in clients:
      load(url, bodies, count)  # warm-up: compiles the batch and prompt-length shapes this load makes
      rows.append((name, count, median_run([load(url, bodies, count) for _ in range(repeats)])))
  finally:
    server.should_exit = True
    thread.join(timeout=60)
  return rows


def processor_cost(vllm_url: str, clients: int, requests: int, new_tokens: int, repeats: int) -> list:
  """vLLM alone, the same greedy completions with the modality constraints on (`vllm_xargs`, a free
  answer: codes and end tokens masked outside spans) and off: what the logits processor costs."""
  from anygpt_jax.serving.vllm_engine import constraint_args

  rng = random.Random(0)
  rows = []
  for name, xargs in (("vLLM alone, constraints off", None),
                      ("vLLM alone, constraints on", constraint_args(None, (2,), 32, 4))):
    bodies = [{"model": "export", "prompt": [1] + [rng.randrange(3, 300) for _ in range(24)], "temperature": 0,
               "max_tokens": new_tokens, "min_tokens": new_tokens, "ignore_eos": True,
               **({"vllm_xargs": xargs} if xargs else {})} for _ in range(requests)]
    url = vllm_url + "/v1/completions"
    load(url, bodies, clients)  # warm-up
    rows.append((name, clients, median_run([load(url, bodies, clients) for _ in range(repeats)])))
  return rows


def main(argv: list[str] | None = None) -> int:
  from anygpt_jax.testing import generation_setup

  args = build_parser().parse_args(argv)
  clients = args.clients or [1, 8, 32]
  root = pathlib.Path(tempfile.mkdtemp(prefix="bench_serve-"))
  setup = generation_setup.build(root, args.config)
  front = [f"--model={setup['export']}", *setup["flags"], f"--max_queue={4 * args.requests}"]
  bodies = [chat_body(i, args.max_tokens) for i in range(args.requests)]
  rows = front_rows("front + JAX engine", front + [f"--output_dir={root / 'serve'}", f"--batch_size={max(clients)}",
                                                   f"--batch_window_ms={args.batch_window_ms}"],
                    bodies, clients, args.repeats)
  if args.vllm_venv:
    from anygpt_jax.testing.vllm_server import ENV, VllmServer, vllm_argv
    port = free_port()
    vllm = VllmServer(vllm_argv(setup["export"], port), port, pathlib.Path(args.vllm_venv), ENV, root / "vllm.log")
    vllm.start()
    try:
      rows += front_rows("front + vLLM engine", front + [f"--output_dir={root / 'serve_vllm'}", "--engine=vllm",
                                                         f"--vllm_url={vllm.url}"], bodies, clients, args.repeats)
      cost = processor_cost(vllm.url, 8, args.requests, 4 * args.max_tokens, args.repeats)
    finally:
      vllm.kill()
  rows.append(("anygpt-generate, one at a time", 1, sequential(setup, bodies, args.max_tokens, root, args.repeats)))
  print(f"{args.requests} chat requests, {args.max_tokens} new tokens each (greedy), model {args.config!r} "
        f"(random weights), this machine; each row the median of {args.repeats} timed runs:\n")
  print("| path | clients | requests/s | p50 latency s | p99 latency s | failed |")
  print("|---|---|---|---|---|---|")
  for name, count, r in rows:
    print(f"| {name} | {count} | {r['rps']:.2f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['failed']} |")
  if args.vllm_venv:
    off, on = (r for _, _, r in cost)
    print(f"\nthe modality constraints inside vLLM (8 clients, {args.requests} greedy completions of "
          f"{4 * args.max_tokens} tokens): {off['rps']:.2f} requests/s without, {on['rps']:.2f} with "
          f"({on['rps'] / off['rps']:.2f}x the rate; p50 {off['p50']:.3f} s -> {on['p50']:.3f} s)")
  baseline = rows[-1][2]["rps"]
  for engine in ("front + JAX engine", "front + vLLM engine"):
    ratios = ", ".join(f"{count} clients {r['rps'] / baseline:.2f}x" for name, count, r in rows if name == engine)
    if ratios:
      print(f"{engine} over one at a time: {ratios}")
  return 0 if not any(r["failed"] for _, _, r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
