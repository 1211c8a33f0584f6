#!/usr/bin/env python3
"""Tables and plot of the active-learning benchmark (examples/al_benchmark.rs).

    scripts/al_report.py RUNS.jsonl [MORE.jsonl ...] --md TABLES.md --png docs/al-benchmark.png

Reads one run per line; prints and writes markdown tables of mean +- sd Dice (over seeds) per
site, budget and method, the SSFT ablation, and a plot of Dice against budget per site.

Runs with pseudo-labels made before the pseudo-label check existed, or with it off
(``min_dice`` 0), are reported as the "_unchecked" variants of their ``pseudo`` setting.

When the runs use more than one fine-tuning recipe (learning rate, steps, batch), a table first
compares the recipes wherever the same runs were made with several; ``--recipe LR,STEPS,BATCH``
keeps one recipe for the other tables.
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
PSEUDO = {"reliable": "SSFT (reliable pseudo-labels, checked)",
          "reliable_unchecked": "SSFT, without the check",
          "reliable_refresh": "SSFT, refreshed with the fine-tuned weights every 10 steps, checked",
          "reliable_refresh_unchecked": "SSFT, refreshed every 10 steps, without the check",
          "all": "all pseudo-labels, checked",
          "all_unchecked": "all pseudo-labels, without the check",
          "none": "no pseudo-labels"}


def mean_sd(values):
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, sd


def fmt(values):
    m, sd = mean_sd(values)
    return f"{m:.3f} ± {sd:.3f} (n={len(values)})"


def recipe(r) -> tuple:
    """The fine-tuning settings a run shares with the runs it is compared with."""
    return (r["lr"], r["steps"], r["batch"])


def load(paths: list[Path]):
    runs = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    for r in runs:
        if r["pseudo"] != "none" and not r.get("min_dice"):
            r["pseudo"] += "_unchecked"
    # Only the last record of a key counts (a rerun replaces an earlier one). The unadapted
    # baseline (no step) belongs to every recipe.
    keyed = {(r["site"], r["method"], r["budget"], r["seed"], r["pseudo"],
              recipe(r) if r["method"] != "none" else None): r for r in runs}
    return list(keyed.values())


def recipes(runs) -> str:
    """Dice per fine-tuning recipe (columns) for each site, pseudo-label setting, method and
    budget run with more than one recipe (rows), over seeds; the best mean of a row in bold."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["method"] != "none":
            groups[(r["site"], r["pseudo"], r["method"], r["budget"])][recipe(r)].append(r["dice_mean"])
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    cols = sorted({c for v in groups.values() for c in v}, key=lambda c: (c[1] * c[2], c[0], c[2]))
    out = ["| site | pseudo-labels | method | budget | "
           + " | ".join(f"lr {lr:g}, {steps} x {batch} patches" for lr, steps, batch in cols) + " |",
           "|---|---|---|---:|" + "---:|" * len(cols)]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for (site, pseudo, m, b), by in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99), kv[0][3])):
        best = max(by, key=lambda c: statistics.fmean(by[c]))
        cells = [("**" + fmt(by[c]) + "**" if c == best else fmt(by[c])) if c in by else "–" for c in cols]
        out.append(f"| {site} | {pseudo} | {LABELS.get(m, m)} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def tables(runs) -> str:
    out = []
    sites = sorted({r["site"] for r in runs})
    for site in sites:
        rs = [r for r in runs if r["site"] == site]
        base = [r["dice_mean"] for r in rs if r["method"] == "none"]
        example = next((r for r in rs if r["method"] != "none"), None)
        if example is None:  # only the unadapted baseline (e.g. another recipe's site)
            continue
        out.append(f"\n### Site `{site}`\n")
        if base:
            out.append(f"Unadapted model: mean foreground Dice {base[0]:.3f}.")
        if example:
            out.append(f"Fine-tuning: {example['steps']} steps of batch {example['batch']}, patch {example['patch']}^3, lr {example['lr']:g}.\n")
        out.extend(grid(rs, "reliable"))
        if any(r["pseudo"] == "reliable_unchecked" for r in rs):
            out.append("\nThe same grid with the pseudo-labels used without the check (the default before it):\n")
            out.extend(grid(rs, "reliable_unchecked"))
        abl = [r for r in rs if r["method"] == "asfda"]
        abl_budgets = sorted({r["budget"] for r in abl if r["pseudo"] not in ("reliable", "reliable_unchecked")})
        for b in abl_budgets:
            out.append(f"\nSSFT ablation (ASFDA selection, budget {b}):\n")
            drawn_of = " / ".join(str(n) for n in sorted({r["steps"] * r["batch"] for r in abl if r["budget"] == b}))
            out.append("| pseudo-labels | Dice | pseudo-labeled volumes | labelling model's Dice on the picks "
                       f"(last check) | pseudo patches drawn of {drawn_of} (steps x batch) |")
            out.append("|---|---:|---:|---:|---:|")
            for p in PSEUDO:
                vals = [r for r in abl if r["budget"] == b and r["pseudo"] == p]
                if vals:
                    n = statistics.fmean([r["pseudo_volumes"] for r in vals])
                    checks = [r["labeler_dice"] for r in vals if r.get("labeler_dice") is not None]
                    check = f"{statistics.fmean(checks):.3f}" if checks else "–"
                    patches = [r["pseudo_patches"] for r in vals if r.get("pseudo_patches") is not None]
                    drawn = f"{statistics.fmean(patches):.1f}" if patches else "–"
                    out.append(f"| {PSEUDO[p]} | {fmt([r['dice_mean'] for r in vals])} | {n:.1f} | {check} | {drawn} |")
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


def grid(rs, pseudo: str) -> list[str]:
    """Mean +- sd Dice per method (rows) and budget (columns) for one pseudo-label setting; the
    best mean of each budget in bold."""
    out = []
    budgets = sorted({r["budget"] for r in rs if r["method"] != "none"})
    methods = [m for m in METHOD_ORDER if any(r["method"] == m and r["pseudo"] == pseudo for r in rs)]
    values = {(m, b): [r["dice_mean"] for r in rs if r["method"] == m and r["budget"] == b and r["pseudo"] == pseudo]
              for m in methods for b in budgets}
    out.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    out.append("|---|" + "---:|" * len(budgets))
    best = {}
    for b in budgets:
        ms = {m: statistics.fmean(values[m, b]) for m in methods if values[m, b]}
        best[b] = max(ms, key=ms.get) if ms else None
    for m in methods:
        cells = []
        for b in budgets:
            cell = fmt(values[m, b]) if values[m, b] else "–"
            cells.append(f"**{cell}**" if values[m, b] and best[b] == m else cell)
        out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return out


def plot(runs, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({r["site"] for r in runs})
    fig, axes = plt.subplots(1, len(sites), figsize=(5.5 * len(sites), 4.2), squeeze=False)
    for ax, site in zip(axes[0], sites):
        rs = [r for r in runs if r["site"] == site]
        budgets = sorted({r["budget"] for r in rs if r["method"] != "none"})
        # Methods side by side around each budget, so their error bars do not hide each other.
        shift = {m: 0.12 * (i - 2.5) for i, m in enumerate(METHOD_ORDER)}
        for m in METHOD_ORDER:
            pts = []
            for b in budgets:
                vals = [r["dice_mean"] for r in rs if r["method"] == m and r["budget"] == b and r["pseudo"] == "reliable"]
                if vals:
                    pts.append((b + shift[m], *mean_sd(vals)))
            if pts:
                xs, ms, sds = zip(*pts)
                ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=LABELS[m],
                            linewidth=2.5 if m == "asfda" else 1.2)
        # ASFDA's pseudo-labels used without the check (the earlier default), for comparison.
        pts = [(b + 0.12 * 3.5, *mean_sd(v)) for b in budgets
               if (v := [r["dice_mean"] for r in rs
                         if r["method"] == "asfda" and r["budget"] == b and r["pseudo"] == "reliable_unchecked"])]
        if pts:
            xs, ms, sds = zip(*pts)
            ax.errorbar(xs, ms, yerr=sds, marker="x", capsize=3, linestyle=":", color="black",
                        label="ASFDA + SSFT without the check")
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
    ap.add_argument("runs", type=Path, nargs="+", help="runs.jsonl files, read as one")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--recipe", help="LR,STEPS,BATCH: report only the runs of this recipe")
    a = ap.parse_args()
    runs = load(a.runs)
    text = ""
    if len({recipe(r) for r in runs if r["method"] != "none"}) > 1:
        text += "\n### Fine-tuning recipes\n\n" + recipes(runs)
    if a.recipe:
        lr, steps, batch = a.recipe.split(",")
        want = (float(lr), int(steps), int(batch))
        runs = [r for r in runs if r["method"] == "none" or recipe(r) == want]
    text += tables(runs)
    print(text)
    if a.md:
        a.md.write_text(text)
    if a.png:
        plot(runs, a.png)


if __name__ == "__main__":
    main()
