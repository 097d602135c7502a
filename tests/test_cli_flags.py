"""One flag style in every command (`--words_with_underscores`), and the other spelling refused by name."""

import ast
import pathlib
import subprocess
import sys

import pytest

from anygpt_jax.cli import flags
from tools import tokenize_media, vocab

REPO = pathlib.Path(__file__).resolve().parent.parent


def _declared_flags(path: pathlib.Path) -> list[str]:
  """Every `--flag` string passed to an `add_argument` call in the module at `path`."""
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
      names += [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
  return names


def test_every_command_declares_its_flags_with_underscores():
  modules = sorted((REPO / "tools").glob("*.py")) + sorted((REPO / "anygpt_jax").rglob("*.py"))
  declared = {str(m.relative_to(REPO)): _declared_flags(m) for m in modules}
  assert sum(map(len, declared.values())) > 200  # the scan sees the commands' flags
  dashed = {m: [f for f in names if "-" in f[2:]] for m, names in declared.items()}
  assert not {m: names for m, names in dashed.items() if names}


@pytest.mark.parametrize("main, argv, right", [
    (tokenize_media.main, ["--anygpt_data", "a.jsonl", "--corpus", "c", "--output-dir", "out"], "--output_dir"),
    (vocab.main, ["--text-vocab-size=32000"], "--text_vocab_size"),
])
def test_the_dashed_spelling_is_an_error_that_names_the_flag(main, argv, right, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert f"use {right}" in error and "unrecognized" not in error


def test_a_parser_that_declares_a_dashed_flag_fails_on_its_first_parse():
  parser = flags.ArgumentParser(prog="anygpt-x")
  group = parser.add_argument_group("inputs")  # groups add flags past the parser's own methods
  group.add_argument("--input-dir")
  with pytest.raises(ValueError, match=r"anygpt-x: flags \['--input-dir'\] are spelled with dashes"):
    parser.parse_args([])


def test_a_value_that_looks_like_a_dashed_flag_is_left_to_argparse():
  parser = flags.ArgumentParser(prog="anygpt-x")
  parser.add_argument("--name")
  parser.add_argument("rest", nargs="*")
  assert parser.parse_args(["--name=x", "--", "--not-a-flag"]).rest == ["--not-a-flag"]


def test_a_child_command_runs_the_installed_package_from_any_directory(tmp_path):
  out = subprocess.run([*flags.command("vocab"), "--text_vocab_size=300"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert flags.command("vocab")[1:] == ["-m", "anygpt_jax.tools.vocab"] and "300" in out.stdout
