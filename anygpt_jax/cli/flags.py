"""One flag style for every command: `--words_with_underscores`, as t5x, absl and gin spell them.

A flag given in the other spelling (`--output-dir`) is an error that names the right one
(`--output_dir`), not an "unrecognized arguments" line the user has to decode; a command that
declares a dashed flag fails on its first parse (every test runs one), so the style cannot drift back.
"""

from __future__ import annotations

import argparse
import sys

TOOLS_PACKAGE = "anygpt_jax.tools"


def command(module: str) -> list[str]:
  """argv that runs the command module `module` of anygpt_jax.tools (`train`, `export_hf`, ...) with
  this interpreter, as a child process; the installed package is what the child imports."""
  return [sys.executable, "-m", f"{TOOLS_PACKAGE}.{module}"]


def _flag_name(token: str) -> str | None:
  """`--name` of a command-line token `--name[=value]`, or None for a value or positional."""
  if not token.startswith("--") or token == "--":
    return None
  return token.split("=", 1)[0]


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the project's one flag style (see the module docstring)."""

  def parse_known_args(self, args=None, namespace=None):
    known = set(self._option_string_actions)
    dashed = sorted(name for name in known if name.startswith("--") and "-" in name[2:])
    if dashed:  # argument groups add flags past any add_argument override: checked here, once for all
      raise ValueError(f"{self.prog}: flags {dashed} are spelled with dashes; this project's flags use "
                       "underscores")
    tokens = sys.argv[1:] if args is None else list(args)
    for token in tokens:
      if token == "--":
        break
      name = _flag_name(token)
      if name and name not in known and "-" in name[2:]:
        right = "--" + name[2:].replace("-", "_")
        if right in known:
          self.error(f"{name}: flags are spelled with underscores here; use {right}")
    return super().parse_known_args(tokens, namespace)
