"""The README and the manual's pages: their code examples run as written (the long ones at toy
sizes), and every link of the README resolves in a checkout."""

import math
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CODE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# The pages' own files (docs/notebooks and docs/results link to files outside docs/).
PAGES = sorted(p for p in DOCS.rglob("*.md") if not p.is_relative_to(DOCS / "notebooks")
               and not p.is_relative_to(DOCS / "results") and not p.resolve().is_relative_to(ROOT / "experiments"))
# Toy sizes for the examples that train for minutes as written: (page, [(as written, in the test)]).
SMALLER = {
    "guides/training.md": [("200", "3"), ("512", "16"), ("early_stopping=20", "early_stopping=2")],
    "guides/sweeps.md": [("512", "16"), ("epochs=50", "epochs=2")],
}


def _blocks(text: str) -> list[str]:
    # A block whose first line starts with "# not run" is shown, not run (it needs another host).
    return [code for code in CODE.findall(text) if not code.startswith("# not run")]


def _run(code: str, where: str) -> dict:
    namespace: dict = {}
    exec(compile(code, where, "exec"), namespace)
    return namespace


def test_the_readme_example_runs():
    blocks = _blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1
    ns = _run(blocks[0], "README.md")
    assert ns["history"]["test_accuracy"][-1] > 0.8  # 10 classes: chance is 0.1
    assert ns["norms"].shape == (len(ns["data"].x_test),)
    assert all(math.isfinite(n) and n > 0 for n in ns["norms"].tolist())


def test_the_readme_keeps_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/fnn train" in text
    test_command = ".venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q -n 2"
    assert "python3 -m venv .venv && " + test_command in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/pip install -q -e '.[test]'" in ci and ".venv/bin/python -m pytest -q -n 2" in ci


def test_the_readme_stays_a_front_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def _slug(heading: str) -> str:
    # The anchor Python-Markdown's toc extension gives a heading (what mkdocs links to).
    text = unicodedata.normalize("NFKD", re.sub(r"[`*]", "", heading)).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_readme_link_resolves():
    links = [link for link in _links(README.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", link)]
    assert links, "the README links into the manual"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path) if path else README
        if not target.exists():
            broken.append(link)
        elif anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(link)
    assert not broken, f"README links that do not resolve: {broken}"


def test_the_pages_with_examples_are_all_run():
    # So that an example added to a new page is run too, not silently left out.
    assert {"getting-started.md", "guides/training.md", "guides/sweeps.md"} <= {
        p.relative_to(DOCS).as_posix() for p in PAGES if _blocks(p.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p.read_text(encoding="utf-8"))],
                         ids=lambda p: p.relative_to(DOCS).as_posix())
def test_the_manual_examples_run(page, tmp_path, monkeypatch):
    name = page.relative_to(DOCS).as_posix()
    code = "\n".join(_blocks(page.read_text(encoding="utf-8")))
    for big, small in SMALLER.get(name, []):
        assert big in code, f"{name} no longer says {big!r}: update SMALLER"
        code = code.replace(big, small)
    monkeypatch.chdir(tmp_path)
    ns = _run(code, f"docs/{name}")
    if name == "getting-started.md":
        assert ns["history"]["loss"][-1] < ns["history"]["loss"][0]  # gradient_descent
        assert ns["metrics"]["loss"] > 0
    elif name == "guides/training.md":
        assert (tmp_path / "run.npz").exists() and "lr" in ns["history"]
    elif name == "guides/sweeps.md":
        assert ns["result"].history["val_loss"].shape == (30, 2)
        assert "test_loss" not in ns["result"].history  # settings chosen without the test set
        assert ns["result"].best is not None
        assert ns["final"].history["test_loss"].shape == (5, 2)
