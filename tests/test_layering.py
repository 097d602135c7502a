"""The package's dependencies point one way: no import cycles (imports inside functions count), the
library below the command-line layer imports neither it nor the commands, and no command imports
another command's code (benchmarks may run the commands they measure)."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "anygpt_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every absolute module name `path` imports anywhere (`from a import b` gives `a.b` and `a`)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return names


def _graph() -> dict[str, set[str]]:
  """module -> the package's modules it imports, without edges to its own enclosing packages."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = {t for t in _imports(path) if t in modules}
    graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")
                   and not any(u.startswith(t + ".") and u in targets for u in targets if u != t)}
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return found


def test_no_import_cycles_in_the_package():
  graph = _graph()
  assert "anygpt_jax.generation.sampling" in graph["anygpt_jax.generation.beam"]  # the scan sees imports
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_imports_neither_the_command_line_layer_nor_the_commands():
  below = {name: targets for name, targets in _graph().items()
           if not name.startswith(("anygpt_jax.cli", "anygpt_jax.testing"))}
  assert {n: t for n, t in below.items() if any(x.startswith("anygpt_jax.cli") for x in t)} == {}
  for path in PACKAGE.rglob("*.py"):
    assert not any(n.split(".")[0] == "tools" or n.startswith("anygpt_jax.tools") for n in _imports(path)), path


def test_no_command_imports_another_commands_code():
  for path in (REPO / "tools").glob("*.py"):
    if path.name.startswith("bench_") or path.name == "__init__.py":
      continue
    source = path.read_text()
    relative = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not relative and "from tools" not in source and "anygpt_jax.tools" not in source, path
