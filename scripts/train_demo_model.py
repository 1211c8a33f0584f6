#!/usr/bin/env python3
"""Trains the demo Med-VFM on the SOURCE site only and exports it as an asfda bundle.

Recipe (reproducible: fixed seeds, deterministic data from `make data`):
  nnU-Net-style 3D U-Net (asfda_tools.unet.UNet3D: 4 levels, 16 channels at full resolution,
  capped at 64, InstanceNorm + LeakyReLU, strided convs, transposed-conv upsampling) on 2 mm
  RAS volumes, z-score over non-zero voxels, 64^3 patches (a third centred on foreground),
  DiceCE loss, AdamW (lr 2e-3, poly decay, weight decay 1e-2), batch 2, light intensity
  augmentation. Then: Dice per site on the held-out test volumes, the bundle (inference ONNX,
  train-step ONNX, checkpoint, source knowledge from the source training volumes) and the model
  card's measured table.

Usage: .venv-torch/bin/python scripts/train_demo_model.py [--data DIR] [--out DIR] [--steps N]
Subjects are synthetic derivatives of real anatomy (ICBM152); site shifts are simulated.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings" / "python"))

from asfda_tools.export import export_bundle  # noqa: E402
from asfda_tools.trainstep import dice_ce  # noqa: E402
from asfda_tools.unet import UNet3D  # noqa: E402

# Names, display colours (FreeSurfer's LUT) and SNOMED CT codes (what DICOM SEG writes).
_SCT = lambda value, meaning: {"scheme": "SCT", "value": value, "meaning": meaning}  # noqa: E731
_ANATOMY = _SCT("91723000", "Anatomical Structure")
CLASSES = [
    "background",
    {"name": "csf_other", "color": [120, 18, 134],
     "code": {"category": _SCT("91720002", "Body Substance"), "type": _SCT("65216001", "Cerebrospinal Fluid")}},
    {"name": "gm", "color": [205, 62, 78], "code": {"category": _ANATOMY, "type": _SCT("389081007", "Gray Matter")}},
    {"name": "wm", "color": [245, 245, 245], "code": {"category": _ANATOMY, "type": _SCT("389080008", "White Matter")}},
]
FOREGROUND = [1, 2, 3]
PATCH = (64, 64, 64)
SPACING = 2.0
SITES = ["t1", "pd", "thick", "bias_noise", "spacing_orient"]


def load_case(image_path: Path, label_path: Path):
    """Image and labels in canonical RAS at 2 mm, as [Z, Y, X] arrays (asfda's tensor layout)."""
    img = nib.as_closest_canonical(nib.load(image_path))
    lab = nib.as_closest_canonical(nib.load(label_path))
    x = np.asarray(img.dataobj, dtype=np.float32)
    y = np.asarray(lab.dataobj, dtype=np.int64)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    return x, y, zooms


def to_model_grid(x: np.ndarray, zooms: np.ndarray, order: int) -> np.ndarray:
    factors = zooms / SPACING
    return x if np.allclose(factors, 1) else ndimage.zoom(x, factors, order=order)


def normalize(x: np.ndarray) -> np.ndarray:
    """z-score over non-zero voxels (the bundle's normalisation: zscore, mask nonzero)."""
    mask = x != 0
    vals = x[mask] if mask.any() else x.ravel()
    return ((x - vals.mean()) / max(vals.std(), 1e-6)).astype(np.float32)


def pad_to(x: np.ndarray, shape, value=0):
    pads = [(0, max(0, s - d)) for d, s in zip(x.shape, shape)]
    return np.pad(x, pads, constant_values=value)


def case_tensors(image_path, label_path):
    """(normalised image [Z,Y,X], labels [Z,Y,X]) on the model grid, X/Y/Z transposed from RAS."""
    x, y, zooms = load_case(image_path, label_path)
    x = to_model_grid(x, zooms, 1)
    y = to_model_grid(y, zooms, 0)
    return normalize(x).T.copy(), y.T.copy()


def sample_patch(rng, x, y):
    x, y = pad_to(x, PATCH), pad_to(y, PATCH)
    if rng.random() < 1 / 3:  # nnU-Net: a third of the patches centred on foreground
        fg = np.argwhere(y > 0)
        centre = fg[rng.integers(len(fg))]
        start = [int(np.clip(c - p // 2, 0, d - p)) for c, p, d in zip(centre, PATCH, x.shape)]
    else:
        start = [int(rng.integers(0, d - p + 1)) for p, d in zip(PATCH, x.shape)]
    sl = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
    return x[sl], y[sl]


def augment(rng, x):
    """Light intensity augmentation only: the shift to the target sites must stay a real shift."""
    x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return x.astype(np.float32)


def gaussian_map(shape, sigma_scale=1 / 8):
    grid = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    g = np.exp(-sum((c / (s * sigma_scale)) ** 2 / 2 for c, s in zip(grid, shape)))
    g = g / g.max()
    return np.maximum(g, g[g > 0].min()).astype(np.float32)  # nnU-Net: no zeros at the border


def tile_starts(size, patch, step):
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def sliding_window(model, x, overlap=0.5):
    """Gaussian-weighted sliding-window logits [C, Z, Y, X] for a normalised volume [Z, Y, X]."""
    shape = x.shape
    xp = pad_to(x, PATCH)
    acc = np.zeros((len(CLASSES),) + xp.shape, np.float32)
    weight = np.zeros(xp.shape, np.float32)
    g = gaussian_map(PATCH)
    starts = [tile_starts(d, p, int(p * (1 - overlap))) for d, p in zip(xp.shape, PATCH)]
    with torch.no_grad():
        for z in starts[0]:
            for yy in starts[1]:
                for xx in starts[2]:
                    sl = (slice(z, z + PATCH[0]), slice(yy, yy + PATCH[1]), slice(xx, xx + PATCH[2]))
                    logits = model(torch.from_numpy(xp[sl][None, None].copy()))[0][0].numpy()
                    acc[(slice(None),) + sl] += logits * g
                    weight[sl] += g
    return (acc / weight)[:, : shape[0], : shape[1], : shape[2]]


def tiles_of(x):
    """Non-overlapping-ish 64^3 tiles [T, 1, Z, Y, X] of a normalised volume (source knowledge)."""
    xp = pad_to(x, PATCH)
    starts = [tile_starts(d, p, p) for d, p in zip(xp.shape, PATCH)]
    return np.stack([xp[z:z + 64, y:y + 64, w:w + 64][None]
                     for z in starts[0] for y in starts[1] for w in starts[2]])


def dice_per_class(pred, truth):
    out = []
    for c in FOREGROUND:
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out.append(2 * (p & t).sum() / denom if denom else 1.0)
    return out


def evaluate_site(model, data: Path, site: str):
    """Mean Dice per foreground class on a site's held-out test volumes, in the native grid."""
    scores = []
    for image_path in sorted((data / site / "test").glob("*_image.nii.gz")):
        label_path = image_path.with_name(image_path.name.replace("_image", "_label"))
        x, y, zooms = load_case(image_path, label_path)
        xm = normalize(to_model_grid(x, zooms, 1)).T.copy()
        pred = sliding_window(model, xm).argmax(0).T  # back to [X, Y, Z]
        if pred.shape != y.shape:  # resample the prediction back to the native grid
            pred = ndimage.zoom(pred, np.asarray(y.shape) / np.asarray(pred.shape), order=0)
            pred = pad_to(pred, y.shape)[: y.shape[0], : y.shape[1], : y.shape[2]]
        scores.append(dice_per_class(pred, y))
    return np.asarray(scores)


def train(model, cases, steps, seed, log_every=50):
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    model.train()
    started = time.time()
    for step in range(steps):
        batch = [sample_patch(rng, *cases[rng.integers(len(cases))]) for _ in range(2)]
        x = torch.from_numpy(np.stack([augment(rng, b[0]) for b in batch])[:, None])
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss, ce, dice = dice_ce(model(x)[0], y, torch.ones(2), foreground_classes=FOREGROUND,
                                 ignore_label=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} (ce {ce.item():.4f}, dice {dice.item():.4f})"
                  f" {time.time() - started:.0f} s", flush=True)
    return model.eval()


def publish(staging: Path, out: Path):
    """Swap the finished bundle in whole, keeping the hand-written model card: an interrupted
    run never leaves a half-written bundle where the library looks for one."""
    card = out / "MODEL_CARD.md"
    if card.exists():
        shutil.copy2(card, staging / card.name)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def keep_freed_memory():
    """glibc returns every large freed block to the OS, so each training step page-faults its
    activations in again (measured: 1.07 s -> 0.59 s per 64^3 step of batch 2 on 2 cores)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 2**30)
    libc.mallopt(m_mmap_threshold, 2**30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / ".cache/data/synthetic-v1")
    ap.add_argument("--out", type=Path, default=ROOT / "models/demo_brain_unet")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=ROOT / ".cache/demo_brain_unet.pt",
                    help="trained weights are saved here; with --export-only they are loaded instead")
    ap.add_argument("--export-only", action="store_true", help="skip training, re-export saved weights")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    keep_freed_memory()

    train_images = sorted((args.data / "t1" / "train").glob("*_image.nii.gz"))
    cases = [case_tensors(p, p.with_name(p.name.replace("_image", "_label"))) for p in train_images]
    print(f"{len(cases)} source-site training volumes, shape {cases[0][0].shape}")

    model = UNet3D(1, len(CLASSES), base_channels=16, levels=4, max_channels=64)
    t0 = time.time()
    if args.export_only:
        model.load_state_dict(torch.load(args.weights))
        model.eval()
    else:
        train(model, cases, args.steps, args.seed)
        args.weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.weights)
    train_time = time.time() - t0

    results = {}
    for site in SITES:
        d = evaluate_site(model, args.data, site)
        results[site] = {"volumes": len(d), "dice_mean": float(d.mean()),
                         "dice_per_class": dict(zip(CLASSES[1:], d.mean(0).round(4).tolist()))}
        print(f"{site:15s} Dice {d.mean():.3f} per class {d.mean(0).round(3).tolist()} ({len(d)} volumes)")

    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    manifest = export_bundle(
        model, staging, name="asfda-demo-brain-unet", classes=CLASSES, foreground_classes=FOREGROUND,
        patch_size=list(PATCH), spacing=[SPACING] * 3, normalization={"kind": "zscore", "mask": "nonzero"},
        source_dataset_iterator=(tiles_of(x) for x, _ in cases), reference_patch_size=[32, 32, 32],
        seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    (staging / "training_report.json").write_text(json.dumps({
        "steps": args.steps, "seed": args.seed, "train_seconds": round(train_time), "parameters": params,
        "torch": torch.__version__, "dice_before_adaptation": results,
        "statement": "Subjects are synthetic derivatives of real anatomy (ICBM152 2009a); site shifts are simulated.",
    }, indent=2) + "\n")
    publish(staging, args.out)
    print(f"bundle '{manifest['name']}' in {args.out} ({params} parameters, trained in {train_time:.0f} s)")


if __name__ == "__main__":
    main()
