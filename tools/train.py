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

import sys
from argparse import RawDescriptionHelpFormatter

from anygpt_jax.cli.flags import ArgumentParser
from anygpt_jax.cli.gin_config import (GinConfigError, import_configurables, parse_command_line, parse_gin,
                                       user_error_message)


def build_parser() -> ArgumentParser:
  parser = ArgumentParser(prog="anygpt-train", description=__doc__,
                          formatter_class=RawDescriptionHelpFormatter)
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
