"""The command-line jobs (`anygpt-*`) and the benchmarks (`bench_*.py`).

Installed, this package is `anygpt_jax.tools` (setup.py maps the repository's `tools/` there), which
the console scripts name; in a checkout it is also the top-level `tools` (`python -m tools.train` from
the repository root). Its modules import each other relatively and start each other through
`command()`, so they work under both names.
"""

from __future__ import annotations

import os
import pathlib
import sys


def command(module: str) -> list[str]:
  """argv that runs `module` of this package (`train`, `tokenize_media`, ...) with this interpreter."""
  return [sys.executable, "-m", f"{__name__}.{module}"]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
  """The environment for a `command()` child: `env` (default: this process's). When this package is
  the checkout's top-level `tools`, which only the working directory or PYTHONPATH makes importable,
  the directory holding it is put on PYTHONPATH so the child finds it from any working directory."""
  env = dict(os.environ if env is None else env)
  if __name__ == "tools":
    root = str(pathlib.Path(__path__[0]).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  return env
