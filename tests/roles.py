"""The distributions each install role brings, resolved over this environment's installed set.

A role's requirements (anygpt-jax's own `Requires-Dist` lines for that extra) are followed through
every installed distribution's metadata (markers evaluated, extras such as `ray[data]` followed),
giving the packages `pip install anygpt-jax[role]` installs at the versions of requirements.lock.
`blocking_code(role)` is Python source that makes every other distribution's modules unimportable
(as in an environment where they were never installed), for role probes run in a subprocess.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re

from packaging.requirements import Requirement

# The commands of each role (console script -> module of anygpt_jax.tools).
TRAIN_COMMANDS = {"anygpt-train": "train", "anygpt-compile": "compile", "anygpt-mixture-report": "mixture_report",
                  "anygpt-export": "export_hf", "anygpt-import": "import_weights", "anygpt-vocab": "vocab"}
TOKENIZE_COMMANDS = {"anygpt-tokenize": "tokenize_media", "anygpt-vocab": "vocab"}
# What a role must never pull in: the other role's heavy stack.
TRAIN_ONLY = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow", "tensorflow-text",
              "tensorflow-datasets", "gin-config", "libtpu"}
TOKENIZE_ONLY = {"torch", "torchaudio", "torchvision", "diffusers", "speechtokenizer", "encodec", "ray"}


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def installed() -> dict[str, tuple[str, list[str]]]:
  """This environment's distributions: canonical name -> (version, Requires-Dist lines); the
  first on sys.path wins, as for import."""
  found = {}
  for dist in importlib.metadata.distributions():
    metadata = dist.metadata  # parsed once: each access re-reads the file
    found.setdefault(canonical(metadata["Name"]), (metadata["Version"], metadata.get_all("Requires-Dist") or []))
  return found


def _applies(requirement: Requirement, extra: str) -> bool:
  return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def closure(requires: list[str], extra: str = "") -> dict[str, str]:
  """{canonical distribution name: installed version} of everything `requires` (Requires-Dist
  lines, such as anygpt-jax's) pulls in when installed with `extra` ("" for none).

  Raises:
    LookupError: naming a required distribution that is not installed or whose installed
      version the requirement excludes (the lock and the role disagree).
  """
  found: dict[str, str] = {}
  todo = [(Requirement(line), extra) for line in requires]
  seen: set[tuple[str, str]] = set()
  while todo:
    requirement, extra = todo.pop()
    if not _applies(requirement, extra):
      continue
    name = canonical(requirement.name)
    for wanted in sorted(requirement.extras) or [""]:
      if (name, wanted) in seen:
        continue
      seen.add((name, wanted))
      if name not in installed():
        raise LookupError(f"{requirement} (needed by the role) is not installed")
      version, requires_dist = installed()[name]
      if not requirement.specifier.contains(version, prereleases=True):
        raise LookupError(f"{requirement}: the installed {name} is {version}")
      found[name] = version
      todo += [(Requirement(line), wanted) for line in requires_dist]
  return found


def top_level_modules(distributions: set[str]) -> set[str]:
  """The importable top-level names that belong only to `distributions` (a name several
  distributions share, like the `google` namespace, counts only when all of them are listed)."""
  owners = importlib.metadata.packages_distributions()
  return {module for module, dists in owners.items()
          if module.isidentifier() and dists and all(canonical(d) in distributions for d in dists)}


def blocking_code(blocked_distributions: set[str]) -> str:
  """Python source that makes the modules of `blocked_distributions` unimportable: `import x`
  raises ModuleNotFoundError and `importlib.util.find_spec('x')` is None, as when not installed."""
  modules = sorted(top_level_modules(blocked_distributions))
  return f"import sys\nfor _m in {modules!r}:\n  sys.modules[_m] = None\n"
