"""Every number the manual's experiments page states is in the result files its row links to.

docs/guides/experiments.md is written by hand; docs/results is a link to experiments/results, the
pages the experiments write themselves. A row (or paragraph) of the page links its results as
``[name](../results/name.md)``; each number in its text must appear, to the digits the page
gives, in one of those ``name.md`` or ``name.json`` files (a percentage may be a fraction there:
95.5% is 0.955). Sign is not compared, so "falls by 0.3" may quote -0.3. A number computed from
the results (a ratio, a difference of two means) is not there: state the one the result gives.
An ``a ± b`` must be a pair in the results as well. A lone number is caught only when no other
number of those results rounds to it, so a page number that coincides with another passes.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guides" / "experiments.md"
RESULTS = ROOT / "experiments" / "results"
NUMBER = re.compile(r"(?<![\w.])[-−+]?(\d+(?:\.\d+)?(?:e[-−+]?\d+)?)")
PAIR = re.compile(r"[-−+]?(\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?)")
RESULT_LINK = re.compile(r"\]\(\.\./results/(\w+)\.(?:md|png)\)")
LONG = 16  # lists longer than this in a json (curves, per-step values) would match almost any number

# Rows whose experiments another engineer is rerunning; they are rewritten with the new results.
STALE = {
}


def numbers(text: str) -> list[str]:
    """The numbers written in ``text`` (link targets left out), without their signs."""
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return [m.group(1).replace("−", "-") for m in NUMBER.finditer(text)]


def _json_numbers(doc):
    if isinstance(doc, dict):
        for value in doc.values():
            yield from _json_numbers(value)
    elif isinstance(doc, list) and len(doc) <= LONG:
        for value in doc:
            yield from _json_numbers(value)
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        yield abs(float(doc))
    elif isinstance(doc, str):
        yield from (abs(float(n)) for n in numbers(doc))


def result_numbers(names) -> tuple[list[float], list[tuple[float, float]]]:
    """The numbers of the named results (.md and .json), and their ``a ± b`` pairs."""
    values, pairs = [], []
    for name in names:
        text = (RESULTS / f"{name}.md").read_text()
        values += [abs(float(n)) for n in numbers(text)]
        if (RESULTS / f"{name}.json").exists():
            values += _json_numbers(json.loads((RESULTS / f"{name}.json").read_text()))
            text += (RESULTS / f"{name}.json").read_text()
        pairs += [(abs(float(a)), float(b)) for a, b in PAIR.findall(text)]
    return values, pairs


def _rounds_to(token: str):
    mantissa, _, exponent = token.partition("e")
    half = 0.5 * 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2])) * (1 + 1e-9)
    return lambda r: abs(r - float(token)) <= half or abs(100 * r - float(token)) <= half


def appears(token: str, values) -> bool:
    """``token`` is some value rounded to the page's digits (or 100 × a value: a percentage)."""
    return any(map(_rounds_to(token), values))


def unmatched(block: str) -> list[str]:
    """The numbers of a row that its results do not hold; an ``a ± b`` must be a pair there too."""
    claim = block.split(" | ")[1] if block.startswith("| [") else block
    values, pairs = result_numbers(sorted(set(RESULT_LINK.findall(block))))
    missing = [n for n in numbers(claim) if not appears(n, values)]
    for a, b in PAIR.findall(re.sub(r"\]\([^)]*\)", "]", claim)):
        near_a, near_b = _rounds_to(a), _rounds_to(b)
        if not any(near_a(x) and near_b(y) for x, y in pairs):
            missing.append(f"{a} ± {b}")
    return missing


def blocks(text: str) -> dict[str, str]:
    """Each table row, and each other paragraph, that links a result: keyed by the first it links."""
    found = {}
    for para in text.split("\n\n"):
        for part in (para.splitlines() if para.lstrip().startswith("|") else [para]):
            names = RESULT_LINK.findall(part)
            if names:
                found[names[0]] = part
    return found


BLOCKS = blocks(PAGE.read_text())


def test_the_page_has_its_rows():
    assert {"backprop_by_hand", "cross_entropy_vs_mse", "vanishing_gradients", "universal_approximation",
            "mechanisms", "activations", "paired_reanalysis"} <= BLOCKS.keys()
    assert "progress_chunks" in BLOCKS  # the paragraph after the table


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_number_on_the_row_is_in_its_results(name):
    missing = unmatched(BLOCKS[name])
    if name in STALE:
        assert missing, f"row {name} now matches its results: take it out of STALE"
        pytest.xfail(f"{STALE[name]} ({missing})")
    assert not missing, f"experiments.md, row {name}: not in its results: {missing}"


def test_a_changed_number_is_caught():
    row = BLOCKS["cross_entropy_vs_mse"]
    assert "+0.78 ± 0.34" in row and not unmatched(row)
    assert unmatched(row.replace("+0.78 ± 0.34", "+0.87 ± 0.34")) == ["0.87 ± 0.34"]  # 0.87 alone is there
    assert unmatched(row.replace("+0.78 ± 0.34", "+0.78 ± 0.43")) == ["0.78 ± 0.43"]
    # A lone number is caught only when nothing else in its results rounds to it: 96.2 would pass (0.962 is there).
    assert unmatched(row.replace("97.3 vs 97.2%", "97.3 vs 99.2%")) == ["99.2"]
    assert appears("95.5", [0.955]) and appears("5e-12", [4.635e-12]) and not appears("0.006", [0.0036])
