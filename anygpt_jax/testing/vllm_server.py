"""A vLLM OpenAI server on an export, run from vLLM's own environment (`make vllm-env`), for the
tests and the load benchmark: started as a process group on 127.0.0.1, waited for, killed.

vLLM's CPU build serves the project's exports with the modality constraints loaded as a logits
processor; its CPU attention takes head sizes from 32 up, so the `demo` configuration serves and
`tiny` (16) does not.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import time
import urllib.request

CONSTRAINTS = "anygpt_jax.serving.vllm_constraints:ModalityConstraints"
# vLLM 0.32 loads custom logits processors of this interface in its V1 model runner.
ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0"}


def vllm_argv(export: str, port: int, max_model_len: int = 1024) -> list[str]:
  """The README's vLLM line for `export` on 127.0.0.1:`port`, in float32 (as the JAX engine here)."""
  return ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", str(export), "--served-model-name",
          "export", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len",
          str(max_model_len), "--logits-processors", CONSTRAINTS]


class VllmServer:
  """`argv` (starting with `python`) run with vLLM's environment's Python, on 127.0.0.1:`port`.

  Args:
    venv: vLLM's virtual environment (its bin/ goes first on PATH).
    env: variables added to this process's environment (e.g. `ENV`).
    log: the file vLLM's output is appended to (quoted when it fails to start).
  """

  def __init__(self, argv: list[str], port: int, venv: pathlib.Path, env: dict[str, str], log: pathlib.Path,
               cwd: pathlib.Path | None = None):
    self.argv, self.port, self.log, self.cwd = argv, port, pathlib.Path(log), cwd
    self.env = dict(os.environ, **env, VLLM_CPU_KVCACHE_SPACE="1",
                    PATH=f"{pathlib.Path(venv) / 'bin'}{os.pathsep}{os.environ['PATH']}")
    self.env.pop("XLA_FLAGS", None)
    self.process: subprocess.Popen | None = None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def start(self, timeout_s: float = 600) -> None:
    """Starts vLLM and returns once /health answers 200; raises with the log's tail if it does not."""
    self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=open(self.log, "a"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log.read_text()[-5000:]}")
      with contextlib.suppress(OSError):
        if urllib.request.urlopen(self.url + "/health", timeout=2).status == 200:
          return
      time.sleep(2)
    self.kill()
    raise RuntimeError(f"vLLM did not start within {timeout_s:g} s:\n{self.log.read_text()[-5000:]}")

  def kill(self) -> None:
    """SIGKILL to the whole group (vLLM's engine core is a child process)."""
    if self.process is not None and self.process.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait(timeout=60)
