"""Where the real NIfTI files shipped in the nibabel and nilearn wheels live."""
import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path:
    """A package's folder, found without importing it (nilearn is installed without its deps)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"{name} is not installed: run `make venv`"
    return Path(spec.origin).parent


def real_nifti_files() -> list[Path]:
    nib = sorted((package_dir("nibabel") / "tests" / "data").glob("*.nii*"))
    nil = sorted((package_dir("nilearn") / "datasets" / "data").glob("*.nii*"))
    return nib + nil
