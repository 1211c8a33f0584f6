#!/usr/bin/env python3
"""Write the heterogeneous target hospital (hetero-v1), deterministically, from real anatomy.

    scripts/make_hetero_data.py [--out DIR] [--seed S] [--counts SITE.SPLIT.KIND=N ...]

Two sites (``asfda_tools.hetero.SITES``): ``hetero``, the evaluation hospital (pool 40, test 18),
and ``hetero_tune``, a tuning hospital with other seeds and other shares (pool 32, test 12).
Layout as synthetic-v1 (``scripts/make_data.py``), plus a tissue map beside every label map:

    DIR/manifest.json                                   every volume: kind, anatomy, seed key, params
    DIR/<site>/pool/<id>_image.nii.gz
    DIR/<site>/pool_labels/<id>_{label,tissue}.nii.gz   the oracle annotator
    DIR/<site>/test/<id>_{image,label,tissue}.nii.gz

The folder is built in DIR.partial and moved into place when complete. An existing DIR is
replaced only if it holds a manifest written by this generator.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bindings" / "python"))

from asfda_tools import hetero, synth  # noqa: E402
from asfda_tools.make_data import anatomy_record, check_replaceable, replace_dir  # noqa: E402

DEFAULT_OUT = ROOT / ".cache" / "data" / "hetero-v1"
README = ROOT / "data" / "hetero" / "README.md"
NOTICE = ROOT / "data" / "synthetic" / "README.md"  # the MNI / nilearn notices


def parse_count(text: str) -> tuple[tuple[str, str, str], int]:
    """'hetero.pool.routine=2' -> (('hetero', 'pool', 'routine'), 2), checked."""
    try:
        key, n = text.split("=")
        site, split, kind = key.split(".")
        count = int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SITE.SPLIT.KIND=N, e.g. hetero.pool.pd=2")
    if site not in hetero.SITES or split not in hetero.SPLIT_IDS or kind not in hetero.KINDS or count < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: sites {list(hetero.SITES)}, splits {list(hetero.SPLIT_IDS)}, "
            f"kinds {list(hetero.KINDS)}, N >= 0")
    return (site, split, kind), count


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", type=parse_count, nargs="*", default=[],
                        help="override volumes per site, split and kind, e.g. hetero.pool.pd=2 "
                             "(a site.split named here keeps only the kinds named)")
    parser.add_argument("--sites", nargs="*", default=list(hetero.SITES), choices=list(hetero.SITES))
    return parser.parse_args(argv)


def split_counts(args) -> dict[tuple[str, str], dict[str, int]]:
    counts = {(site, split): dict(by_kind) for site in args.sites
              for split, by_kind in hetero.SITES[site].items()}
    overridden = {}
    for (site, split, kind), n in args.counts:
        overridden.setdefault((site, split), {})[kind] = n
    counts.update(overridden)
    return counts


def write_volume(tmp: Path, seed: int, site: str, split: str, index: int, entry: dict, tpl) -> dict:
    key = hetero.seed_key(seed, site, split, index)
    volume = hetero.render(tpl, key, entry)
    vid = f"{site}_{split}_{index:03d}"
    label_dir = "pool_labels" if split == "pool" else split
    paths = {"image": f"{site}/{split}/{vid}_image.nii.gz",
             "label": f"{site}/{label_dir}/{vid}_label.nii.gz",
             "tissue": f"{site}/{label_dir}/{vid}_tissue.nii.gz"}
    synth.save_nifti(volume.image, volume.affine, tmp / paths["image"])
    synth.save_nifti(volume.labels, volume.affine, tmp / paths["label"])
    synth.save_nifti(volume.tissue, volume.affine, tmp / paths["tissue"])
    return {
        "id": vid, "site": site, "split": split, "kind": volume.kind, "anatomy": volume.anatomy,
        **paths, "seed_key": key, "dims": list(volume.image.shape), "spacing_mm": [2.0, 2.0, 2.0],
        "axcodes": "".join(nib.aff2axcodes(volume.affine)), "affine": volume.affine.tolist(),
        "params": volume.params,
    }


def manifest(seed: int, counts: dict, volumes: list[dict]) -> dict:
    return {
        "generator": hetero.GENERATOR,
        "statement": hetero.STATEMENT,
        "seed": seed,
        "counts": {f"{site}.{split}": by_kind for (site, split), by_kind in counts.items()},
        "anatomy": {
            **anatomy_record(),
            "tissues": dict(enumerate(hetero.TISSUES)),
            "tissue_class": dict(zip(hetero.TISSUES, hetero.TISSUE_CLASS.tolist())),
            "lesion_rule": hetero.LESION_RULE,
            "anatomy_shares": hetero.ANATOMY_SHARES,
        },
        "kinds": {name: vars(kind) for name, kind in hetero.KINDS.items()},
        "layout": "pool images in <site>/pool, their labels and tissue maps (oracle) in "
                  "<site>/pool_labels; the evaluation site is 'hetero', the tuning site 'hetero_tune'",
        "volumes": volumes,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    counts = split_counts(args)
    out = args.out.resolve()
    check_replaceable(out, "asfda_tools.hetero", "make_hetero_data.py")
    start = time.perf_counter()
    tpl = hetero.load_template()
    print(f"template and distance maps in {time.perf_counter() - start:.1f} s", flush=True)
    jobs = [(site, split, i, entry) for (site, split), by_kind in counts.items()
            for i, entry in enumerate(hetero.plan(args.seed, site, split, by_kind))]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    volumes = []
    for k, (site, split, index, entry) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        volumes.append(write_volume(tmp, args.seed, site, split, index, entry, tpl))
        changes = ",".join(c for c in hetero.ANATOMY_SHARES if entry[c]) or "-"
        print(f"[{k:3d}/{len(jobs)}] {volumes[-1]['image']:<44} {entry['kind']:<10} {changes:<22} "
              f"{time.perf_counter() - t0:5.2f} s", flush=True)
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(README, tmp / "README.md")
    shutil.copyfile(NOTICE, tmp / "NOTICE-synthetic-v1-README.md")
    (tmp / "manifest.json").write_text(json.dumps(manifest(args.seed, counts, volumes), indent=1))
    replace_dir(tmp, out)
    print(f"wrote {len(volumes)} volumes to {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
