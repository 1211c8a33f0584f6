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

Runs fine-tuned with several patch-sampling seeds per selection (``--ft-seeds``, field
``ft_seed``) are averaged per selection first, so n counts selection seeds everywhere.

Sites whose runs record every test volume's kind (the heterogeneous hospital, hetero-v1) also get
the paired statistics of issue 17: for each method, budget and seed, the difference of its Dice to
foreground-aware random's and to random's at the same seed, with the mean over seeds and a 95%
bootstrap confidence interval (seeds resampled with replacement, 10,000 times, percentile
interval, fixed RNG seed); Dice per kind of test volume; and the kinds each method picked.
``--hetero-png`` plots Dice against budget with the bootstrap bands and the per-kind Dice.
"""
from __future__ import annotations

import argparse
import json
import random
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
              recipe(r) if r["method"] != "none" else None, r.get("ft_seed")): r for r in runs}
    return per_selection(list(keyed.values()))


def per_selection(runs):
    """One record per selection: runs that differ only in their fine-tuning seed are averaged
    (Dice, per-class Dice and every test volume's Dice)."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["site"], r["method"], r["budget"], r["seed"], r["pseudo"],
                recipe(r) if r["method"] != "none" else None)].append(r)
    out = []
    for rs in groups.values():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        merged = dict(rs[0])
        merged["ft_runs"] = len(rs)
        merged["dice_mean"] = statistics.fmean(r["dice_mean"] for r in rs)
        merged["dice_per_class"] = [statistics.fmean(c) for c in zip(*(r["dice_per_class"] for r in rs))]
        if rs[0].get("test"):
            merged["test"] = [dict(t, dice_per_class=[statistics.fmean(c) for c in zip(*(r["test"][i]["dice_per_class"] for r in rs))])
                              for i, t in enumerate(rs[0]["test"])]
        out.append(merged)
    return out


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


BOOTSTRAP = 10_000
KIND_ORDER = ["routine", "pd", "thick", "bias_noise", "motion", "flair"]


def foreground(dice_per_class) -> float:
    return statistics.fmean(dice_per_class[1:])


def bootstrap_ci(values, n=BOOTSTRAP, seed=0):
    """Mean and 95% percentile bootstrap interval of the mean (values resampled with replacement)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n))
    return m, means[int(0.025 * n)], means[int(0.975 * n) - 1]


def kinds_of(rs):
    seen = {t["kind"] for r in rs for t in r.get("test", [])} | {k for r in rs for k in r.get("pick_kinds", [])}
    return [k for k in KIND_ORDER if k in seen] + sorted(seen - set(KIND_ORDER))


def per_kind(r) -> dict:
    """Mean foreground Dice of a run's test volumes, per kind."""
    by = defaultdict(list)
    for t in r.get("test", []):
        by[t["kind"]].append(foreground(t["dice_per_class"]))
    return {k: statistics.fmean(v) for k, v in by.items()}


def hetero_tables(runs) -> str:
    """Paired differences with bootstrap CIs, per-kind Dice and the picks' kinds, for every site
    whose runs record per-volume test Dice with kinds."""
    out = []
    for site in sorted({r["site"] for r in runs if r.get("test")}):
        rs = [r for r in runs if r["site"] == site and r["pseudo"] == "reliable" and r["method"] != "none"]
        base = [r for r in runs if r["site"] == site and r["method"] == "none"]
        budgets = sorted({r["budget"] for r in rs})
        methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rs)]
        dice = {(r["method"], r["budget"], r["seed"]): r for r in rs}
        seeds = sorted({r["seed"] for r in rs})
        example = rs[0] if rs else None
        out.append(f"\n### Heterogeneous site `{site}`: paired statistics\n")
        if example:
            ft = max(r.get("ft_runs", 1) for r in rs)
            out.append(f"Fine-tuning: {example['steps']} steps of batch {example['batch']}, patch {example['patch']}^3, "
                       f"lr {example['lr']:g}; {ft} fine-tuning seed(s) per selection; {example['test_volumes']} test volumes; "
                       f"selection seeds {', '.join(map(str, seeds))}.")
        if base:
            out.append(f"Unadapted model: mean foreground Dice {base[0]['dice_mean']:.3f}.")
        out.append("\nMean foreground Dice over seeds with its 95% bootstrap interval:\n")
        out.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
        out.append("|---|" + "---:|" * len(budgets))
        for m in methods:
            cells = []
            for b in budgets:
                v = [dice[m, b, s]["dice_mean"] for s in seeds if (m, b, s) in dice]
                cells.append("–" if not v else "{:.3f} [{:.3f}, {:.3f}] (n={})".format(*bootstrap_ci(v), len(v)))
            out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        for ref in ("foreground_random", "random"):
            if ref not in methods:
                continue
            out.append(f"\nPaired difference to {LABELS[ref]} (same seeds; Dice points x 100, mean [95% bootstrap CI]; "
                       "**bold** where the interval is above 0):\n")
            out.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
            out.append("|---|" + "---:|" * len(budgets))
            for m in methods:
                if m == ref:
                    continue
                cells = []
                for b in budgets:
                    d = [100 * (dice[m, b, s]["dice_mean"] - dice[ref, b, s]["dice_mean"])
                         for s in seeds if (m, b, s) in dice and (ref, b, s) in dice]
                    if not d:
                        cells.append("–")
                        continue
                    mean, lo, hi = bootstrap_ci(d)
                    cell = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(d)})"
                    cells.append(f"**{cell}**" if lo > 0 and len(d) > 1 else cell)
                out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        kinds = kinds_of([r for r in runs if r["site"] == site])
        counts = defaultdict(int)
        for t in (base[0] if base else rs[0]).get("test", []):
            counts[t["kind"]] += 1
        for b in budgets:
            out.append(f"\nForeground Dice per kind of test volume, budget {b} (mean over seeds; test volumes per kind in the header):\n")
            out.append("| method | all | " + " | ".join(f"{k} ({counts[k]})" for k in kinds) + " |")
            out.append("|---|---:|" + "---:|" * len(kinds))
            rows = [("unadapted", base[:1])] if base else []
            rows += [(LABELS.get(m, m), [dice[m, b, s] for s in seeds if (m, b, s) in dice]) for m in methods]
            for name, group in rows:
                if not group:
                    continue
                pk = [per_kind(r) for r in group]
                cells = [f"{statistics.fmean(p[k] for p in pk if k in p):.3f}" if any(k in p for p in pk) else "–" for k in kinds]
                out.append(f"| {name} | {statistics.fmean(r['dice_mean'] for r in group):.3f} | " + " | ".join(cells) + " |")
        out.append("\nKinds picked (counts over all seeds; the deterministic methods pick the same volumes for every seed) "
                   "and the mean number of distinct kinds per selection:\n")
        out.append("| method | budget | " + " | ".join(kinds) + " | kinds per selection |")
        out.append("|---|---:|" + "---:|" * len(kinds) + "---:|")
        for m in methods:
            for b in budgets:
                group = [dice[m, b, s] for s in seeds if (m, b, s) in dice and dice[m, b, s].get("pick_kinds")]
                if not group:
                    continue
                c = defaultdict(int)
                for r in group:
                    for k in r["pick_kinds"]:
                        c[k] += 1
                distinct = statistics.fmean(len(set(r["pick_kinds"])) for r in group)
                out.append(f"| {LABELS.get(m, m)} | {b} | " + " | ".join(str(c[k]) for k in kinds) + f" | {distinct:.1f} |")
        out.append("\nEach pick, per seed (id: kind):\n")
        for m in methods:
            for b in budgets:
                for s in seeds:
                    r = dice.get((m, b, s))
                    if r and r.get("pick_kinds"):
                        picks = ", ".join(f"{i.split('_')[-1]}: {k}" for i, k in zip(r["picks"], r["pick_kinds"]))
                        out.append(f"- {LABELS.get(m, m)}, budget {b}, seed {s}: {picks}")
    return "\n".join(out) + "\n"


def picks_table(picks, pool_kinds=None) -> str:
    """The kinds each method picks (al_benchmark --picks-only: selection without fine-tuning),
    summed over seeds, per site, method and budget, and the distinct kinds per selection."""
    out = []
    for site in sorted({p["site"] for p in picks}):
        ps = [p for p in picks if p["site"] == site]
        kinds = kinds_of(ps)
        seeds = sorted({p["seed"] for p in ps})
        out.append(f"\n### Kinds picked on `{site}`, selection only (counts over seeds {', '.join(map(str, seeds))})\n")
        out.append("| method | budget | " + " | ".join(kinds) + " | kinds per selection |")
        out.append("|---|---:|" + "---:|" * len(kinds) + "---:|")
        if pool_kinds:
            out.append("| *pool* | – | " + " | ".join(str(pool_kinds.get(k, 0)) for k in kinds) + " | – |")
        order = {m: i for i, m in enumerate(METHOD_ORDER)}
        for m in sorted({p["method"] for p in ps}, key=lambda m: order.get(m, 99)):
            for b in sorted({p["budget"] for p in ps}):
                group = [p for p in ps if p["method"] == m and p["budget"] == b]
                if not group:
                    continue
                c = defaultdict(int)
                for p in group:
                    for k in p["pick_kinds"]:
                        c[k] += 1
                distinct = statistics.fmean(len(set(p["pick_kinds"])) for p in group)
                name = LABELS.get(m, m).replace(" + SSFT", "")
                out.append(f"| {name} | {b} | " + " | ".join(str(c[k]) for k in kinds) + f" | {distinct:.1f} |")
    return "\n".join(out) + "\n"


def hetero_plot(runs, png: Path):
    """Per heterogeneous site: Dice against budget with 95% bootstrap bands, and per-kind Dice
    at each budget (grouped bars, one group per kind)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({r["site"] for r in runs if r.get("test")})
    budgets_of = {site: sorted({r["budget"] for r in runs if r["site"] == site and r["method"] != "none"}) for site in sites}
    cols = 1 + max(len(b) for b in budgets_of.values())
    fig, axes = plt.subplots(len(sites), cols, figsize=(4.6 * cols, 4.2 * len(sites)), squeeze=False)
    for row, site in zip(axes, sites):
        rs = [r for r in runs if r["site"] == site and r["pseudo"] == "reliable" and r["method"] != "none"]
        base = [r for r in runs if r["site"] == site and r["method"] == "none"]
        budgets = budgets_of[site]
        methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rs)]
        ax = row[0]
        for m in methods:
            pts = [(b, *bootstrap_ci(v)) for b in budgets
                   if (v := [r["dice_mean"] for r in rs if r["method"] == m and r["budget"] == b])]
            if pts:
                xs, ms, los, his = zip(*pts)
                line, = ax.plot(xs, ms, marker="o", label=LABELS[m], linewidth=2.5 if m == "asfda" else 1.2)
                ax.fill_between(xs, los, his, alpha=0.15, color=line.get_color())
        if base:
            ax.axhline(base[0]["dice_mean"], color="grey", linestyle="--", label="unadapted")
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_title(f"{site}: Dice vs budget (95% bootstrap band)", fontsize=9)
        ax.set_xlabel("annotation budget (volumes)")
        ax.set_ylabel("mean foreground Dice, test volumes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        kinds = kinds_of([r for r in runs if r["site"] == site])
        width = 0.8 / max(1, len(methods) + bool(base))
        for ax, b in zip(row[1:], budgets):
            groups = ([("unadapted", base[:1])] if base else []) + [
                (LABELS[m], [r for r in rs if r["method"] == m and r["budget"] == b]) for m in methods]
            for i, (name, group) in enumerate(groups):
                pk = [per_kind(r) for r in group]
                ys = [statistics.fmean(p[k] for p in pk if k in p) if any(k in p for p in pk) else 0.0 for k in kinds]
                ax.bar([j + i * width for j in range(len(kinds))], ys, width, label=name,
                       color="grey" if name == "unadapted" else None)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))], kinds, fontsize=8, rotation=20)
            ax.set_ylim(0, 1)
            ax.set_title(f"{site}: Dice per kind, budget {b}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        for ax in row[1 + len(budgets):]:
            ax.axis("off")
        if len(row) > 1:
            row[1].legend(fontsize=6)
    fig.suptitle("asfda active-learning benchmark, heterogeneous hospital\n(synthetic derivatives of real "
                 "anatomy; simulated acquisition kinds and lesions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


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
    ap.add_argument("runs", type=Path, nargs="*", help="runs.jsonl files, read as one")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--recipe", help="LR,STEPS,BATCH: report only the runs of this recipe")
    ap.add_argument("--hetero-png", type=Path, help="plot of the heterogeneous sites (bands, per-kind Dice)")
    ap.add_argument("--picks", type=Path, help="picks.jsonl of al_benchmark --picks-only: the kinds each method picks")
    ap.add_argument("--manifest", type=Path, help="the data folder's manifest.json: the pool's kinds beside --picks")
    a = ap.parse_args()
    runs = load(a.runs) if a.runs else []
    text = ""
    if a.picks:
        picks = [json.loads(line) for line in a.picks.read_text().splitlines() if line.strip()]
        pool = None
        if a.manifest:
            pool = defaultdict(int)
            for v in json.loads(a.manifest.read_text())["volumes"]:
                if v.get("split") == "pool" and v["site"] in {p["site"] for p in picks}:
                    pool[v["kind"]] += 1
        text += picks_table(picks, pool)
    if len({recipe(r) for r in runs if r["method"] != "none"}) > 1:
        text += "\n### Fine-tuning recipes\n\n" + recipes(runs)
    if a.recipe:
        lr, steps, batch = a.recipe.split(",")
        want = (float(lr), int(steps), int(batch))
        runs = [r for r in runs if r["method"] == "none" or recipe(r) == want]
    text += tables(runs)
    if any(r.get("test") for r in runs):
        text += hetero_tables(runs)
    print(text)
    if a.md:
        a.md.write_text(text)
    if a.png:
        plot(runs, a.png)
    if a.hetero_png:
        hetero_plot(runs, a.hetero_png)


if __name__ == "__main__":
    main()
