"""scripts/al_report.py, which turns the active-learning benchmark's runs into the committed
tables: runs of different fine-tuning recipes are kept apart, compared in the recipe table and
selected with --recipe."""
import json
import subprocess
import sys


def run(site, method, seed, dice, *, lr=0.001, steps=30, batch=2, budget=4):
    return {"site": site, "method": method, "budget": budget, "seed": seed, "pseudo": "reliable",
            "min_dice": 0.5, "steps": steps, "batch": batch, "patch": 32, "lr": lr,
            "pseudo_volumes": 2, "labeler_dice": 0.1, "pseudo_trusted": False, "pseudo_patches": 0,
            "dice_mean": dice}


def report(root, tmp_path, runs, *args):
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    res = subprocess.run([sys.executable, str(root / "scripts/al_report.py"), str(path), *args],
                         capture_output=True, text=True, check=True)
    return res.stdout


def rows(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_recipes_are_kept_apart_and_selectable(root, tmp_path):
    runs = [run("pd", "asfda", s, d) for s, d in enumerate([0.5, 0.6, 0.7])]
    runs += [run("pd", "asfda", s, d, batch=4) for s, d in enumerate([0.8, 0.8, 0.9])]
    runs += [run("pd", "random", s, 0.4, batch=4) for s in range(3)]
    text = report(root, tmp_path, runs)
    # random ran with one recipe only: nothing to compare.
    assert rows(text, "| pd |") == [
        "| pd | reliable | ASFDA + SSFT | 4 | 0.600 ± 0.100 (n=3) | **0.833 ± 0.058 (n=3)** |"], text
    assert "| lr 0.001, 30 x 2 patches | lr 0.001, 30 x 4 patches |" in text

    only = report(root, tmp_path, runs, "--recipe", "0.001,30,4")
    assert "Fine-tuning recipes" in only
    assert rows(only, "| ASFDA + SSFT |") == ["| ASFDA + SSFT | **0.833 ± 0.058 (n=3)** |"], only
    assert rows(only, "| random |") == ["| random | 0.400 ± 0.000 (n=3) |"], only


def test_one_recipe_has_no_recipe_table(root, tmp_path):
    runs = [run("thick", "asfda", s, 0.8) for s in range(2)]
    text = report(root, tmp_path, runs)
    assert "Fine-tuning recipes" not in text
    assert rows(text, "| ASFDA + SSFT |") == ["| ASFDA + SSFT | **0.800 ± 0.000 (n=2)** |"]


# --- the heterogeneous hospital (issue 17): paired differences, per-kind Dice, picks' kinds -----

def hetero_run(method, seed, per_kind, *, budget=2, ft_seed=None, picks=("routine", "motion")):
    """A run whose test volumes are one 'routine' and one 'motion' volume with the given
    foreground Dice (all three foreground classes equal)."""
    test = [{"id": f"hetero_test_00{i}", "kind": k, "dice_per_class": [0.99] + [d] * 3}
            for i, (k, d) in enumerate(per_kind.items())]
    r = run("hetero", method, seed, sum(per_kind.values()) / len(per_kind), budget=budget)
    r.update(test=test, dice_per_class=[0.99] + [r["dice_mean"]] * 3, test_volumes=len(test),
             picks=[f"hetero_pool_00{i}" for i in range(len(picks))], pick_kinds=list(picks))
    if ft_seed is not None:
        r["ft_seed"] = ft_seed
    return r


def test_hetero_paired_differences_per_kind_dice_and_picks(root, tmp_path):
    runs = []
    for s in range(5):
        fg = 0.60 + 0.02 * s  # a seed effect shared by the methods: pairing removes it
        runs.append(hetero_run("foreground_random", s, {"routine": fg, "motion": fg}, picks=("routine", "routine")))
        runs.append(hetero_run("random", s, {"routine": fg + 0.01, "motion": fg - 0.01}, picks=("routine", "pd")))
        # ASFDA: fine-tuned twice per selection (0.04 and 0.06 above foreground random: mean 0.05)
        runs.append(hetero_run("asfda", s, {"routine": fg + 0.04, "motion": fg + 0.04}, ft_seed=1000 * s + 1))
        runs.append(hetero_run("asfda", s, {"routine": fg + 0.06, "motion": fg + 0.06}, ft_seed=1000 * s + 2))
    text = report(root, tmp_path, runs)
    assert "Heterogeneous site `hetero`" in text
    # The ordinary grid counts selections (n=5), not fine-tuning runs (10).
    assert rows(text, "| ASFDA + SSFT | **0.690 ± 0.032 (n=5)** |"), text
    # Every seed's difference is +5 points: the interval is [+5, +5] and above 0 (bold).
    assert "| ASFDA + SSFT | **+5.00 [+5.00, +5.00] (n=5)** |" in text, text
    # random is 0 on average against foreground random, and its interval contains 0 (not bold).
    assert "| random | +0.00 [+0.00, +0.00] (n=5) |" in text, text
    # Per kind (columns: every kind tested or picked; pd was only picked): random is 1 point
    # better on routine and 1 point worse on motion.
    assert "| method | all | routine (1) | pd (0) | motion (1) |" in text, text
    assert "| random | 0.640 | 0.650 | – | 0.630 |" in text, text
    # The picks' kinds: counts over the 5 seeds, and distinct kinds per selection.
    assert "| foreground-aware random | 2 | 10 | 0 | 0 | 1.0 |" in text, text
    assert "| random | 2 | 5 | 5 | 0 | 2.0 |" in text, text
    assert "| ASFDA + SSFT | 2 | 5 | 0 | 5 | 2.0 |" in text, text
    assert "- ASFDA + SSFT, budget 2, seed 0: 000: routine, 001: motion" in text


def test_hetero_bootstrap_interval_brackets_the_mean_and_is_seeded(root):
    import importlib.util
    spec = importlib.util.spec_from_file_location("al_report", root / "scripts/al_report.py")
    al_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(al_report)
    values = [1.0, -0.5, 2.0, 0.5, 3.0]
    mean, lo, hi = al_report.bootstrap_ci(values)
    assert mean == 1.2 and min(values) <= lo < mean < hi <= max(values)
    assert al_report.bootstrap_ci(values) == (mean, lo, hi)  # fixed RNG seed: reproducible
    assert al_report.bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)


def test_picks_only_table_counts_kinds_over_seeds(root, tmp_path):
    picks = tmp_path / "picks.jsonl"
    lines = [{"site": "hetero", "method": "asfda", "budget": 2, "seed": s, "picks": ["a", "b"],
              "pick_kinds": ["flair", "routine"]} for s in range(3)]
    lines += [{"site": "hetero", "method": "random", "budget": 2, "seed": s, "picks": ["c", "d"],
               "pick_kinds": ["routine", "routine" if s else "pd"]} for s in range(3)]
    picks.write_text("".join(json.dumps(p) + "\n" for p in lines))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"volumes": [
        {"site": "hetero", "split": "pool", "kind": k} for k in ["routine"] * 3 + ["pd", "flair"]]
        + [{"site": "hetero", "split": "test", "kind": "pd"}]}))
    res = subprocess.run([sys.executable, str(root / "scripts/al_report.py"), "--picks", str(picks),
                          "--manifest", str(manifest)], capture_output=True, text=True, check=True)
    text = res.stdout
    assert "| method | budget | routine | pd | flair | kinds per selection |" in text, text
    assert "| *pool* | – | 3 | 1 | 1 | – |" in text, text  # pool volumes only, not test
    assert "| ASFDA | 2 | 3 | 0 | 3 | 2.0 |" in text, text
    assert "| random | 2 | 5 | 1 | 0 | 1.3 |" in text, text
