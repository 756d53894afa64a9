"""Shared plumbing for the experiments: argument parsing and writing results/NAME.{json,md,png}."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fnn.files import atomic_write, write_json
from fnn.plots import figure_png

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (what the test suite runs)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default: experiments/results)")
    return p.parse_args(argv)


def main(module, argv=None) -> dict:
    """The command line of every experiment module: ``python experiments/NAME.py [--quick] [--out DIR]``.

    Calls ``module.run(quick)`` and ``module.report(results)``, writes NAME.{json,md,png} and
    prints the markdown. Keys listed in ``module.JSON_OMITS`` (data the figure needs but the
    json should not hold) are left out of the json. Returns the results as written.
    """
    name = Path(module.__file__).stem
    args = parse_args(module.__doc__, argv)
    results = module.run(args.quick)
    markdown, fig = module.report(results)
    for key in getattr(module, "JSON_OMITS", ()):
        results.pop(key)
    write(name, results, markdown, fig, args.out)
    print(markdown)
    return results


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write(name: str, results: dict, markdown: str, fig, out: str | os.PathLike = RESULTS) -> Path:
    """Writes NAME.json, NAME.md and NAME.png into ``out`` (each via a temp file and rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", json.loads(json.dumps(results, default=float)))
    atomic_write(out / f"{name}.md", markdown.rstrip() + "\n")
    atomic_write(out / f"{name}.png", figure_png(fig))
    return out


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda a: f"{a:.4g}" if isinstance(a, float) else str(a)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(a) for a in row) + " |" for row in rows]
    return "\n".join(lines)
