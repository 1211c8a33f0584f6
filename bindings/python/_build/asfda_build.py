"""In-tree PEP 517 build backend for the asfda Python package (standard library only).

Why not setuptools: building a wheel with setuptools < 70.1 needs the separate `wheel` package,
which the project's test virtualenv does not have, and with build isolation pip would have to
download a newer setuptools. The package is pure Python plus, optionally, the prebuilt native
library, so writing the wheel zip directly is short, needs nothing, and works offline with or
without build isolation.

- Version: read from the crate's Cargo.toml (the one source of truth); in an sdist, from PKG-INFO.
- Metadata: the [project] table of pyproject.toml.
- Native library: with ``ASFDA_WHEEL_LIBRARY=/path/to/libasfda.so`` the wheel bundles it as
  ``asfda/libasfda.so`` (found there at import time) and is tagged for this platform
  (``py3-none-<platform>``) instead of ``py3-none-any``.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import sysconfig
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # bindings/python (or the unpacked sdist)
PACKAGE = "asfda"


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError as e:
            raise RuntimeError("building asfda needs Python >= 3.11 or the tomli package") from e
    with open(HERE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def version() -> str:
    cargo = HERE.parents[1] / "Cargo.toml"
    if cargo.is_file():
        # The [package] table opens Cargo.toml; its version is the first before the next table.
        package = cargo.read_text(encoding="utf-8").split("\n[", 1)[0]
        m = re.search(r'^version\s*=\s*"([^"]+)"', package, re.M)
        if not m:
            raise RuntimeError(f"no version in the [package] table of {cargo}")
        return m.group(1)
    pkg_info = HERE / "PKG-INFO"
    if pkg_info.is_file():
        m = re.search(r"^Version:\s*(\S+)", pkg_info.read_text(encoding="utf-8"), re.M)
        if m:
            return m.group(1)
    raise RuntimeError(f"cannot find the asfda version: neither {cargo} nor {pkg_info} exists")


def _metadata() -> str:
    p = _pyproject()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {version()}",
             f"Summary: {p['description']}", f"Requires-Python: {p['requires-python']}"]
    if "license" in p:
        lines.append(f"License: {p['license']['text']}")
    lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
    readme = HERE / p.get("readme", "README.md")
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + (readme.read_text(encoding="utf-8") if readme.is_file() else "")


def _package_files() -> list[tuple[str, bytes]]:
    files = []
    for path in sorted((HERE / PACKAGE).rglob("*")):
        rel = path.relative_to(HERE)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".so"):
            continue  # a stray .so in the source folder is never shipped by accident
        files.append((rel.as_posix(), path.read_bytes()))
    return files


def _bundled_library() -> bytes | None:
    lib = os.environ.get("ASFDA_WHEEL_LIBRARY")
    if not lib:
        return None
    if not os.path.isfile(lib):
        raise RuntimeError(f"ASFDA_WHEEL_LIBRARY is set to {lib}, which is not a file")
    return Path(lib).read_bytes()


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(directory: str, files: list[tuple[str, bytes]], tag: str, purelib: bool) -> str:
    name, ver = PACKAGE, version()
    dist_info = f"{name}-{ver}.dist-info"
    wheel_meta = f"Wheel-Version: 1.0\nGenerator: asfda_build\nRoot-Is-Purelib: {str(purelib).lower()}\nTag: {tag}\n"
    files = files + [(f"{dist_info}/METADATA", _metadata().encode()), (f"{dist_info}/WHEEL", wheel_meta.encode())]
    record = "\n".join([_record_line(n, d) for n, d in files] + [f"{dist_info}/RECORD,,", ""])
    filename = f"{name}-{ver}-{tag}.whl"
    with zipfile.ZipFile(Path(directory) / filename, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files + [(f"{dist_info}/RECORD", record.encode())]:
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, d)
    return filename


# ---- PEP 517 / 660 hooks -----------------------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = _package_files()
    lib = _bundled_library()
    if lib is None:
        return _write_wheel(wheel_directory, files, "py3-none-any", purelib=True)
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return _write_wheel(wheel_directory, files + [(f"{PACKAGE}/libasfda.so", lib)], f"py3-none-{platform}",
                        purelib=False)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth file putting this source folder on sys.path: edits take effect without reinstalling.
    pth = (str(HERE) + "\n").encode()
    return _write_wheel(wheel_directory, [(f"_{PACKAGE}_editable.pth", pth)], "py3-none-any", purelib=True)


def build_sdist(sdist_directory, config_settings=None):
    base = f"{PACKAGE}-{version()}"
    filename = f"{base}.tar.gz"
    members = [("pyproject.toml", (HERE / "pyproject.toml").read_bytes()),
               ("_build/asfda_build.py", Path(__file__).read_bytes()),
               ("PKG-INFO", _metadata().encode())]
    if (HERE / "README.md").is_file():
        members.append(("README.md", (HERE / "README.md").read_bytes()))
    members += _package_files()
    with tarfile.open(Path(sdist_directory) / filename, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1577836800
            tar.addfile(info, io.BytesIO(data))
    return filename
