"""The wheel a Python user installs (`make wheel`; here from the debug build): in a fresh virtual
environment, `pip install` of the wheel alone, then `import asfda`, the quickstart and the
`asfda` console command work with no environment variables, no source tree on the path and an
empty home (no user cache): ONNX Runtime comes from the `onnxruntime` wheel it depends on, the
demo bundle from the wheel itself."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    made = subprocess.run([str(ROOT / "scripts" / "make_wheel.sh"), "--profile", "debug", "--out", str(work / "dist"),
                           "--python", sys.executable], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    wheel = made.stdout.strip().splitlines()[-1]
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    # numpy and onnxruntime come from PyPI (or pip's cache); the onnxruntime wheel `make ort`
    # downloaded is offered first.
    cache = os.environ.get("ASFDA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "asfda")
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "--find-links", os.path.join(cache, "wheels"), wheel],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    home = work / "home"
    home.mkdir()
    shutil.copy(ROOT / "data" / "anatomical.nii", work / "image.nii")
    # Nothing that points at this tree or a cache: a user's shell after `pip install`.
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return work, wheel, env


def run(work, env, *args):
    res = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


def test_the_wheel_is_tagged_for_its_glibc_and_needs_onnxruntime(venv):
    _, wheel, _ = venv
    assert "-py3-none-manylinux_2_" in os.path.basename(wheel) and wheel.endswith("_x86_64.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read("asfda-0.1.0.dist-info/METADATA").decode() if "asfda-0.1.0.dist-info/METADATA" in names else ""
        mode = z.getinfo("asfda/bin/asfda").external_attr >> 16
    assert "asfda/libasfda.so" in names and "asfda/share/asfda/models/demo_brain_unet/manifest.json" in names
    assert "Requires-Dist: onnxruntime==1.31.1" in meta and mode & 0o111


def test_import_and_the_quickstart_work_from_the_installed_wheel(venv):
    work, _, env = venv
    code = (
        "import json, asfda\n"
        "info = asfda.runtime_info()\n"
        "engine = asfda.Engine(asfda.demo_bundle(), threads=2)\n"
        "vol = asfda.Volume.load('image.nii')\n"
        "score = engine.score('case', vol)\n"
        "labels = engine.segment(vol)\n"
        "print(json.dumps({'file': asfda.__file__, 'lib': asfda.library_path(), 'ort': info['library_path'],\n"
        "  'bundle': asfda.demo_bundle(), 'asd': score.asd, 'classes': [c.name for c in engine.classes],\n"
        "  'fg': float((labels.array() > 0).mean())}))\n"
    )
    out = json.loads(run(work, env, "python", "-c", code))
    site = str(work / "venv")
    assert out["file"].startswith(site) and out["lib"].startswith(site) and out["bundle"].startswith(site)
    assert "/site-packages/onnxruntime/capi/libonnxruntime.so" in out["ort"] and out["ort"].startswith(site)
    assert out["classes"] == ["background", "csf_other", "gm", "wm"] and 0 <= out["asd"] <= 1
    assert 0 < out["fg"] <= 1, out  # nibabel's small anatomical.nii: something is segmented


def test_the_console_command_works_from_the_installed_wheel(venv):
    work, _, env = venv
    assert run(work, env, "asfda", "--version").strip() == "asfda 0.1.0"
    info = json.loads(run(work, env, "asfda", "info", "--json"))
    assert info["library_source"] == "asfda_env" and "/site-packages/onnxruntime/capi/" in info["library_path"]
    out = json.loads(run(work, env, "asfda", "segment", "--threads", "2", "image.nii", "--out", "labels.nii.gz", "--json"))
    assert out["labels"] == "labels.nii.gz" and (work / "labels.nii.gz").is_file() and (work / "labels.ctbl").is_file()


def test_the_demo_runs_from_the_installed_wheel_and_says_how_to_get_its_data(venv):
    work, wheel, env = venv
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read("asfda-0.1.0.dist-info/METADATA").decode()
    assert "asfda_tools/make_data.py" in names and "asfda_tools/synthetic_README.md" in names
    assert "Provides-Extra: demo" in meta and 'Requires-Dist: nilearn==0.14.1; extra == "demo"' in meta
    # Without the demo extra and without data: a clear message, nothing started.
    res = subprocess.run(["asfda", "demo"], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode != 0 and 'pip install "asfda[demo]"' in res.stderr, res.stderr
    # With the data in the user cache (where the wheel's demo generates it): the whole loop runs,
    # cut to one pick, one step and one test volume.
    data = work / "home" / ".cache" / "asfda" / "data"
    data.mkdir(parents=True)
    (data / "synthetic-v1").symlink_to(ROOT / ".cache" / "data" / "synthetic-v1")
    out = run(work, env, "asfda", "demo", "--threads", "2", "--max-pool", "2", "--budget", "1", "--steps", "1",
              "--test-volumes", "1", "--out", "demo")
    assert (work / "demo" / "report.md").is_file(), out
    assert str(data / "synthetic-v1") in (work / "demo" / "report.md").read_text() or "synthetic" in out
