"""The package's shape: no import cycles, no fnn imports hidden in function bodies, a lean `import fnn`."""

import ast
import subprocess
import sys
from pathlib import Path

import fnn

SRC = Path(fnn.__file__).parent
# The one documented exception: fnn.parallel.fit_parallel, an alias kept for earlier users,
# resolved lazily because fnn.train builds on fnn.parallel.
ALLOWED_LAZY = {("parallel", "train")}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(fnn modules imported at module level, fnn modules imported inside functions)."""
    tree = ast.parse(path.read_text())
    top, inner = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fnn":
            names = [node.module] + [f"fnn.{a.name}" for a in node.names if node.module == "fnn"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "fnn"]
        modules = {n.split(".")[1] for n in names if n.count(".") >= 1 and (SRC / f"{n.split('.')[1]}.py").exists()}
        (top if node.col_offset == 0 else inner).update(modules)
    return top, inner


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p)[0] - {p.stem} for p in SRC.glob("*.py") if p.stem != "__init__"}


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
    for path in SRC.glob("*.py"):
        _, inner = _imports(path)
        hidden = {(path.stem, m) for m in inner} - ALLOWED_LAZY
        assert not hidden, f"{path.name} imports {sorted(m for _, m in hidden)} inside a function"


def test_import_fnn_is_lean():
    code = ("import sys, fnn; heavy = [m for m in ('sklearn', 'matplotlib', 'tqdm', 'torch') if m in sys.modules];"
            "print(heavy); assert fnn.parallel.make_mesh and fnn.fit_parallel is fnn.parallel.fit_parallel")
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
