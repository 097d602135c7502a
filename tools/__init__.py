"""The command-line jobs (`anygpt-*`) and the benchmarks (`bench_*.py`): thin `main`s over the library
and its command-line layer (`anygpt_jax.cli`: flags, the gin front-end, run loading).

Installed, this package is `anygpt_jax.tools` (setup.py maps the repository's `tools/` there), which
the console scripts name and child processes run (`anygpt_jax.cli.flags.command`); from a checkout's
root it is also importable as `tools` (`python -m tools.bench_model`).
"""
