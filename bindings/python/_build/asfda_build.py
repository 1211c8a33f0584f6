"""In-tree PEP 517 build backend for the asfda Python package (standard library only).

Why not setuptools: building a wheel with setuptools < 70.1 needs the separate `wheel` package,
which the project's test virtualenv does not have, and with build isolation pip would have to
download a newer setuptools. The package is pure Python plus, optionally, the prebuilt native
library, so writing the wheel zip directly is short, needs nothing, and works offline with or
without build isolation.

- Version: read from the crate's Cargo.toml (the one source of truth); in an sdist, from PKG-INFO.
- Metadata: the [project] table of pyproject.toml.
- Native library: with ``ASFDA_WHEEL_LIBRARY=/path/to/libasfda.so`` the wheel bundles it as
  ``asfda/libasfda.so`` (found there at import time), depends on the ``onnxruntime`` wheel whose
  library it then loads, and is tagged ``py3-none-manylinux_2_<N>_<arch>`` with N the newest
  glibc symbol version the bundled binaries need (auditwheel's rule, read from their bytes).
  ``ASFDA_WHEEL_CLI=/path/to/asfda`` adds the command line program as ``asfda/bin/asfda`` with an
  ``asfda`` console command, ``ASFDA_WHEEL_BUNDLE=/path/to/bundle`` the demo bundle as
  ``asfda/share/asfda/models/<name>`` (the CLI's and :func:`asfda.demo_bundle`'s default).
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
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


def _metadata(native: bool = False) -> str:
    p = _pyproject()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {version()}",
             f"Summary: {p['description']}", f"Requires-Python: {p['requires-python']}"]
    if "license" in p:
        lines.append(f"License: {p['license']['text']}")
    lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
    if native:
        # The bundled library loads the onnxruntime package's libonnxruntime (asfda._lib).
        lines.append(f"Requires-Dist: onnxruntime=={_ort_version()}")
        # Device "openvino": `pip install asfda[openvino]` brings the OpenVINO EP plugin, which
        # asfda._lib hands to the library (scripts/requirements-openvino.txt pins it).
        openvino = _openvino_requirement()
        if openvino:
            lines.append("Provides-Extra: openvino")
            lines.append(f'Requires-Dist: {openvino}; extra == "openvino"')
    # `pip install "asfda[demo]"`: what `asfda demo` needs to generate its synthetic data.
    lines.append("Provides-Extra: demo")
    lines += [f'Requires-Dist: {name}=={_pin(name)}; extra == "demo"' for name in DEMO_EXTRA]
    readme = HERE / p.get("readme", "README.md")
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + (readme.read_text(encoding="utf-8") if readme.is_file() else "")


def _ort_version() -> str:
    """The ONNX Runtime version asfda is built and tested against (scripts/requirements-test.txt,
    the one place it is pinned; in an sdist, the PKG-INFO's requirement)."""
    pinned = HERE.parents[1] / "scripts" / "requirements-test.txt"
    text = pinned.read_text(encoding="utf-8") if pinned.is_file() else (HERE / "PKG-INFO").read_text(encoding="utf-8")
    m = re.search(r"onnxruntime==([0-9][^\s;]*)", text)
    if not m:
        raise RuntimeError(f"no onnxruntime==VERSION pin in {pinned}")
    return m.group(1)


def _pin(name: str) -> str:
    """The version the tests pin for `name` (scripts/requirements-test.txt, or the Makefile for
    nilearn, installed without its dependencies there); in an sdist, the PKG-INFO's requirement."""
    tree = HERE.parents[1]
    sources = [tree / "scripts" / "requirements-test.txt", tree / "Makefile", HERE / "PKG-INFO"]
    for source in sources:
        if source.is_file():
            m = re.search(rf"(?m)\b{re.escape(name)}==([0-9][^\s;\"]*)", source.read_text(encoding="utf-8"))
            if m:
                return m.group(1)
    raise RuntimeError(f"no {name}==VERSION pin in {[str(s) for s in sources]}")


# The synthetic-data generator `asfda demo` runs from a wheel (python -m asfda_tools.make_data;
# the rest of asfda_tools needs PyTorch and stays in the source tree), and its extra's packages.
DEMO_TOOLS = ("__init__.py", "anatomy.py", "synth.py", "make_data.py")
DEMO_EXTRA = ("nibabel", "scipy", "nilearn")


def _demo_tool_files() -> list[tuple[str, bytes]]:
    tools = HERE / "asfda_tools"
    files = [(f"asfda_tools/{name}", (tools / name).read_bytes()) for name in DEMO_TOOLS]
    # The data's provenance and MNI notice: data/synthetic/README.md of the tree (or of the sdist).
    readme = HERE.parents[1] / "data" / "synthetic" / "README.md"
    if not readme.is_file():
        readme = tools / "synthetic_README.md"
    files.append(("asfda_tools/synthetic_README.md", readme.read_bytes()))
    return files


def _openvino_requirement() -> str:
    """The pinned OpenVINO EP plugin (scripts/requirements-openvino.txt; in an sdist, PKG-INFO's
    extra), or "" when neither says."""
    pinned = HERE.parents[1] / "scripts" / "requirements-openvino.txt"
    text = pinned.read_text(encoding="utf-8") if pinned.is_file() else (
        (HERE / "PKG-INFO").read_text(encoding="utf-8") if (HERE / "PKG-INFO").is_file() else "")
    m = re.search(r"onnxruntime-ep-openvino==([0-9][^\s;]*)", text)
    return f"onnxruntime-ep-openvino=={m.group(1)}" if m else ""


def _package_files() -> list[tuple[str, bytes]]:
    files = _demo_tool_files()
    for path in sorted((HERE / PACKAGE).rglob("*")):
        rel = path.relative_to(HERE)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".so"):
            continue  # a stray .so in the source folder is never shipped by accident
        files.append((rel.as_posix(), path.read_bytes()))
    return files


def _input_file(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    if not path:
        return None
    if not os.path.isfile(path):
        raise RuntimeError(f"{variable} is set to {path}, which is not a file")
    return Path(path).read_bytes()


def _bundled_library() -> bytes | None:
    return _input_file("ASFDA_WHEEL_LIBRARY")


def _bundled_extras() -> list[tuple[str, bytes]]:
    """The CLI and the demo bundle, when asked for (see the module docstring)."""
    files = []
    cli = _input_file("ASFDA_WHEEL_CLI")
    if cli is not None:
        files.append((f"{PACKAGE}/bin/asfda", cli))
    bundle = os.environ.get("ASFDA_WHEEL_BUNDLE")
    if bundle:
        bundle_dir = Path(bundle)
        if not (bundle_dir / "manifest.json").is_file():
            raise RuntimeError(f"ASFDA_WHEEL_BUNDLE is set to {bundle}, which holds no manifest.json")
        for path in sorted(p for p in bundle_dir.iterdir() if p.is_file()):
            files.append((f"{PACKAGE}/share/asfda/models/{bundle_dir.name}/{path.name}", path.read_bytes()))
    return files


def _glibc_tag(binaries: list[bytes]) -> str:
    """``manylinux_2_<N>_<arch>`` for the newest GLIBC_2.N symbol version the binaries reference."""
    versions = [int(m) for b in binaries for m in re.findall(rb"GLIBC_2\.(\d+)", b)]
    arch = os.uname().machine
    return f"manylinux_2_{max(versions, default=17)}_{arch}"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(directory: str, files: list[tuple[str, bytes]], tag: str, purelib: bool) -> str:
    name, ver = PACKAGE, version()
    dist_info = f"{name}-{ver}.dist-info"
    wheel_meta = f"Wheel-Version: 1.0\nGenerator: asfda_build\nRoot-Is-Purelib: {str(purelib).lower()}\nTag: {tag}\n"
    meta = [(f"{dist_info}/METADATA", _metadata(native=not purelib).encode()), (f"{dist_info}/WHEEL", wheel_meta.encode())]
    if any(n == f"{PACKAGE}/bin/asfda" for n, _ in files):
        meta.append((f"{dist_info}/entry_points.txt", b"[console_scripts]\nasfda = asfda._cli:main\n"))
    files = files + meta
    record = "\n".join([_record_line(n, d) for n, d in files] + [f"{dist_info}/RECORD,,", ""])
    filename = f"{name}-{ver}-{tag}.whl"
    with zipfile.ZipFile(Path(directory) / filename, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files + [(f"{dist_info}/RECORD", record.encode())]:
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible
            # A regular file (S_IFREG) with its mode: pip marks executables only so.
            info.external_attr = (0o100755 if n.endswith("/bin/asfda") else 0o100644) << 16
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
    extras = _bundled_extras()
    binaries = [lib] + [d for n, d in extras if n.endswith("/bin/asfda")]
    return _write_wheel(wheel_directory, files + [(f"{PACKAGE}/libasfda.so", lib)] + extras,
                        f"py3-none-{_glibc_tag(binaries)}", purelib=False)


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
