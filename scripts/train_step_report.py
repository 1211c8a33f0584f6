#!/usr/bin/env python3
"""Table (and optionally a plot) of scripts/bench_train_step.sh's measurements.

Reads one line per patch size on stdin, `LOAD_BEFORE|LOAD_AFTER|ORT_RESULT|TORCH_RESULT`, where
the RESULT parts are the `key=value` lines of examples/train_step_time.rs and
scripts/train_step_time.py. Prints the markdown table; with `--png FILE` also draws seconds per
step and peak RSS, ORT vs PyTorch, per patch size (needs matplotlib:
scripts/requirements-bench.txt).
"""
import argparse
import sys


def parse(s):
    return dict(kv.split("=", 1) for kv in s.split())


def rows(lines):
    for line in lines:
        before, after, o, t = line.rstrip("\n").split("|")
        o, t = parse(o), parse(t)
        lo = [float(v) for v in o["losses"].split(",")]
        lt = [float(v) for v in t["losses"].split(",")]
        yield {
            "size": int(o["size"]), "n": o["n"], "threads": o["threads"],
            "ort_s": float(o["median_s"]), "torch_s": float(t["median_s"]),
            "ort_mib": float(o["peak_rss_mib"]), "torch_mib": float(t["peak_rss_mib"]),
            "loss_diff": max(abs(a - b) / abs(b) for a, b in zip(lo, lt)),
            "load": f"{before} / {after}",
        }


def table(rs):
    out = ["| patch | batch | threads | asfda ORT s/step | PyTorch eager s/step | ratio ORT/PyTorch "
           "| peak RSS MiB ORT / PyTorch | max rel. loss diff | 1-min load before / after |",
           "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rs:
        out.append(f"| {r['size']}^3 | {r['n']} | {r['threads']} | {r['ort_s']:.3f} | {r['torch_s']:.3f} "
                   f"| {r['ort_s'] / r['torch_s']:.2f} | {r['ort_mib']:.0f} / {r['torch_mib']:.0f} "
                   f"| {r['loss_diff']:.1e} | {r['load']} |")
    return "\n".join(out)


def plot(rs, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['size']}³" for r in rs]
    x = range(len(rs))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in [(a, "s", "seconds per step (median)"), (b, "mib", "peak RSS (MiB)")]:
        ort = [r[f"ort_{key}"] for r in rs]
        torch = [r[f"torch_{key}"] for r in rs]
        ax.bar([i - 0.2 for i in x], ort, 0.4, label="asfda (ONNX Runtime CPU)")
        ax.bar([i + 0.2 for i in x], torch, 0.4, label="PyTorch eager (oneDNN)")
        for i, (o, t) in enumerate(zip(ort, torch)):
            ax.annotate(f"{o / t:.2f}x", (i, max(o, t)), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(x), labels)
        ax.set_xlabel(f"patch (batch {rs[0]['n']}, {rs[0]['threads']} threads)")
        ax.set_title(title)
        ax.margins(y=0.15)
    handles, names = a.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=9)
    fig.suptitle("One fine-tuning step of the demo U-Net (forward + DiceCE + backward + AdamW);"
                 " labels: ORT / PyTorch", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", help="also write this plot")
    args = ap.parse_args()
    rs = list(rows(sys.stdin))
    print(table(rs))
    if args.png:
        plot(rs, args.png)


if __name__ == "__main__":
    main()
