"""Volumes: NIfTI read/write, DICOM series reading, numpy in and out, geometry.

Memory and copies:

- **Out, zero-copy**: :meth:`Volume.view` (and ``np.asarray(volume)``) is a read-only numpy view
  onto the library's own voxels; the view keeps the volume alive (its ``base`` holds it), so it
  stays valid however long it lives. Volumes are immutable, hence read-only.
- **Out, copy**: :meth:`Volume.array` returns a writable copy.
- **In**: :meth:`Volume.from_array` always copies once, inside the library, because a volume owns
  its voxels as float32 (any supported dtype is converted during that copy). numpy adds a second
  copy only when the array is not already x-fastest: pass arrays indexed [x, y, z(, c)] in
  Fortran order (nibabel's ``get_fdata`` usually is) or the transpose of a C-ordered
  [z, y, x] array (3D Slicer's ``arrayFromVolume``: pass ``array.T``), and no numpy copy happens.
"""
from __future__ import annotations

import ctypes as C
import os

import numpy as np

from . import _lib

RAS, LPS = 0, 1
_CONVENTIONS = {"ras": RAS, "lps": LPS, RAS: RAS, LPS: LPS}
_OUTPUT_TYPES = {"u8": 0, "u16": 1, "f32": 2}
_NONFINITE = {"error": 0, "replace": 1, "keep": 2}
# numpy dtype -> NIfTI datatype code (the AsfdaDataType values).
_DTYPES = {
    np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.int32): 8, np.dtype(np.float32): 16,
    np.dtype(np.float64): 64, np.dtype(np.int8): 256, np.dtype(np.uint16): 512,
    np.dtype(np.uint32): 768, np.dtype(np.int64): 1024, np.dtype(np.uint64): 1280,
}


def _convention(c) -> int:
    key = c.lower() if isinstance(c, str) else c
    if key not in _CONVENTIONS:
        raise ValueError(f"unknown convention {c!r}: use asfda.RAS or asfda.LPS")
    return _CONVENTIONS[key]


class _VoxelBuffer:
    """Exposes the library's voxel pointer to numpy and keeps the owning Volume alive."""

    def __init__(self, volume: "Volume", address: int, count: int):
        self.volume = volume
        self.__array_interface__ = {
            "shape": (count,),
            "typestr": "<f4" if np.little_endian else ">f4",
            "data": (address, True),  # read-only: volumes are immutable
            "version": 3,
        }


def _options(max_voxels: int, max_bytes: int, nonfinite: str, replace_value: float):
    if nonfinite not in _NONFINITE:
        raise ValueError(f"nonfinite must be one of {sorted(_NONFINITE)}, got {nonfinite!r}")
    opts = _lib.read_options_default()
    if max_voxels:
        opts.max_voxels = max_voxels
    if max_bytes:
        opts.max_bytes = max_bytes
    opts.nonfinite = _NONFINITE[nonfinite]
    opts.replace_value = replace_value
    return opts


class Volume:
    """A 3D image with channels: float32 voxels plus a voxel-to-world affine (RAS by default).

    Voxel arrays are indexed [x, y, z] for one channel, [x, y, z, channel] otherwise (nibabel's
    order). Thread-safe to read from several threads."""

    def __init__(self, handle: int):
        """Takes ownership of a C handle (``AsfdaVolume *``); use the class methods to make one."""
        if not handle:
            raise ValueError("NULL volume handle")
        self._h = C.c_void_p(handle)

    def __del__(self):
        h = getattr(self, "_h", None)
        if h:
            _lib.volume_free(h)
            self._h = None

    # ---- making volumes ------------------------------------------------------------------

    @classmethod
    def load(cls, path, max_voxels: int = 0, nonfinite: str = "error", replace_value: float = 0.0,
             max_bytes: int = 0) -> "Volume":
        """Reads a NIfTI-1/2 file (.nii or .nii.gz). ``nonfinite``: "error" (default), "replace"
        (with ``replace_value``) or "keep". ``max_voxels`` and ``max_bytes`` (of the float32
        voxels) 0 keep the library defaults (2^31 voxels, 4 GiB)."""
        opts = _options(max_voxels, max_bytes, nonfinite, replace_value)
        out = _lib.P()
        _lib.check(_lib.volume_load(_lib.fspath(path), C.byref(opts), C.byref(out)))
        return cls(out.value)

    read_nifti = load

    @classmethod
    def load_dicom(cls, paths, series_uid: str | None = None, max_voxels: int = 0, max_bytes: int = 0,
                   nonfinite: str = "error", replace_value: float = 0.0) -> "Volume":
        """Reads one DICOM series: ``paths`` is a series folder, a file, or a list of folders and
        files (str, bytes or os.PathLike). Slices are sorted along their normal, rescaled, and
        the affine is converted to RAS. ``series_uid`` picks one series when the files hold
        several (otherwise that is an error listing them). Limits and ``nonfinite`` as in
        :meth:`load`. See the README's "Reading DICOM" for what is supported."""
        array, n = _lib.path_array(paths, "no DICOM folder or files given")
        uid = None if series_uid is None else _lib.c_string(series_uid, "series_uid")
        opts = _options(max_voxels, max_bytes, nonfinite, replace_value)
        out = _lib.P()
        _lib.check(_lib.volume_read_dicom(array, n, uid, C.byref(opts), C.byref(out)))
        return cls(out.value)

    read_dicom = load_dicom

    @classmethod
    def from_slices(cls, slices, positions, orientations, pixel_spacings, max_voxels: int = 0,
                    max_bytes: int = 0) -> "Volume":
        """From 2D slices decoded by the host (e.g. pydicom ``pixel_array`` after rescale), each a
        [rows, columns] array, with per slice ImagePositionPatient (3 values, LPS mm),
        ImageOrientationPatient (6) and PixelSpacing (2: between rows, between columns). Any
        order; sorted along the normal like :meth:`load_dicom`. The affine is RAS."""
        planes = [np.ascontiguousarray(s, dtype=np.float32) for s in slices]
        if not planes or any(p.ndim != 2 or p.shape != planes[0].shape for p in planes):
            raise ValueError("slices must be one or more 2D arrays of the same shape")
        n = len(planes)
        pos = np.ascontiguousarray(positions, dtype=np.float64).reshape(n, 3)
        ori = np.ascontiguousarray(orientations, dtype=np.float64).reshape(n, 6)
        spc = np.ascontiguousarray(pixel_spacings, dtype=np.float64).reshape(n, 2)
        pointers = (C.POINTER(C.c_float) * n)(*[p.ctypes.data_as(C.POINTER(C.c_float)) for p in planes])
        opts = _options(max_voxels, max_bytes, "error", 0.0)
        out = _lib.P()
        as_doubles = lambda a: a.ctypes.data_as(_lib.DOUBLE_P)  # noqa: E731
        _lib.check(_lib.volume_from_slices(pointers, n, planes[0].shape[0], planes[0].shape[1], as_doubles(pos),
                                           as_doubles(ori), as_doubles(spc), C.byref(opts), C.byref(out)))
        return cls(out.value)

    @classmethod
    def from_array(cls, array, affine, convention=RAS, spacing=None, max_voxels: int = 0,
                   max_bytes: int = 0) -> "Volume":
        """From an array indexed [x, y, z] or [x, y, z, channel] and a 4x4 voxel-to-world affine
        in ``convention`` (RAS or LPS). Copies (see the module docs for when numpy copies too).
        ``spacing`` (mm) is optional; when given it must agree with the affine. ``max_voxels``
        and ``max_bytes`` (of the float32 copy) 0 keep the library defaults (TooLargeError
        beyond, before anything is allocated)."""
        a = np.asarray(array)
        if not a.dtype.isnative:  # e.g. big-endian NIfTI data: asfda takes native byte order
            a = a.astype(a.dtype.newbyteorder("="))
        if a.dtype == np.bool_:
            a = a.view(np.uint8)
        if a.dtype not in _DTYPES:
            raise TypeError(f"unsupported dtype {a.dtype}; use one of {sorted(str(d) for d in _DTYPES)}")
        if a.ndim not in (3, 4):
            raise ValueError(f"expected a 3D [x, y, z] or 4D [x, y, z, channel] array, got shape {a.shape}")
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
        channels = a.shape[3] if a.ndim == 4 else 1
        buf = np.asfortranarray(a)  # x fastest, as asfda stores voxels; no copy if already so
        dims = (C.c_size_t * 3)(*a.shape[:3])
        c_aff = (C.c_double * 16)(*aff.reshape(16))
        sp = None if spacing is None else (C.c_double * 3)(*spacing)
        opts = _lib.read_options_default()
        if max_voxels:
            opts.max_voxels = max_voxels
        if max_bytes:
            opts.max_bytes = max_bytes
        out = _lib.P()
        _lib.check(_lib.volume_from_buffer(buf.ctypes.data, buf.nbytes, _DTYPES[a.dtype], dims, channels, sp,
                                           c_aff, _convention(convention), C.byref(opts), C.byref(out)))
        return cls(out.value)

    from_numpy = from_array

    # ---- writing -------------------------------------------------------------------------

    def save(self, path, dtype: str = "f32") -> None:
        """Writes .nii or .nii.gz atomically (temp file + rename). ``dtype``: "f32", or "u8"/"u16"
        for label maps (values rounded)."""
        if dtype not in _OUTPUT_TYPES:
            raise ValueError(f"dtype must be one of {sorted(_OUTPUT_TYPES)}, got {dtype!r}")
        _lib.check(_lib.volume_save(self._h, _lib.fspath(path), _OUTPUT_TYPES[dtype]))

    write_nifti = save

    # ---- geometry ------------------------------------------------------------------------

    def _dims(self):
        d, c = (C.c_size_t * 3)(), C.c_size_t()
        _lib.check(_lib.volume_dims(self._h, d, C.byref(c)))
        return tuple(d), c.value

    @property
    def dims(self) -> tuple:
        """Spatial sizes (x, y, z)."""
        return self._dims()[0]

    @property
    def channels(self) -> int:
        return self._dims()[1]

    @property
    def shape(self) -> tuple:
        """The shape of :meth:`view` / :meth:`array`: (x, y, z), or (x, y, z, channels)."""
        dims, channels = self._dims()
        return dims + ((channels,) if channels > 1 else ())

    @property
    def spacing(self) -> tuple:
        """Voxel spacing in mm (x, y, z)."""
        s = (C.c_double * 3)()
        _lib.check(_lib.volume_spacing(self._h, s))
        return tuple(s)

    def affine_in(self, convention=RAS) -> np.ndarray:
        """The 4x4 voxel-to-world affine in RAS or LPS."""
        a = (C.c_double * 16)()
        _lib.check(_lib.volume_affine(self._h, _convention(convention), a))
        return np.array(a, dtype=np.float64).reshape(4, 4)

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel-to-world affine in RAS (nibabel's and 3D Slicer's convention)."""
        return self.affine_in(RAS)

    def same_grid(self, other: "Volume") -> bool:
        """Whether ``other`` has the same dims and affine (e.g. a label map for this image)."""
        status = _lib.volume_check_same_grid(self._h, other._h)
        if status == 6:  # ASFDA_STATUS_GEOMETRY_MISMATCH
            return False
        _lib.check(status)
        return True

    def to_canonical(self) -> "Volume":
        """Reoriented to the closest canonical RAS orientation (as nibabel's as_closest_canonical)."""
        out = _lib.P()
        _lib.check(_lib.volume_to_canonical(self._h, C.byref(out)))
        return Volume(out.value)

    # ---- voxels --------------------------------------------------------------------------

    def view(self) -> np.ndarray:
        """Zero-copy, read-only float32 view of the voxels, shaped like :attr:`shape`. The view
        keeps this volume alive."""
        ptr, n = C.POINTER(C.c_float)(), C.c_size_t()
        _lib.check(_lib.volume_data(self._h, C.byref(ptr), C.byref(n)))
        flat = np.asarray(_VoxelBuffer(self, C.cast(ptr, C.c_void_p).value or 0, n.value))
        return flat.reshape(self.shape, order="F")  # a view: the buffer is x-fastest

    def array(self) -> np.ndarray:
        """A writable copy of the voxels (float32), shaped like :attr:`shape`."""
        return np.array(self.view(), order="F")

    to_numpy = array

    def __array__(self, dtype=None, copy=None):
        a = self.view()
        if copy:
            a = np.array(a, order="F")
        if dtype is not None and np.dtype(dtype) != a.dtype:
            if copy is False:
                raise ValueError(f"a {dtype} array of this float32 volume needs a copy")
            a = a.astype(dtype)
        return a

    def __repr__(self) -> str:
        spacing = tuple(round(s, 4) for s in self.spacing)
        return f"<asfda.Volume dims={self.dims} channels={self.channels} spacing={spacing}>"
