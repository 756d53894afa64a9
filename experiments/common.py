"""Shared plumbing for the experiments: argument parsing and writing results/NAME.{json,md,png}."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (what the test suite runs)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default: experiments/results)")
    return p.parse_args()


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write(name: str, results: dict, markdown: str, fig, out: str | os.PathLike = RESULTS) -> Path:
    """Writes NAME.json, NAME.md and NAME.png into ``out`` (each via a temp file and rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix, writer in (
        (".json", lambda p: p.write_text(json.dumps(results, indent=2, default=float) + "\n")),
        (".md", lambda p: p.write_text(markdown.rstrip() + "\n")),
        (".png", lambda p: fig.savefig(p, dpi=100, format="png")),
    ):
        tmp = out / f".{name}{suffix}.tmp"
        writer(tmp)
        os.replace(tmp, out / f"{name}{suffix}")
    figure().close(fig)
    return out


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda a: f"{a:.4g}" if isinstance(a, float) else str(a)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(a) for a in row) + " |" for row in rows]
    return "\n".join(lines)
