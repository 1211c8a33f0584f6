#!/usr/bin/env python3
"""Scoring benchmark peers (issue #4 item 8), driven by scripts/bench_score.sh.

  bench_score.py make-inputs --out DIR [--ct-dims X Y Z] [--ct-patch P] [--ct-levels L]
      case 1 input: the real 1 mm ICBM152 T1 (nilearn wheel; falls back to a synthetic t1 test
      volume resampled to 1 mm); case 2: an nnU-Net 3d_fullres-like U-Net with random weights
      exported as an asfda bundle (DIR/ct_unet, weights in DIR/ct_unet_weights.pt) and a
      synthetic CT volume (DIR/ct.nii).
  bench_score.py run --method monai|ort --bundle B --input X.npy [--weights W --arch ...]
      One method in this process: a warm-up volume, then REPEATS timed volumes of
      sliding window (overlap 0.5, Gaussian sigma 1/8, 2 tiles per batch) + softmax + normalised
      entropy + foreground/ASD-like reductions + feature mean and gap, all on 2 threads.
      X.npy is asfda's own prepared input (resampled, normalised, padded: score_bench dump), so
      every method does the same network work. Prints one `RESULT {json}` line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings" / "python"))
THREADS = 2
OVERLAP = 0.5
SIGMA_SCALE = 0.125
TILES_PER_BATCH = 2
ICBM = ROOT / ".venv/lib/python3.11/site-packages/nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def load_weights(path: Path) -> dict:
    """PyTorch weights for UNet3D: a bundle's checkpoint.safetensors (its ``param.*`` tensors; the
    ``m.*``/``v.*`` optimizer moments and ``step`` are skipped), or a ``torch.save``d state dict."""
    import torch
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return {k[len("param."):]: v for k, v in load_file(str(path)).items() if k.startswith("param.")}
    return torch.load(path)


def peak_rss_mib(key: str = "VmHWM:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------
# Scoring in numpy: the same work asfda's score_volume does (not bit-identical: ASD-like).

def softmax0(logits: np.ndarray) -> np.ndarray:
    m = logits.max(0, keepdims=True)
    e = np.exp(logits - m, dtype=np.float32)
    e /= e.sum(0, keepdims=True)
    return e


def first_peak(hist: np.ndarray, smoothing: int = 5) -> int:
    r = smoothing // 2
    c = np.concatenate([[0], np.cumsum(hist, dtype=np.float64)])
    idx = np.arange(len(hist))
    lo, hi = np.maximum(idx - r, 0), np.minimum(idx + r + 1, len(hist))
    h = (c[hi] - c[lo]) / (hi - lo)
    for j in range(len(h)):
        left = h[j - 1] if j > 0 else -np.inf
        right = h[j + 1] if j + 1 < len(h) else -np.inf
        if h[j] > 0 and h[j] >= left and h[j] > right:
            k = j
            while k > 0 and h[k - 1] < h[k] and h[k - 1] > 0:
                k -= 1
            return k
    return 0


def score_numpy(probs: np.ndarray, feats: np.ndarray, source) -> dict:
    from scipy import ndimage
    k = probs.shape[0]
    ent = -(probs * np.log(np.maximum(probs, np.float32(1e-30)))).sum(0) / np.float32(np.log(k))
    fg = probs.argmax(0) != 0
    region = ndimage.maximum_filter(fg, size=5)  # 3x3x3 dilation applied twice
    h = ent[region]
    hist, _ = np.histogram(h, bins=100, range=(0.0, 1.0))
    tau = first_peak(hist) / 100
    sel = h[h > tau]
    asd = float(sel.mean()) if sel.size else 0.0
    confidence = float(probs.max(0)[region].mean()) if region.any() else 0.0
    mu = feats.mean(0).astype(np.float64)
    var = np.maximum(feats.var(0).astype(np.float64), 1e-2 * source["var"])
    vs = np.maximum(source["var"].astype(np.float64), 1e-12)
    kl = float(np.mean(0.5 * np.log(vs / var) + (var + (mu - source["mean"]) ** 2) / (2 * vs) - 0.5))
    z = mu / max(np.linalg.norm(mu), 1e-12)
    anchor = float(((source["anchors"] - z) ** 2).sum(1).min())
    return {"asd": asd, "tau": tau, "confidence": confidence, "foreground_fraction": float(fg.mean()),
            "gap_kl": kl, "gap_anchor": anchor}


# ------------------------------------------------------------------------------------------
# Sliding window in numpy + onnxruntime (same tiles and blending as asfda's window.rs)

def tile_starts(size: int, tile: int, overlap: float):
    if size <= tile:
        return [0]
    target = max(tile * (1 - overlap), 1.0)
    steps = int(np.ceil((size - tile) / target)) + 1
    actual = (size - tile) / (steps - 1)
    return [int(round(actual * i)) for i in range(steps)]


def gaussian_importance(tile, sigma_scale=SIGMA_SCALE):
    axes = [np.exp(-((np.arange(n) - (n - 1) / 2) ** 2) / (2 * (n * sigma_scale) ** 2)) for n in tile]
    g = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)
    return np.maximum(g, g[g > 0].min())


def ort_window(session, image: np.ndarray, tile):
    """image [C, Z, Y, X] -> (logits [K, Z, Y, X], features [T, F])"""
    shape = image.shape[1:]
    starts = [(a, b, c) for a in tile_starts(shape[0], tile[0], OVERLAP)
              for b in tile_starts(shape[1], tile[1], OVERLAP)
              for c in tile_starts(shape[2], tile[2], OVERLAP)]
    g = gaussian_importance(tile)
    acc = None
    weight = np.zeros(shape, np.float32)
    feats = []
    for i in range(0, len(starts), TILES_PER_BATCH):
        batch = starts[i:i + TILES_PER_BATCH]
        x = np.stack([image[:, a:a + tile[0], b:b + tile[1], c:c + tile[2]] for a, b, c in batch])
        logits, f = session.run(["logits", "features"], {"image": x})
        if acc is None:
            acc = np.zeros((logits.shape[1],) + shape, np.float32)
        for j, (a, b, c) in enumerate(batch):
            sl = (slice(a, a + tile[0]), slice(b, b + tile[1]), slice(c, c + tile[2]))
            acc[(slice(None),) + sl] += logits[j] * g
            weight[sl] += g
        feats.append(f)
    acc /= weight
    return acc, np.concatenate(feats), len(starts)


# ------------------------------------------------------------------------------------------

def cmd_run(args):
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    tile = manifest["input"]["patch_size"]
    from safetensors.numpy import load_file
    st = load_file(args.bundle / manifest["source_knowledge"]["file"])
    names = manifest["source_knowledge"]["tensors"]
    source = {k: st[v] for k, v in names.items()}
    meta = json.loads(args.input.with_suffix(".json").read_text())
    (z0, z1), (y0, y1), (x0, x1) = meta["valid_zyx"]
    image = np.load(args.input)

    if args.method == "ort":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        session = ort.InferenceSession(str(args.bundle / manifest["inference"]["file"]), so,
                                       providers=["CPUExecutionProvider"])

        def window():
            logits, feats, n = ort_window(session, image, tile)
            return logits, feats, n
        version = f"onnxruntime {ort.__version__}"
    else:
        import torch
        import monai
        from monai.inferers import sliding_window_inference
        from asfda_tools.unet import UNet3D
        torch.set_num_threads(THREADS)
        levels, base, maxc = args.arch
        model = UNet3D(1, len(manifest["classes"]), base_channels=base, levels=levels, max_channels=maxc)
        model.load_state_dict(load_weights(args.weights))
        model.eval()
        x = torch.from_numpy(image)[None]

        def window():
            feats = []
            calls = [0]

            def predictor(t):
                logits, f = model(t)
                feats.append(f)
                calls[0] += t.shape[0]
                return logits
            with torch.inference_mode():
                out = sliding_window_inference(x, roi_size=tile, sw_batch_size=TILES_PER_BATCH,
                                               predictor=predictor, overlap=OVERLAP, mode="gaussian",
                                               sigma_scale=SIGMA_SCALE)
            return out[0].numpy(), torch.cat(feats).numpy(), calls[0]
        version = f"monai {monai.__version__}, torch {torch.__version__}"

    def once():
        t0 = time.perf_counter()
        logits, feats, n = window()
        t1 = time.perf_counter()
        probs = softmax0(logits[:, z0:z1, y0:y1, x0:x1])
        t2 = time.perf_counter()
        score = score_numpy(probs, feats, source)
        t3 = time.perf_counter()
        return t3 - t0, {"sliding_window": t1 - t0, "softmax": t2 - t1, "score": t3 - t2}, n, score

    rss_load = peak_rss_mib("VmRSS:")
    warm, _, tiles, score = once()
    times, profiles = [], []
    for _ in range(args.repeats):
        t, prof, _, _ = once()
        times.append(t)
        profiles.append(prof)
    med = float(np.median(times))
    prof = min(profiles, key=lambda p: abs(sum(p.values()) - med))
    print("RESULT " + json.dumps({
        "method": args.method, "median_s": round(med, 4), "times_s": [round(t, 4) for t in times],
        "warmup_s": round(warm, 4), "tiles": tiles, "profile_s": {k: round(v, 4) for k, v in prof.items()},
        "rss_after_load_mib": round(rss_load, 1), "peak_rss_mib": round(peak_rss_mib(), 1), "version": version, "score": score}), flush=True)


def cmd_make_inputs(args):
    import nibabel as nib
    import torch
    from scipy import ndimage
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # Case 1: a 1 mm brain volume.
    brain = out / "brain_1mm.nii.gz"
    if not brain.exists():
        if ICBM.exists():
            img = nib.load(ICBM)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine), brain)
            print(f"case 1: ICBM152 2009a T1 1 mm {img.shape} -> {brain}")
        else:
            src = sorted((ROOT / ".cache/data/synthetic-v1/t1/test").glob("*_image.nii.gz"))[0]
            img = nib.as_closest_canonical(nib.load(src))
            zooms = np.asarray(img.header.get_zooms()[:3])
            x = ndimage.zoom(np.asarray(img.dataobj, dtype=np.float32), zooms / 1.0, order=1)
            aff = img.affine.copy()
            aff[:3, :3] = aff[:3, :3] / zooms
            nib.save(nib.Nifti1Image(x, aff), brain)
            print(f"case 1: {src.name} resampled to 1 mm {x.shape} -> {brain}")

    # Case 2: an nnU-Net 3d_fullres-like model with random weights and a CT-like volume.
    from asfda_tools.export import export_inference
    from asfda_tools.unet import UNet3D
    from safetensors.numpy import save
    bundle = out / "ct_unet"
    weights = out / "ct_unet_weights.pt"
    ct = out / "ct.nii"
    params = json.dumps({"dims": args.ct_dims, "patch": args.ct_patch, "levels": args.ct_levels})
    stamp = out / "ct_params.json"
    if not stamp.exists() or stamp.read_text() != params:  # regenerate case 2 when its parameters change
        import shutil
        shutil.rmtree(bundle, ignore_errors=True)
        ct.unlink(missing_ok=True)
        stamp.write_text(params)
    if not (bundle / "manifest.json").exists():
        bundle.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        levels, base, maxc = args.ct_levels, 32, 320
        model = UNet3D(1, 4, base_channels=base, levels=levels, max_channels=maxc).eval()
        torch.save(model.state_dict(), weights)
        t = time.time()
        export_inference(model, bundle / "model.onnx")
        print(f"case 2: exported UNet3D(levels={levels}, base 32, max 320) in {time.time() - t:.0f} s")
        f = model.feature_channels
        rng = np.random.default_rng(0)
        anchors = rng.standard_normal((8, f)).astype(np.float32)
        anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
        (bundle / "source_knowledge.safetensors").write_bytes(save({
            "feature_mean": rng.standard_normal(f).astype(np.float32) * 0.1,
            "feature_var": rng.uniform(0.01, 0.1, f).astype(np.float32),
            "anchors": anchors}))
        manifest = json.loads((ROOT / "models/demo_brain_unet/manifest.json").read_text())
        manifest["name"] = "bench-ct-unet-random"
        manifest["classes"] = ["background", "organ_a", "organ_b", "organ_c"]
        manifest["input"].update({"patch_size": [args.ct_patch] * 3, "size_divisible_by": model.size_divisible_by,
                                  "spacing_mm": [1.5, 1.5, 1.5],
                                  "normalization": {"kind": "ct_window", "lower": -1000.0, "upper": 1000.0,
                                                    "mean": 0.0, "std": 500.0}})
        manifest["inference"]["feature_channels"] = f
        manifest["training"] = None
        manifest["source_knowledge"] = {"file": "source_knowledge.safetensors",
                                        "tensors": {"mean": "feature_mean", "var": "feature_var",
                                                    "anchors": "anchors"},
                                        "k": 8, "tiles": 0, "volumes": 0}
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if not ct.exists():
        dims = args.ct_dims
        sp = (0.8, 0.8, 2.5)
        rng = np.random.default_rng(1)
        gx, gy, gz = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(dims, sp)], indexing="ij")
        body = (gx / (0.45 * dims[0] * sp[0])) ** 2 + (gy / (0.35 * dims[1] * sp[1])) ** 2 < 1
        bone = ((gx / 15) ** 2 + ((gy + 0.2 * dims[1] * sp[1]) / 15) ** 2) < 1
        organ = ((gx - 30) / 60) ** 2 + ((gy) / 45) ** 2 + (gz / 80) ** 2 < 1
        vol = np.full(dims, -1000, np.int16)
        vol[body] = 20
        vol[organ & body] = 60
        vol[bone & body] = 700
        vol = (vol + rng.normal(0, 15, dims)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([*sp, 1.0])), ct)
        print(f"case 2: synthetic CT {dims} at {sp} mm (int16) -> {ct}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--method", choices=["monai", "ort"], required=True)
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--input", type=Path, required=True)
    r.add_argument("--weights", type=Path)
    r.add_argument("--arch", type=int, nargs=3, default=[4, 16, 64], metavar=("LEVELS", "BASE", "MAX"))
    r.add_argument("--repeats", type=int, default=3)
    m = sub.add_parser("make-inputs")
    m.add_argument("--out", type=Path, default=ROOT / ".cache/bench")
    m.add_argument("--ct-dims", type=int, nargs=3, default=[350, 350, 114])
    m.add_argument("--ct-patch", type=int, default=128)
    m.add_argument("--ct-levels", type=int, default=6)
    args = ap.parse_args()
    {"run": cmd_run, "make-inputs": cmd_make_inputs}[args.cmd](args)


if __name__ == "__main__":
    main()
