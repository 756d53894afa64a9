"""The package's shape: layered subpackages with imports only downward, no import cycles, no fnn
imports hidden in function bodies, a lean `import fnn`, and the old flat module paths still working."""

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import fnn

SRC = Path(fnn.__file__).parent
# The layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = ["core", "analysis", "io", "data", "training", "bench", "cli"]


def _name(path: Path) -> str:
    """'core.network' for src/fnn/core/network.py; 'cli' for src/fnn/cli/__init__.py."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in SRC.rglob("*.py") if _name(p) not in ("", "__main__")}


def _resolve(dotted: str) -> str | None:
    """The fnn module a dotted import names ('fnn.core.network' -> 'core.network'), if any."""
    parts = dotted.split(".")[1:]
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts = parts[:-1]
    return None


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(fnn modules imported at module level, fnn modules imported inside functions)."""
    tree = ast.parse(path.read_text())
    top, inner = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fnn":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "fnn"]
        else:
            continue
        found = {m for m in map(_resolve, names) if m}
        (top if node.col_offset == 0 else inner).update(found)
    return top, inner


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path)[0] - {name} for name, path in MODULES.items()}


def _layer(name: str) -> int:
    return LAYERS.index(name.split(".")[0])


def test_every_module_sits_in_a_layer():
    flat = sorted(n for n in MODULES if "." not in n and n not in LAYERS)
    assert not flat, f"modules outside the subpackages: {flat}"


def test_imports_only_downward():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert not bad, "imports that go up a layer: " + ", ".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_fnn_imports_inside_functions():
    hidden = {name: sorted(_imports(path)[1]) for name, path in MODULES.items() if _imports(path)[1]}
    assert not hidden, f"fnn imports inside functions: {hidden}"


def test_old_parallel_alias_names_its_new_place():
    with pytest.raises(AttributeError, match="fnn.fit_parallel"):
        fnn.parallel.fit_parallel


@pytest.mark.parametrize("old", sorted(fnn._MOVED))
def test_old_module_paths_still_import(old, monkeypatch):
    # Another test in this worker may have imported the old path already (then it is cached
    # in sys.modules and imports without a word): take it out so the hook runs again.
    monkeypatch.delitem(sys.modules, f"fnn.{old}", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"fnn.{old}")
    assert module is importlib.import_module(f"fnn.{fnn._MOVED[old]}")
    assert module.__spec__.name == f"fnn.{fnn._MOVED[old]}"
    assert any(f"fnn.{fnn._MOVED[old]}" in str(w.message) for w in caught if w.category is DeprecationWarning)


def test_import_fnn_is_lean():
    code = ("import sys, fnn; heavy = [m for m in ('sklearn', 'matplotlib', 'tqdm', 'torch') if m in sys.modules];"
            "print(heavy); assert fnn.parallel.make_mesh and fnn.fit_parallel")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 50


def _function_lengths(path: Path):
    """(name, lines) of every function, its docstring not counted (prose is not complexity)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                lines -= first.end_lineno - first.lineno + 1
            yield node.name, lines


def test_small_modules_and_functions():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {lines} lines")
        too_long += [f"{path.relative_to(SRC)}:{name}: {n} lines" for name, n in _function_lengths(path)
                     if n > MAX_FUNCTION_LINES]
    assert not too_long, too_long


MAX_PARAMETERS = 10


def _parameter_counts(path: Path):
    """(name, line, parameters) of every function: positional, keyword-only, ``*args`` and
    ``**kwargs`` all count, ``self`` and ``cls`` do not."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            yield node.name, node.lineno, len(names) + (a.vararg is not None) + (a.kwarg is not None)


def test_no_function_takes_more_than_ten_parameters():
    # Settings that travel together are one value (fnn.TrainConfig) or **settings, not ten more names.
    too_many = [f"{path.relative_to(SRC)}:{line} {name}: {n} parameters"
                for path in sorted(SRC.rglob("*.py")) for name, line, n in _parameter_counts(path)
                if n > MAX_PARAMETERS]
    assert not too_many, too_many


def test_the_parameter_count_counts_every_kind(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("class A:\n    def f(self, a, /, b, *c, d, e=1, **f): pass\n"
                    "def g(cls, a, b, c, d, e, f, g, h, i, j): pass\n")
    assert sorted(_parameter_counts(path)) == [("f", 2, 6), ("g", 3, 10)]


def test_old_module_attributes_still_resolve():
    # In a fresh process: once any test has imported an old path, the attribute is set for good.
    code = ("import warnings, fnn\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    assert fnn.optim.__name__ == 'fnn.training.optim'\n"
            "assert any('fnn.training.optim' in str(x.message) for x in w)\n"
            "try:\n    fnn.nosuch\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "nosuch" in out.stdout
