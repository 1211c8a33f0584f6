#!/usr/bin/env python3
"""`make data`: the synthetic multi-site data set (asfda_tools.make_data, which says what it writes).

    scripts/make_data.py [--out DIR] [--seed S] [--counts SITE.SPLIT=N ...]   (default --out .cache/data/synthetic-v1)
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bindings" / "python"))

from asfda_tools.make_data import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(ROOT / ".cache" / "data" / "synthetic-v1")]
    main(args)
