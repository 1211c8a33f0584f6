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
    ort = _lib.default_ort_library()
    if ort is not None:
        env["ASFDA_ORT_LIBRARY"] = ort
    openvino = _lib.default_openvino_plugin()
    if openvino is not None:
        env["ASFDA_OPENVINO_LIBRARY"] = openvino
    os.execve(exe, [exe, *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
