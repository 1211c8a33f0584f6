"""Packaging: pip installs the bindings offline (the in-tree backend needs nothing), the installed
copy works from outside the repository, a wheel can bundle libasfda.so, the library search
reports where it looked, and the version comes from Cargo.toml."""
import os
import re
import subprocess
import sys
import zipfile

import pytest

import asfda
from asfda import _lib
from synthetic_data import ROOT

PKG = ROOT / "bindings" / "python"


def cargo_version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)


def run_python(code, cwd, env_extra, pythonpath):
    env = {k: v for k, v in os.environ.items() if k not in ("ASFDA_LIBRARY", "PYTHONPATH")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def pip(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    # --no-index: offline; the backend has no build requirements, so isolation needs no download.
    res = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--no-deps", "--disable-pip-version-check"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    pip("install", "--target", str(target), str(PKG))
    return target


def test_versions_come_from_cargo_toml(installed):
    v = cargo_version()
    assert asfda.__version__ == v  # the library's own version
    assert f"{_lib.ABI_VERSION[0]}.{_lib.ABI_VERSION[1]}" == ".".join(v.split(".")[:2])
    assert (installed / f"asfda-{v}.dist-info" / "METADATA").is_file()


def test_installed_copy_imports_and_works_outside_the_repo(installed, tmp_path):
    code = ("import asfda, numpy as np; v = asfda.Volume.from_array(np.ones((3, 4, 5), np.uint8), np.eye(4)); "
            "print(asfda.__file__); print(asfda.version()); print(float(v.view().sum()))")
    res = run_python(code, tmp_path, {"ASFDA_LIBRARY": str(_lib.path)}, installed)
    assert res.returncode == 0, res.stderr
    file, version, total = res.stdout.split()
    assert file.startswith(str(installed)) and version == cargo_version() and float(total) == 60.0
    # The bindings, and of the repository's tools only the demo's data generator (`asfda demo`
    # from a wheel; asfda_build.DEMO_TOOLS), and no native library.
    assert sorted(p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")) == ["asfda", "asfda_tools"]
    tools = sorted(p.name for p in (installed / "asfda_tools").iterdir() if p.name != "__pycache__")
    assert tools == ["__init__.py", "anatomy.py", "make_data.py", "synth.py", "synthetic_README.md"]
    assert not (installed / "asfda" / "libasfda.so").exists()


def test_library_search_reports_where_it_looked(installed, tmp_path):
    res = run_python("import asfda", tmp_path, {}, installed)
    assert res.returncode != 0 and "LibraryNotFoundError" in res.stderr
    assert str(installed / "asfda" / "libasfda.so") in res.stderr and "ASFDA_LIBRARY" in res.stderr
    res = run_python("import asfda", tmp_path, {"ASFDA_LIBRARY": str(tmp_path / "nope.so")}, installed)
    assert res.returncode != 0 and f"ASFDA_LIBRARY is set to {tmp_path / 'nope.so'}" in res.stderr
    # From the repository, without ASFDA_LIBRARY, the search goes on to target/{release,debug}.
    names = [how for how, _ in _lib.candidates()]
    assert names[-2:] == ["source tree target/release", "source tree target/debug"]


def test_wheel_can_bundle_the_library(tmp_path):
    wheels = tmp_path / "wheels"
    pip("wheel", "--wheel-dir", str(wheels), str(PKG), env_extra={"ASFDA_WHEEL_LIBRARY": str(_lib.path)})
    (whl,) = wheels.glob("*.whl")
    assert whl.name.startswith(f"asfda-{cargo_version()}-py3-none-manylinux_2_")  # the glibc it needs
    with zipfile.ZipFile(whl) as z:
        assert "asfda/libasfda.so" in z.namelist()
        record = z.read(f"asfda-{cargo_version()}.dist-info/RECORD").decode()
        assert "asfda/libasfda.so,sha256=" in record
    target = tmp_path / "site"
    pip("install", "--target", str(target), str(whl))
    # No ASFDA_LIBRARY and outside the repo: the bundled copy is found.
    res = run_python("import asfda; print(asfda.library_path())", tmp_path, {}, target)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(target / "asfda" / "libasfda.so")
