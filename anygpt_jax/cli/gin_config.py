"""The gin front-end of the commands, t5x-style: `--gin_file` (several), `--gin.NAME=VALUE` bindings,
gin files found in the working directory, `--gin_search_path` and the installed package; every
error names the file or binding at fault.

The library's configurables are bound by these files and flags; nothing below the command-line
layer parses gin text itself.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.resources
import logging
import os
import pathlib
import re
import sys


class GinConfigError(ValueError):
  """A gin file or binding that does not parse or names no configurable/parameter."""


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` flags (as gin bindings `NAME = VALUE`) from the other flags."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep or not name:
        raise GinConfigError(f"{arg!r}: expected --gin.NAME=VALUE")
      bindings.append(f"{name} = {_gin_value(value)}")
    else:
      rest.append(arg)
  return bindings, rest


# A bare path or word (no quotes, brackets or operators): taken as a string.
_BARE_STRING = re.compile(r"^[\w./~:+\-][\w./~:+\- ]*$")


def _gin_value(value: str) -> str:
  """VALUE as gin text: literals, references and expressions as they are (so gin reports their
  syntax errors); a bare path or word that is not a literal (`/tmp/run`) as a quoted string."""
  stripped = value.strip()
  if stripped.startswith(("@", "%")) or stripped in ("True", "False", "None"):
    return stripped
  try:
    ast.literal_eval(stripped)
    return stripped
  except (ValueError, SyntaxError):
    return repr(stripped) if _BARE_STRING.match(stripped) else stripped


def import_configurables() -> None:
  """Imports every module that registers gin configurables, SeqIO tasks and mixtures."""
  import anygpt_jax.training.loop  # noqa: F401  (train, model_config, optimizer, checkpoints ...)
  import anygpt_jax.partitioning  # noqa: F401
  try:
    import anygpt_jax.data.pipeline  # noqa: F401  (task and mixture registration)
  except ImportError as e:  # the data package is required for training; say why it is missing
    raise ImportError(f"anygpt-train needs the data pipeline (anygpt_jax.data.pipeline): {e}") from e


class _DropGinLookupErrors(logging.Filter):
  """Gin looks for each included file first as a resource of a Python package (`gin/runs/x.gin`
  as package `gin.runs`, which does not exist) and logs `ERROR:root:Path not found` for every
  such miss before its search paths find the file. A file found nowhere is still an error."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.module == "resource_reader" and record.msg == "Path not found: %s")


@contextlib.contextmanager
def _quiet_gin_lookups():
  root, quiet = logging.getLogger(), _DropGinLookupErrors()
  root.addFilter(quiet)
  try:
    yield
  finally:
    root.removeFilter(quiet)


def packaged_gin_directory() -> pathlib.Path | None:
  """The gin files (`runs/`, `models/`, `mesh/`) of the installed anygpt_jax, else None.

  setup.py installs the sources' `gin/` and `tasks/` side by side, as `anygpt_jax/gin` (data) and
  the package `anygpt_jax.tasks`; an editable install imports `anygpt_jax.tasks` from the sources,
  where `gin/` is beside it too. So the gin files are found next to wherever the import system
  finds anygpt_jax.tasks, in a wheel and in an editable install alike. Run from a checkout that
  was never installed, only the working directory (and --gin_search_path) is searched."""
  try:
    tasks = importlib.resources.files("anygpt_jax.tasks")
  except ModuleNotFoundError:
    return None
  directory = pathlib.Path(str(tasks)).parent / "gin"
  return directory if directory.is_dir() else None


def gin_search_paths(extra: list[str] = ()) -> list[str]:
  """Where relative gin files and includes are looked up after the working directory: `extra`,
  the working directory (made absolute), the packaged gin directory (`runs/demo.gin`) and its
  parent (`gin/runs/demo.gin`, and the run files' `include 'gin/runs/base.gin'`)."""
  paths = [*extra, os.getcwd()]
  packaged = packaged_gin_directory()
  if packaged is not None:
    paths += [str(packaged.parent), str(packaged)]
  return paths


def parse_gin(gin_files: list[str], bindings: list[str], search_paths: list[str] = (),
              finalize: bool = True) -> None:
  """Parses files then bindings; an error names the file or the binding at fault.

  finalize=False leaves `%gin.REQUIRED` macros unchecked, for tools that read a run file's
  settings without running it (anygpt-mixture-report needs no MODEL_DIR)."""
  import gin

  for path in gin_search_paths(search_paths):
    gin.add_config_file_search_path(path)
  # Gin raises many exception types (ValueError, KeyError, tokenize.TokenError, ...) for a bad
  # file or binding; each is reported with the file or the binding that caused it.
  for gin_file in gin_files:
    try:
      with _quiet_gin_lookups():
        gin.parse_config_file(gin_file)
    except Exception as e:  # noqa: BLE001
      raise GinConfigError(f"gin file {gin_file!r}: {type(e).__name__}: {e}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:  # noqa: BLE001
      raise GinConfigError(f"gin binding {binding!r}: {type(e).__name__}: {e}") from e
  if not finalize:
    return
  try:
    gin.finalize()
  except ValueError as e:
    raise GinConfigError(f"gin: {e} (set it with --gin.NAME=value)") from e


def user_error_message(error: BaseException) -> str:
  """A UserError's message without what gin appends to errors raised inside configurables."""
  return str(error).split("\n  In call to configurable")[0].strip()


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None,
                       example: str = "") -> tuple[list[str], argparse.Namespace] | None:
  """(the `--gin.NAME=value` bindings, the parsed other flags) of a gin command line (t5x's flags).

  On a usage error (a malformed binding, no `--gin_file`) prints it as `<prog>: ...` and returns None.
  """
  argv = sys.argv[1:] if argv is None else argv
  try:
    bindings, rest = split_gin_flags(argv)
  except GinConfigError as e:
    print(f"{parser.prog}: {e}", file=sys.stderr)
    return None
  args = parser.parse_args(rest)
  if not args.gin_file:
    print(f"{parser.prog}: at least one --gin_file is required{f' (e.g. {example})' if example else ''}",
          file=sys.stderr)
    return None
  return bindings, args
