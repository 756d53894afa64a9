"""The speed benchmark, writing experiments/results/benchmark.{json,md,png}.

The same as ``fnn bench`` (all its options apply), with the output folder fixed to this
repository's results folder whatever the working directory. Peers are optional:
``pip install -e '.[bench]'``. The figures committed here come from

    python experiments/benchmark.py --rounds 9 --leak-steps 10000

on a quiet machine (nothing else running).
"""

import sys
from pathlib import Path

from fnn.cli.main import main

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(main(["bench", "--out", str(results), *sys.argv[1:]]))
