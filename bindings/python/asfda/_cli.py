"""The ``asfda`` console command of an installed wheel: runs the CLI binary the wheel ships
(``asfda/bin/asfda``), with ONNX Runtime from the ``onnxruntime`` package the wheel depends on
and the demo bundle from ``asfda/share/asfda/`` (the CLI's default ``--bundle``)."""
from __future__ import annotations

import os
import sys

from . import _lib


def executable() -> str:
    """The CLI binary inside the installed package."""
    return os.fspath(_lib.PACKAGE_DIR / "bin" / "asfda")


def main() -> None:
    exe = executable()
    if not os.path.isfile(exe):
        sys.exit(f"asfda: this installation has no command line program ({exe} is missing): "
                 "install a platform wheel (`make wheel`), or build it with `cargo build --release`")
    env = dict(os.environ)
    args = sys.argv[1:]
    if args[:1] == ["demo"] and not _asks_only_for_help(args):
        args = _with_demo_data(args)
    ort = _lib.default_ort_library()
    if ort is not None:
        env["ASFDA_ORT_LIBRARY"] = ort
    openvino = _lib.default_openvino_plugin()
    if openvino is not None:
        env["ASFDA_OPENVINO_LIBRARY"] = openvino
    os.execve(exe, [exe, *args], env)


def _asks_only_for_help(args) -> bool:
    return any(a in ("-h", "--help") for a in args)


def demo_data_dir():
    """Where the wheel's ``asfda demo`` keeps its synthetic data: the user's asfda cache
    (``$ASFDA_CACHE_DIR``, else ``$XDG_CACHE_HOME/asfda``, else ``~/.cache/asfda``, as the library
    resolves it), ``data/synthetic-v1``."""
    cache = os.environ.get("ASFDA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "asfda")
    return os.path.join(cache, "data", "synthetic-v1")


def _with_demo_data(args):
    """``asfda demo`` without ``--data``: the synthetic data in the user cache, generated there the
    first time (about 2 minutes; needs ``pip install "asfda[demo]"``)."""
    if any(a == "--data" or a.startswith("--data=") for a in args):
        return args
    data = demo_data_dir()
    if not os.path.isfile(os.path.join(data, "manifest.json")):
        try:
            import importlib.util

            if importlib.util.find_spec("nilearn") is None:  # its MNI152 files are the anatomy
                raise ImportError("No module named 'nilearn'")
            from asfda_tools import make_data
        except ImportError as e:
            sys.exit(f"asfda demo: no synthetic data in {data}, and it cannot be generated here ({e}): "
                     'install the demo extra with `pip install "asfda[demo]"` and run `asfda demo` again, '
                     "or give --data DIR")
        print(f"asfda demo: generating the synthetic data into {data} (once; about 2 minutes)", file=sys.stderr)
        make_data.main(["--out", data])
    return [*args, "--data", data]


if __name__ == "__main__":
    main()
