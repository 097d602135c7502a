"""Time to the first step of a (re)started run, with and without JAX's persistent compilation cache.

  python -m tools.bench_restart --gin_file=gin/runs/demo.gin --gin.DATA_DIR=... --gin.SENTENCEPIECE_MODEL=...

Runs `anygpt-train` (same flags, MODEL_DIR and the cache set here) four times, one step each:
  1. a fresh run, empty cache (compiles everything);
  2. a restart of run 1 with the cache off (restores, compiles again);
  3. a restart of run 1 with the cache run 1 filled (restores, reads compiled programs);
  4. a fresh run in another directory with that cache.
and prints each start's time to its first step (the trainer's own "step N done X s after start"
line, which excludes Python imports) and its ratio to run 2.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from anygpt_jax.cli.flags import ArgumentParser, command


_DONE = re.compile(r"step (\d+) done ([0-9.]+) s after start")


def _first_step_seconds(flags: list[str], model_dir: str, cache: str | None, stop: int) -> float:
  extra = [f"--gin.train.compilation_cache_dir={cache}"] if cache else ["--gin.train.compilation_cache=False"]
  argv = [*command("train"), *flags, f"--gin.MODEL_DIR={model_dir}",
          f"--gin.train.stop_after_steps={stop}", *extra]
  result = subprocess.run(argv, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
  match = _DONE.search(result.stdout)
  if match is None:
    raise RuntimeError(f"no 'step N done' line in the output of {' '.join(argv)}:\n{result.stdout[-2000:]}")
  return float(match.group(2))


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work_dir", default=None, help="where the runs and the cache go (default: a temp dir)")
  args, flags = parser.parse_known_args(argv)
  work = args.work_dir or tempfile.mkdtemp(prefix="anygpt-bench-restart-")
  cache = os.path.join(work, "compilation_cache")
  run_a, run_b = os.path.join(work, "a"), os.path.join(work, "b")
  rows = [
      ("fresh run, empty cache", _first_step_seconds(flags, run_a, cache, stop=1)),
      ("restart, no cache", _first_step_seconds(flags, run_a, None, stop=2)),
      ("restart, cache filled", _first_step_seconds(flags, run_a, cache, stop=3)),
      ("fresh run, cache filled", _first_step_seconds(flags, run_b, cache, stop=1)),
  ]
  reference = rows[1][1]
  print(f"{'start':<26} {'s to first step':>16} {'vs restart, no cache':>22}")
  for name, seconds in rows:
    print(f"{name:<26} {seconds:>16.1f} {seconds / reference:>22.2f}")
  print(f"(runs and cache in {work})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
