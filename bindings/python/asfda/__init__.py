"""Python bindings for asfda over its C ABI (ctypes; numpy in and out).

The shared library is found via the ``ASFDA_LIBRARY`` environment variable (full path of
``libasfda.so``), else next to this package, else in the source tree's ``target/{release,debug}``.
Every failing call raises :class:`AsfdaError` carrying the C status name and asfda's message.

Example::

    import asfda
    vol = asfda.Volume.load("data/anatomical.nii")
    print(vol.dims, vol.spacing, vol.affine)
    probs = asfda.Model("models/tiny_conv3d/tiny_conv3d.onnx").run_volume(vol.to_canonical())
"""
from __future__ import annotations

import ctypes as C
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["AsfdaError", "Volume", "Model", "runtime_info", "version", "RAS", "LPS"]

RAS, LPS = 0, 1
_OUTPUT_TYPES = {"u8": 0, "u16": 1, "f32": 2}
# numpy dtype -> NIfTI datatype code (the AsfdaDataType values).
_DTYPES = {
    np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.int32): 8, np.dtype(np.float32): 16,
    np.dtype(np.float64): 64, np.dtype(np.int8): 256, np.dtype(np.uint16): 512,
    np.dtype(np.uint32): 768, np.dtype(np.int64): 1024, np.dtype(np.uint64): 1280,
}


def _find_library() -> str:
    env = os.environ.get("ASFDA_LIBRARY")
    if env:
        return env
    here = Path(__file__).resolve().parent
    candidates = [here / "libasfda.so"] + [
        here.parents[2] / "target" / profile / "libasfda.so" for profile in ("release", "debug")
    ]
    for c in candidates:
        if c.is_file():
            return str(c)
    raise OSError("libasfda.so not found: set ASFDA_LIBRARY to its full path or run `cargo build`")


_lib = C.CDLL(_find_library())


class _RuntimeOptions(C.Structure):
    _fields_ = [("library_path", C.c_char_p), ("device", C.c_char_p), ("threads", C.c_uint32)]


class _ReadOptions(C.Structure):
    _fields_ = [("max_voxels", C.c_uint64), ("nonfinite", C.c_int32), ("replace_value", C.c_float)]


def _declare(name, argtypes, restype=C.c_int):
    fn = getattr(_lib, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_P = C.c_void_p
_version = _declare("asfda_version", [], C.c_char_p)
_last_error = _declare("asfda_last_error_message", [], C.c_char_p)
_status_name = _declare("asfda_status_name", [C.c_int], C.c_char_p)
_read_defaults = _declare("asfda_read_options_default", [], _ReadOptions)
_vol_load = _declare("asfda_volume_load", [C.c_char_p, C.POINTER(_ReadOptions), C.POINTER(_P)])
_vol_from_buffer = _declare(
    "asfda_volume_from_buffer",
    [_P, C.c_size_t, C.c_int32, C.POINTER(C.c_size_t), C.c_size_t, C.POINTER(C.c_double),
     C.POINTER(C.c_double), C.c_int32, C.POINTER(_P)],
)
_vol_save = _declare("asfda_volume_save", [_P, C.c_char_p, C.c_int32])
_vol_free = _declare("asfda_volume_free", [_P], None)
_vol_dims = _declare("asfda_volume_dims", [_P, C.POINTER(C.c_size_t), C.POINTER(C.c_size_t)])
_vol_spacing = _declare("asfda_volume_spacing", [_P, C.POINTER(C.c_double)])
_vol_affine = _declare("asfda_volume_affine", [_P, C.c_int32, C.POINTER(C.c_double)])
_vol_data = _declare("asfda_volume_data", [_P, C.POINTER(C.POINTER(C.c_float)), C.POINTER(C.c_size_t)])
_vol_canonical = _declare("asfda_volume_to_canonical", [_P, C.POINTER(_P)])
_rt_info = _declare("asfda_runtime_info_json", [C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)])
_model_load = _declare("asfda_model_load", [C.c_char_p, C.POINTER(_RuntimeOptions), C.POINTER(_P)])
_model_free = _declare("asfda_model_free", [_P], None)
_model_device = _declare("asfda_model_device", [_P, C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)])
_model_run = _declare("asfda_model_run_volume", [_P, _P, C.POINTER(_P)])


class AsfdaError(RuntimeError):
    """A non-OK status from the C API: ``status`` is its name, the message says what to do."""

    def __init__(self, status: int):
        self.status = _status_name(status).decode()
        self.message = (_last_error() or b"").decode()
        super().__init__(f"{self.status}: {self.message}")


def _check(status: int) -> None:
    if status != 0:
        raise AsfdaError(status)


def _read_string(fn, *args) -> str:
    needed = C.c_size_t()
    _check(fn(*args, None, 0, C.byref(needed)))
    buf = C.create_string_buffer(needed.value)
    _check(fn(*args, buf, needed.value, C.byref(needed)))
    return buf.value.decode()


def version() -> str:
    return _version().decode()


def runtime_info() -> dict:
    """ONNX Runtime version, library path (and how it was found) and execution providers."""
    return json.loads(_read_string(_rt_info))


class Volume:
    """A 3D image with channels: float32 voxels plus a voxel-to-world (RAS) affine."""

    def __init__(self, handle: int):
        self._h = C.c_void_p(handle)

    def __del__(self):
        if getattr(self, "_h", None):
            _vol_free(self._h)
            self._h = None

    @classmethod
    def load(cls, path, max_voxels: int = 0, nonfinite: str = "error", replace_value: float = 0.0) -> "Volume":
        opts = _read_defaults()
        if max_voxels:
            opts.max_voxels = max_voxels
        opts.nonfinite = {"error": 0, "replace": 1, "keep": 2}[nonfinite]
        opts.replace_value = replace_value
        out = _P()
        _check(_vol_load(os.fsencode(path), C.byref(opts), C.byref(out)))
        return cls(out.value)

    @classmethod
    def from_array(cls, array: np.ndarray, affine: np.ndarray, convention: int = RAS, spacing=None) -> "Volume":
        """From an array indexed [x, y, z] or [x, y, z, channel] (nibabel's order)."""
        a = np.asarray(array)
        if not a.dtype.isnative:  # e.g. big-endian NIfTI data: asfda takes native byte order
            a = a.astype(a.dtype.newbyteorder("="))
        if a.dtype not in _DTYPES:
            raise TypeError(f"unsupported dtype {a.dtype}")
        if a.ndim not in (3, 4):
            raise ValueError(f"expected a 3D or 4D array, got {a.ndim}D")
        channels = a.shape[3] if a.ndim == 4 else 1
        buf = np.asfortranarray(a)  # x fastest, as asfda stores voxels
        dims = (C.c_size_t * 3)(*a.shape[:3])
        aff = (C.c_double * 16)(*np.asarray(affine, dtype=np.float64).reshape(16))
        sp = None if spacing is None else (C.c_double * 3)(*spacing)
        out = _P()
        _check(_vol_from_buffer(buf.ctypes.data, buf.nbytes, _DTYPES[a.dtype], dims, channels, sp, aff,
                                convention, C.byref(out)))
        return cls(out.value)

    def save(self, path, dtype: str = "f32") -> None:
        _check(_vol_save(self._h, os.fsencode(path), _OUTPUT_TYPES[dtype]))

    @property
    def dims(self) -> tuple:
        d, c = (C.c_size_t * 3)(), C.c_size_t()
        _check(_vol_dims(self._h, d, C.byref(c)))
        return tuple(d)

    @property
    def channels(self) -> int:
        d, c = (C.c_size_t * 3)(), C.c_size_t()
        _check(_vol_dims(self._h, d, C.byref(c)))
        return c.value

    @property
    def spacing(self) -> tuple:
        s = (C.c_double * 3)()
        _check(_vol_spacing(self._h, s))
        return tuple(s)

    def affine_in(self, convention: int = RAS) -> np.ndarray:
        a = (C.c_double * 16)()
        _check(_vol_affine(self._h, convention, a))
        return np.array(a, dtype=np.float64).reshape(4, 4)

    @property
    def affine(self) -> np.ndarray:
        return self.affine_in(RAS)

    def array(self) -> np.ndarray:
        """A copy of the voxels indexed [x, y, z] (3D) or [x, y, z, channel]."""
        ptr, n = C.POINTER(C.c_float)(), C.c_size_t()
        _check(_vol_data(self._h, C.byref(ptr), C.byref(n)))
        flat = np.ctypeslib.as_array(ptr, shape=(n.value,)).copy()
        shape = self.dims + ((self.channels,) if self.channels > 1 else ())
        return flat.reshape(shape, order="F")

    def to_canonical(self) -> "Volume":
        out = _P()
        _check(_vol_canonical(self._h, C.byref(out)))
        return Volume(out.value)


class Model:
    """An ONNX model with one image input, run on a whole volume."""

    def __init__(self, path, device: str = "cpu", threads: int = 0, ort_library=None):
        opts = _RuntimeOptions(None if ort_library is None else os.fsencode(ort_library), device.encode(), threads)
        out = _P()
        _check(_model_load(os.fsencode(path), C.byref(opts), C.byref(out)))
        self._h = C.c_void_p(out.value)

    def __del__(self):
        if getattr(self, "_h", None):
            _model_free(self._h)
            self._h = None

    @property
    def device(self) -> str:
        return _read_string(_model_device, self._h)

    def run_volume(self, volume: Volume) -> Volume:
        out = _P()
        _check(_model_run(self._h, volume._h, C.byref(out)))
        return Volume(out.value)
