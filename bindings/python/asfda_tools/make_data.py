"""Write the synthetic multi-site data set, deterministically, from the real ICBM152 anatomy.

    python -m asfda_tools.make_data [--out DIR] [--seed S] [--counts SITE.SPLIT=N ...]

(`make data` runs it through scripts/make_data.py into .cache/data/synthetic-v1; an installed wheel's
`asfda demo` runs it into the user's asfda cache, with `pip install "asfda[demo]"`.)

Layout (one folder per site; pool labels are the "oracle annotator" and live apart from the pool
images, so a demo cannot read them by accident):

    DIR/manifest.json
    DIR/<site>/{train,test}/<id>_image.nii.gz, <id>_label.nii.gz
    DIR/<site>/pool/<id>_image.nii.gz
    DIR/<site>/pool_labels/<id>_label.nii.gz

The folder is built in DIR.partial and moved into place when complete, so DIR always matches its
manifest. An existing DIR is replaced only if it holds a manifest written by this generator.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import nibabel as nib

from . import anatomy, synth

# Provenance and the MNI notice travel with the data: the source tree's data/synthetic/README.md,
# which the wheel carries as asfda_tools/synthetic_README.md.
_TREE_README = Path(__file__).resolve().parents[3] / "data" / "synthetic" / "README.md"
README = _TREE_README if _TREE_README.is_file() else Path(__file__).with_name("synthetic_README.md")
DEFAULT_COUNTS = {
    ("t1", "train"): 20, ("t1", "test"): 4,
    ("pd", "pool"): 24, ("pd", "test"): 8,
    ("thick", "pool"): 12, ("thick", "test"): 8,
    ("bias_noise", "pool"): 12, ("bias_noise", "test"): 8,
    ("spacing_orient", "pool"): 12, ("spacing_orient", "test"): 8,
}


def parse_count(text: str) -> tuple[tuple[str, str], int]:
    """'pd.pool=6' -> (('pd', 'pool'), 6), checked against the known sites and splits."""
    try:
        key, n = text.split("=")
        site, split = key.split(".")
        count = int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SITE.SPLIT=N, e.g. pd.pool=6")
    if site not in synth.SITES or split not in synth.SPLIT_IDS or count < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: sites {list(synth.SITES)}, splits {list(synth.SPLIT_IDS)}, N >= 0")
    return (site, split), count


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the data folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", type=parse_count, nargs="*", default=[],
                        help="override volumes per site and split, e.g. pd.pool=6 t1.train=4")
    return parser.parse_args(argv)


def volume_paths(site: str, split: str, vid: str) -> tuple[str, str]:
    """Relative image and label paths; pool labels go to their own folder."""
    label_dir = "pool_labels" if split == "pool" else split
    return f"{site}/{split}/{vid}_image.nii.gz", f"{site}/{label_dir}/{vid}_label.nii.gz"


def write_volume(tmp: Path, seed: int, site: str, split: str, index: int, anat) -> dict:
    """Generate and save one volume; return its manifest entry."""
    volume = synth.generate(seed, site, split, index, anat)
    vid = f"{site}_{split}_{index:03d}"
    image_path, label_path = volume_paths(site, split, vid)
    synth.save_nifti(volume.image, volume.affine, tmp / image_path)
    synth.save_nifti(volume.labels, volume.affine, tmp / label_path)
    return {
        "id": vid, "site": site, "split": split, "image": image_path, "label": label_path,
        "seed_key": synth.seed_key(seed, site, split, index),
        "dims": list(volume.image.shape), "spacing_mm": list(synth.SITES[site].spacing),
        "axcodes": "".join(nib.aff2axcodes(volume.affine)),
        "affine": volume.affine.tolist(), "params": volume.params,
    }


def manifest(seed: int, counts: dict, volumes: list[dict]) -> dict:
    """Everything a reader needs to know what the files are and where they came from."""
    return {
        "generator": synth.GENERATOR,
        "statement": synth.STATEMENT,
        "seed": seed,
        "counts": {f"{site}.{split}": n for (site, split), n in counts.items()},
        "anatomy": anatomy_record(),
        "sites": {name: vars(site) for name, site in synth.SITES.items()},
        "layout": "pool images in <site>/pool, their labels (oracle) in <site>/pool_labels",
        "volumes": volumes,
    }


def anatomy_record() -> dict:
    """Where the anatomy comes from and how labels and masks are made from it (every data set's
    manifest says so)."""
    return {
        "source": "ICBM152 2009a nonlinear symmetric template, nilearn 0.14.1 wheel",
        "files": [anatomy.TEMPLATE.format(k) for k in ("t1", "gm", "wm")],
        "labels": dict(enumerate(anatomy.CLASS_NAMES)),
        "label_rule": anatomy.LABEL_RULE,
        "mask_rule": anatomy.MASK_RULE,
    }


def check_replaceable(out: Path, generator: str = "asfda_tools.synth", writer: str = "asfda_tools.make_data") -> None:
    """Refuse, before any work, to replace a non-empty folder that `generator` did not write."""
    if not out.exists() or not any(out.iterdir()):
        return
    old = out / "manifest.json"
    ours = old.is_file() and json.loads(old.read_text()).get("generator", "").startswith(generator)
    if not ours:
        raise SystemExit(f"{out} exists and was not written by {writer}: not replacing it")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place (checked by `check_replaceable` first)."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    counts = {**DEFAULT_COUNTS, **dict(args.counts)}
    jobs = [(site, split, i) for (site, split), n in counts.items() for i in range(n)]
    out = args.out.resolve()
    check_replaceable(out)
    start = time.perf_counter()
    anat = anatomy.load_anatomy()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    volumes = []
    for k, (site, split, index) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        entry = write_volume(tmp, args.seed, site, split, index, anat)
        volumes.append(entry)
        dims = "x".join(map(str, entry["dims"]))
        print(f"[{k:3d}/{len(jobs)}] {entry['image']:<60} {dims:<11} {entry['axcodes']} "
              f"{time.perf_counter() - t0:5.2f} s", flush=True)
    shutil.copyfile(README, tmp / "README.md")
    (tmp / "manifest.json").write_text(json.dumps(manifest(args.seed, counts, volumes), indent=1))
    replace_dir(tmp, out)
    print(f"wrote {len(volumes)} volumes to {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
