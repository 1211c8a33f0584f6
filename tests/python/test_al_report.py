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
