#!/usr/bin/env python3
"""Tables and plot of the active-learning benchmark (examples/al_benchmark.rs).

    scripts/al_report.py RUNS.jsonl --md docs/al-benchmark.md --png docs/al-benchmark.png

Reads one run per line; prints and writes markdown tables of mean +- sd Dice (over seeds) per
site, budget and method, the SSFT ablation, and a plot of Dice against budget per site.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

METHOD_ORDER = ["asfda", "dkd", "entropy", "coreset", "foreground_random", "random"]
LABELS = {"asfda": "ASFDA + SSFT", "random": "random", "foreground_random": "foreground-aware random",
          "entropy": "entropy (ASD only)", "dkd": "DKD only", "coreset": "core-set"}
PSEUDO = {"reliable": "SSFT (reliable pseudo-labels)",
          "reliable_refresh": "SSFT, pseudo-labels refreshed with the fine-tuned weights",
          "all": "all pseudo-labels", "none": "no pseudo-labels"}


def mean_sd(values):
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, sd


def fmt(values):
    m, sd = mean_sd(values)
    return f"{m:.3f} ± {sd:.3f} (n={len(values)})"


def load(path: Path):
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Only the last record of a key counts (a rerun replaces an earlier one).
    keyed = {(r["site"], r["method"], r["budget"], r["seed"], r["pseudo"]): r for r in runs}
    return list(keyed.values())


def tables(runs) -> str:
    out = []
    sites = sorted({r["site"] for r in runs})
    for site in sites:
        rs = [r for r in runs if r["site"] == site]
        base = [r["dice_mean"] for r in rs if r["method"] == "none"]
        example = next((r for r in rs if r["method"] != "none"), None)
        out.append(f"\n### Site `{site}`\n")
        if base:
            out.append(f"Unadapted model: mean foreground Dice {base[0]:.3f}.")
        if example:
            out.append(f"Fine-tuning: {example['steps']} steps, patch {example['patch']}^3, lr {example['lr']:g}.\n")
        budgets = sorted({r["budget"] for r in rs if r["method"] != "none"})
        methods = [m for m in METHOD_ORDER if any(r["method"] == m and r["pseudo"] == "reliable" for r in rs)]
        out.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
        out.append("|---|" + "---:|" * len(budgets))
        best = {}
        for b in budgets:
            ms = {m: statistics.fmean([r["dice_mean"] for r in rs if r["method"] == m and r["budget"] == b
                                       and r["pseudo"] == "reliable"] or [float("nan")]) for m in methods}
            best[b] = max(ms, key=lambda m: ms[m] if ms[m] == ms[m] else -1)
        for m in methods:
            cells = []
            for b in budgets:
                vals = [r["dice_mean"] for r in rs if r["method"] == m and r["budget"] == b and r["pseudo"] == "reliable"]
                cell = fmt(vals) if vals else "–"
                cells.append(f"**{cell}**" if vals and best[b] == m else cell)
            out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        abl = [r for r in rs if r["method"] == "asfda"]
        abl_budgets = sorted({r["budget"] for r in abl if r["pseudo"] != "reliable"})
        for b in abl_budgets:
            out.append(f"\nSSFT ablation (ASFDA selection, budget {b}):\n")
            out.append("| pseudo-labels | Dice | pseudo-labeled volumes |")
            out.append("|---|---:|---:|")
            for p in PSEUDO:
                vals = [r for r in abl if r["budget"] == b and r["pseudo"] == p]
                if vals:
                    n = statistics.fmean([r["pseudo_volumes"] for r in vals])
                    out.append(f"| {PSEUDO[p]} | {fmt([r['dice_mean'] for r in vals])} | {n:.1f} |")
        # Selection alone: every method fine-tuned on its picks' labels only.
        plain = [r for r in rs if r["pseudo"] == "none" and r["method"] != "none"]
        for b in sorted({r["budget"] for r in plain if r["method"] != "asfda"}):
            out.append(f"\nSelection alone, no pseudo-labels (budget {b}):\n")
            out.append("| method | Dice |")
            out.append("|---|---:|")
            for m in METHOD_ORDER:
                vals = [r["dice_mean"] for r in plain if r["method"] == m and r["budget"] == b]
                if vals:
                    out.append(f"| {LABELS.get(m, m).replace(' + SSFT', '')} | {fmt(vals)} |")
    return "\n".join(out) + "\n"


def plot(runs, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({r["site"] for r in runs})
    fig, axes = plt.subplots(1, len(sites), figsize=(5.5 * len(sites), 4.2), squeeze=False)
    for ax, site in zip(axes[0], sites):
        rs = [r for r in runs if r["site"] == site]
        budgets = sorted({r["budget"] for r in rs if r["method"] != "none"})
        for m in METHOD_ORDER:
            pts = []
            for b in budgets:
                vals = [r["dice_mean"] for r in rs if r["method"] == m and r["budget"] == b and r["pseudo"] == "reliable"]
                if vals:
                    pts.append((b, *mean_sd(vals)))
            if pts:
                xs, ms, sds = zip(*pts)
                ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=LABELS[m],
                            linewidth=2.5 if m == "asfda" else 1.2)
        base = [r["dice_mean"] for r in rs if r["method"] == "none"]
        if base:
            ax.axhline(base[0], color="grey", linestyle="--", label="unadapted")
        ax.set_title(f"target site: {site}")
        ax.set_xlabel("annotation budget (volumes)")
        ax.set_ylabel("mean foreground Dice, held-out volumes")
        ax.set_xticks(budgets)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("asfda active-learning benchmark (synthetic derivatives of real anatomy; mean ± sd over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--png", type=Path)
    a = ap.parse_args()
    runs = load(a.runs)
    text = tables(runs)
    print(text)
    if a.md:
        a.md.write_text(text)
    if a.png:
        plot(runs, a.png)


if __name__ == "__main__":
    main()
