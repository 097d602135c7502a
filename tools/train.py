"""`anygpt-train`: the gin-configured trainer, t5x-style flags.

  anygpt-train --gin_file=gin/runs/demo.gin --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=100

Flags:
  --gin_file=PATH          a gin file (repeatable). A relative path is looked up in the working
                           directory, then --gin_search_path, then the installed package's gin files:
                           `runs/demo.gin` (or `gin/runs/demo.gin`, the repository's path) works from
                           any directory, as do the run files' `include 'gin/...'` lines.
  --gin.NAME=VALUE         a binding or macro (`--gin.BATCH_SIZE=8`, `--gin.train.z_loss=1e-4`).
                           A VALUE that is not a Python/gin literal is taken as a string, so
                           `--gin.MODEL_DIR=/tmp/run` works without inner quotes.
  --gin_search_path=DIR    more directories to resolve gin files and includes from.
  --coordinator_address, --num_processes, --process_id, --heartbeat_timeout_s,
  --multiprocess_auto      multi-host set-up (see anygpt_jax/distributed.py); the environment
                           variables ANYGPT_COORDINATOR_ADDRESS/ANYGPT_NUM_PROCESSES/ANYGPT_PROCESS_ID
                           work too.
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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="anygpt-train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_search_path", action="append", default=[])
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--heartbeat_timeout_s", type=int, default=60)
  parser.add_argument("--multiprocess_auto", action="store_true",
                      help="let JAX detect the cluster (TPU pod, SLURM, Open MPI)")
  parser.add_argument("--verbose", action="store_true",
                      help="a configuration or environment error with its traceback, not only its message")
  return parser


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


def main(argv: list[str] | None = None) -> int:
  parsed = parse_command_line(build_parser(), argv, example="runs/demo.gin")
  if parsed is None:
    return 2
  bindings, args = parsed

  from anygpt_jax import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         heartbeat_timeout_s=args.heartbeat_timeout_s, auto_detect=args.multiprocess_auto)
  import_configurables()
  try:
    parse_gin(args.gin_file, bindings, args.gin_search_path)
  except GinConfigError as e:
    print(f"anygpt-train: {e}", file=sys.stderr)
    return 2

  from anygpt_jax.errors import UserError
  from anygpt_jax.training.loop import train
  try:
    train()
  except UserError as e:  # the run's configuration, inputs or machine: the message says what and where
    if args.verbose:
      raise
    print(f"anygpt-train: {type(e).__name__}: {user_error_message(e)} (--verbose for the traceback)",
          file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
