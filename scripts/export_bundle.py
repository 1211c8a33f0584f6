#!/usr/bin/env python3
"""Write a model bundle for a 3D U-Net (random init unless --weights is given).

Run with the generator's virtualenv (scripts/requirements-torch.txt), e.g.:
    .venv-torch/bin/python scripts/export_bundle.py out/demo --classes background,tumour
Regenerate only the demo bundle's train-step graph from its checkpoint:
    .venv-torch/bin/python scripts/export_bundle.py models/demo_brain_unet --train-step-only \
        --base-channels 16 --levels 4 --max-channels 64
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bindings" / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asfda_tools.export import (export_bundle, load_checkpoint_params,  # noqa: E402
                                rewrite_train_step)
from asfda_tools.unet import UNet3D  # noqa: E402


def ints(text):
    return [int(v) for v in text.split(",")]


def floats(text):
    return [float(v) for v in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="bundle folder to write")
    p.add_argument("--name", help="bundle name (default: the folder name)")
    p.add_argument("--classes", default="background,foreground",
                   help="comma-separated class names, background first")
    p.add_argument("--foreground", type=ints, help="foreground class indices (default: all but 0)")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--max-channels", type=int, default=320)
    p.add_argument("--patch", type=ints, default=[64, 64, 64], help="patch size z,y,x")
    p.add_argument("--spacing", type=floats, default=[1.0, 1.0, 1.0], help="spacing z,y,x in mm")
    p.add_argument("--normalization", type=json.loads,
                   default={"kind": "zscore", "mask": "nonzero"},
                   help='JSON object: {"kind": "zscore", "mask": "nonzero"|"all"}, '
                        '{"kind": "ct_window", "lower": HU, "upper": HU, "mean": m, "std": s} '
                        'or {"kind": "percentile", "lower": 0.5, "upper": 99.5}')
    p.add_argument("--weights", type=Path,
                   help="a PyTorch state_dict (.pt), or a bundle checkpoint (.safetensors, "
                        "its param.* tensors), to load")
    p.add_argument("--train-step-only", action="store_true",
                   help="only regenerate OUT/train_step.onnx of an existing bundle (same "
                        "manifest io), from OUT's checkpoint unless --weights is given")
    p.add_argument("--weight-grad", choices=["conv", "gemm"], default="conv",
                   help="with --train-step-only: how the graph forms weight gradients "
                        "(asfda_tools.trainstep.decomposition_table)")
    p.add_argument("--source", type=Path,
                   help="folder of .npy source volumes, each [tiles, C, Z, Y, X], normalised")
    p.add_argument("--k", type=int, default=8, help="number of source anchors")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    classes = a.classes.split(",")
    if a.train_step_only:
        classes = json.loads((a.out / "manifest.json").read_text())["classes"]
        a.weights = a.weights or a.out / "checkpoint.safetensors"
    torch.manual_seed(a.seed)
    model = UNet3D(a.in_channels, len(classes), a.base_channels, a.levels, a.max_channels)
    if a.weights and a.weights.suffix == ".safetensors":
        load_checkpoint_params(model, a.weights)
    elif a.weights:
        model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    if a.train_step_only:
        rewrite_train_step(model, a.out, a.weight_grad)
        print(f"{(a.out / 'train_step.onnx').stat().st_size:>12,}  {a.out / 'train_step.onnx'}")
        return
    source = None
    if a.source:
        source = (np.load(f) for f in sorted(a.source.glob("*.npy")))
    manifest = export_bundle(
        model, a.out, name=a.name, classes=classes,
        foreground_classes=a.foreground or list(range(1, len(classes))), patch_size=a.patch,
        spacing=a.spacing, normalization=a.normalization, source_dataset_iterator=source, k=a.k,
        seed=a.seed)
    for f in sorted(a.out.iterdir()):
        print(f"{f.stat().st_size:>12,}  {f}")
    print(f"{manifest['name']}: {len(manifest['training']['parameters'])} parameter tensors, "
          f"{sum(int(np.prod(q['shape'])) for q in manifest['training']['parameters']):,} values")


if __name__ == "__main__":
    main()
