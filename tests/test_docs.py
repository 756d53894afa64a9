"""The manual: it builds in strict mode, the API reference lists every public name with its
docstring, and the examples in the docstrings run as doctests."""

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fnn

ROOT = Path(__file__).parents[1]
REFERENCE = ROOT / "docs" / "reference"
SRC = ROOT / "src"
# Key public functions whose docstrings carry an example (more may be added anywhere).
KEY_EXAMPLES = {"fnn.core.activations", "fnn.core.losses", "fnn.analysis.quantities", "fnn.core.gradcheck"}


def _reference_identifiers() -> set[str]:
    return {name for page in REFERENCE.glob("*.md")
            for name in re.findall(r"^::: (\S+)", page.read_text(encoding="utf-8"), re.M)}


def _modules_with_examples() -> list[str]:
    found = []
    for path in sorted((SRC / "fnn").rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_public_name_is_in_the_api_reference():
    documented = _reference_identifiers()
    missing = [name for name in fnn.__all__ if f"fnn.{name}" not in documented]
    assert not missing, f"add a `::: fnn.NAME` line to a page of docs/reference/ for {missing}"


def test_every_reference_entry_is_public():
    # A `::: fnn.X` line names a public, exported object, so moving a module cannot break it.
    stray = [name for name in _reference_identifiers()
             if name.count(".") == 1 and name.split(".")[1] not in fnn.__all__]
    assert not stray, f"{stray} are not in fnn.__all__"


def test_every_public_name_has_a_docstring():
    griffe = pytest.importorskip("griffe")
    package = griffe.load("fnn", search_paths=[str(SRC)], resolve_aliases=True)
    bare = [name for name in fnn.__all__
            if not (package[name].docstring and package[name].docstring.value.strip())]
    assert not bare, f"{bare} have no docstring, so the API reference would show nothing for them"


def test_the_manual_builds_in_strict_mode(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        pytest.importorskip(module)
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    reference = "".join(page.read_text(encoding="utf-8") for page in (site / "reference").rglob("*.html"))
    unrendered = [name for name in fnn.__all__ if f'id="fnn.{name}"' not in reference]
    assert not unrendered, f"the API reference has no entry for {unrendered}"
    # docs/_griffe.py turns Sphinx roles into code spans before the docstrings are parsed (a role
    # at the start of "Returns:" would otherwise be read as a type named "class").
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", reference))
    role = r":(?:func|class|meth|mod|data|attr|exc|obj):|\b(?:func|class|meth|attr|exc):\S"
    assert not re.search(role, text), "a Sphinx role reached the reference"
    # ... and repeats a grouped "a, b: ..." parameter line per name, so each keeps its default.
    density = text[text.index("spectral_density ( net"):]
    assert re.search(r"num_probes int .{0,200}? 8 num_iters int .{0,200}? 40 ", density), density[:1500]
    notebook = (site / "notebooks" / "02_training" / "index.html").read_text(encoding="utf-8")
    assert "data:image/png" in notebook  # rendered with its committed outputs, not executed


def test_the_key_functions_have_examples():
    missing = KEY_EXAMPLES - set(_modules_with_examples())
    assert not missing, f"the docstring examples of {missing} are gone"


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} docstring examples of {name} failed (output above)"
