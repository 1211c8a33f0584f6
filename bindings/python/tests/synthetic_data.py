"""Where the bindings' tests find the repository, the demo bundle and the synthetic data
(as tests/engine.rs does: $ASFDA_TEST_DATA, else .cache/data/synthetic-v1; `make data` makes it)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
BUNDLE = ROOT / "models" / "demo_brain_unet"


def data_dir() -> Path:
    d = Path(os.environ.get("ASFDA_TEST_DATA", ROOT / ".cache" / "data" / "synthetic-v1"))
    assert (d / "manifest.json").is_file(), f"{d} missing: run `make data`"
    return d


def image(site: str, split: str, index: int) -> Path:
    """E.g. image("t1", "test", 0) -> .../t1/test/t1_test_000_image.nii.gz."""
    p = data_dir() / site / split / f"{site}_{split}_{index:03d}_image.nii.gz"
    assert p.is_file(), p
    return p


def label(site: str, split: str, index: int) -> Path:
    sub = "pool_labels" if split == "pool" else split
    p = data_dir() / site / sub / f"{site}_{split}_{index:03d}_label.nii.gz"
    assert p.is_file(), p
    return p


def dice(pred: np.ndarray, truth: np.ndarray, classes=(1, 2, 3)) -> list[float]:
    return [2.0 * np.sum((pred == c) & (truth == c)) / max(1, np.sum(pred == c) + np.sum(truth == c))
            for c in classes]
