#!/usr/bin/env python3
"""Seed corpus for the fuzz targets (fuzz/corpus/<target>/), made from small real inputs so that
nothing large is committed: the NIfTI test files nibabel ships, score JSON in the library's own
format, selections that `asfda select` writes from those scores, the demo and golden bundle
manifests (and their golden variants), small ONNX models (the tiny test model, the demo
bundle's graphs cut to 100 KB), and the small DICOM files and series pydicom ships.

usage: scripts/fuzz_corpus.py [--cli target/debug/asfda] [--out fuzz/corpus]
"""
import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
from asfda_tools.manifest import edited_manifest  # noqa: E402  (needs the path above)


def nibabel_data():
    import nibabel

    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")


def nifti_seeds(out):
    """Tiny NIfTI-1/2 images written by nibabel (every voxel type asfda reads, 3D and 4D, scaled,
    .nii and .nii.gz, sform and qform), plus the small real files nibabel ships. Small seeds keep
    each execution cheap, so the fuzzer spends its time on the header, not on inflating voxels."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    n = 0
    for dtype in ["uint8", "int16", "int32", "float32", "float64", "uint16", "int8", "int64"]:
        for shape in [(3, 2, 2), (2, 2, 2, 2)]:
            for cls in [nib.Nifti1Image, nib.Nifti2Image]:
                data = (rng.uniform(0, 100, size=shape)).astype(dtype)
                affine = np.diag([rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0.5, 3), 1.0])
                img = cls(data, affine, dtype=dtype)
                img.header.set_qform(affine, code=1)
                if dtype == "int16":
                    img.header.set_slope_inter(0.5, -3.0)
                for ext in [".nii", ".nii.gz"]:
                    nib.save(img, os.path.join(out, f"tiny_{cls.__name__}_{dtype}_{len(shape)}d{ext}"))
                    n += 1
    for path in sorted(glob.glob(os.path.join(nibabel_data(), "*.nii*"))):
        if os.path.getsize(path) <= 16 << 10:
            shutil.copy(path, os.path.join(out, os.path.basename(path)))
            n += 1
    return n


def score(rng, i, dim):
    bins = rng.choice([2, 10, 100])
    histogram = [rng.randrange(0, 1000) for _ in range(bins)]
    return {
        "format_version": 1, "id": f"v{i:02d}", "embedding": [rng.uniform(-1, 1) for _ in range(dim)],
        "gap_kl": rng.uniform(0, 3), "gap_anchor": rng.uniform(0, 2), "asd": rng.uniform(0, 1),
        "asd_threshold": rng.uniform(0, 0.5), "confidence": rng.uniform(0.5, 1),
        "foreground_fraction": rng.uniform(0, 0.6),
        "entropy_histogram": histogram, "voxels": 1000000, "foreground_voxels": sum(histogram),
        "options": {"foreground_dilation": 2, "threshold": rng.choice(["first_peak", "otsu", "none"]),
                    "histogram_bins": bins, "peak_smoothing": 5, "class_balanced": rng.random() < 0.5,
                    "variance_floor": 0.01},
    }


def json_seeds(out_scores, out_selections, cli):
    rng = random.Random(0)
    scores = [score(rng, i, 6) for i in range(12)]
    for s in scores:
        with open(os.path.join(out_scores, s["id"] + ".json"), "w") as f:
            f.write(json.dumps(s))
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "scores.jsonl")
        with open(jsonl, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in scores)
        for method in ["asfda", "random", "foreground_random", "entropy", "dkd", "coreset"]:
            for budget in [1, 4]:
                out = os.path.join(out_selections, f"{method}_{budget}.json")
                subprocess.run([cli, "select", "--scores", jsonl, "--budget", str(budget), "--method", method,
                                "--out", out], check=True, stdout=subprocess.DEVNULL)
    return len(scores), 12


def manifest_seeds(out):
    """The demo bundle's manifest, the golden manifest and every golden variant (valid or not)."""
    n = 0
    for src in ["models/demo_brain_unet/manifest.json", "tests/data/golden_manifest.json"]:
        shutil.copy(os.path.join(ROOT, src), os.path.join(out, src.replace("/", "_")))
        n += 1
    with open(os.path.join(ROOT, "tests", "data", "golden_manifest.json")) as f:
        golden = json.load(f)
    with open(os.path.join(ROOT, "tests", "data", "golden_manifest_cases.json")) as f:
        cases = json.load(f)
    for kind in ["valid", "invalid"]:
        for i, case in enumerate(cases[kind]):
            with open(os.path.join(out, f"golden_{kind}_{i:02d}.json"), "w") as f:
                f.write(json.dumps(edited_manifest(golden, case)))
            n += 1
    return n


def onnx_seeds(out, limit=100 << 10):
    """The tiny test model whole, and the demo bundle's graphs cut to ``limit`` bytes (the graph's
    inputs and outputs come after the initializers, so cut files exercise truncation)."""
    n = 0
    for src in ["models/tiny_conv3d/tiny_conv3d.onnx", "models/demo_brain_unet/model.onnx",
                "models/demo_brain_unet/train_step.onnx"]:
        with open(os.path.join(ROOT, src), "rb") as f:
            data = f.read(limit)
        with open(os.path.join(out, src.replace("/", "_")), "wb") as f:
            f.write(data)
        n += 1
    return n


# Splits one fuzz input into several DICOM files (fuzz/targets.rs `dicom` uses the same bytes).
DICOM_FILE_SEPARATOR = b"\0ASFDA-NEXT-FILE\0"


def dicom_seeds(out, limit=64 << 10):
    """Small real DICOM files from the pydicom wheel: single images in every transfer syntax asfda
    reads or refuses, colour, RT and enhanced-style files, and whole small series (16x16 CT and MR
    slices) joined with the separator the target splits on, so series assembly is fuzzed too."""
    import pydicom

    files = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    n = 0
    for path in sorted(glob.glob(os.path.join(files, "*.dcm"))):
        if os.path.getsize(path) <= limit:
            shutil.copy(path, os.path.join(out, os.path.basename(path)))
            n += 1
    for series in ["77654033/CT2", "98892001/CT5N", "98892003/MR700", "98892003/MR2"]:
        parts = []
        for path in sorted(glob.glob(os.path.join(files, "dicomdirtests", series, "*"))):
            with open(path, "rb") as f:
                parts.append(f.read())
        with open(os.path.join(out, "series_" + series.replace("/", "_")), "wb") as f:
            f.write(DICOM_FILE_SEPARATOR.join(parts))
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=os.path.join(ROOT, "target", "debug", "asfda"))
    ap.add_argument("--out", default=os.path.join(ROOT, "fuzz", "corpus"))
    args = ap.parse_args()
    dirs = {t: os.path.join(args.out, t) for t in ["nifti", "score_json", "selection_json", "manifest", "onnx_proto", "dicom"]}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    n_manifest = manifest_seeds(dirs["manifest"])
    n_onnx = onnx_seeds(dirs["onnx_proto"])
    n_nifti = nifti_seeds(dirs["nifti"])
    n_dicom = dicom_seeds(dirs["dicom"])
    n_scores, n_selections = json_seeds(dirs["score_json"], dirs["selection_json"], args.cli)
    print(f"seeds: nifti {n_nifti}, score_json {n_scores}, selection_json {n_selections}, "
          f"manifest {n_manifest}, onnx_proto {n_onnx}, dicom {n_dicom} -> {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
