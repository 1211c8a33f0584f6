"""Volumes and numpy: zero-copy read-only views that keep their volume alive, copies where the
docs say, round trips for every supported dtype and layout, NIfTI read/write against nibabel,
and argument errors with their exception classes."""
import ctypes as C
import gc
import os

import nibabel as nib
import numpy as np
import pytest

import asfda
from asfda import _lib
from synthetic_data import image

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def ramp(shape, dtype=np.float32):
    return np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)


def test_view_is_zero_copy_read_only_and_x_fastest():
    a = ramp((5, 6, 7))
    vol = asfda.Volume.from_array(a, AFFINE)
    v = vol.view()
    ptr, n = C.POINTER(C.c_float)(), C.c_size_t()
    _lib.check(_lib.volume_data(vol._h, C.byref(ptr), C.byref(n)))
    assert v.ctypes.data == C.cast(ptr, C.c_void_p).value and n.value == a.size  # the library's memory
    assert v.shape == (5, 6, 7) and v.dtype == np.float32 and v.flags.f_contiguous
    np.testing.assert_array_equal(v, a)
    assert not v.flags.writeable
    with pytest.raises(ValueError):
        v[0, 0, 0] = 1.0
    # np.asarray shares the same memory; np.array and .array() copy and are writable.
    assert np.shares_memory(np.asarray(vol), v)
    for copy in (np.array(vol), vol.array()):
        assert not np.shares_memory(copy, v) and copy.flags.writeable
        copy[0, 0, 0] = -5.0
    assert v[0, 0, 0] == 0.0


def test_view_keeps_the_volume_alive():
    a = ramp((4, 5, 6))
    v = asfda.Volume.from_array(a, AFFINE).view()  # the Volume object itself is dropped here
    gc.collect()
    for _ in range(50):  # churn the allocator: freed memory would be reused and overwritten
        asfda.Volume.from_array(np.full((4, 5, 6), 7.0, np.float32), AFFINE)
    np.testing.assert_array_equal(v, a)
    owner = v
    while not hasattr(owner, "volume"):  # view -> flat array -> the buffer that holds the volume
        owner = owner.base
    assert isinstance(owner.volume, asfda.Volume)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                                   np.uint64, np.float32, np.float64, np.bool_])
def test_every_dtype_round_trips(dtype):
    a = (ramp((3, 4, 5)) % 100).astype(dtype)
    vol = asfda.Volume.from_array(a, AFFINE)
    np.testing.assert_array_equal(vol.view(), a.astype(np.float32))
    np.testing.assert_allclose(vol.affine, AFFINE)


def test_big_endian_and_layouts_give_the_same_volume():
    a = ramp((6, 5, 4))
    ref = asfda.Volume.from_array(a, AFFINE).view()
    # A C-ordered [z, y, x] array (3D Slicer's arrayFromVolume) passed transposed: no numpy copy.
    zyx = np.ascontiguousarray(a.transpose(2, 1, 0))
    np.testing.assert_array_equal(asfda.Volume.from_array(zyx.T, AFFINE).view(), ref)
    np.testing.assert_array_equal(asfda.Volume.from_array(np.asfortranarray(a), AFFINE).view(), ref)
    np.testing.assert_array_equal(asfda.Volume.from_array(a.astype(">i4"), AFFINE).view(), ref)
    # A strided view (every other x) is gathered correctly.
    big = ramp((12, 5, 4))
    np.testing.assert_array_equal(asfda.Volume.from_array(big[::2], AFFINE).view(), big[::2])


def test_channels_round_trip():
    a = ramp((4, 5, 6, 3))
    vol = asfda.Volume.from_array(a, AFFINE)
    assert vol.dims == (4, 5, 6) and vol.channels == 3 and vol.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(vol.view(), a)


def test_lps_and_spacing():
    vol = asfda.Volume.from_array(ramp((3, 3, 3)), AFFINE, "ras", spacing=(2.0, 2.0, 2.0))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    np.testing.assert_allclose(vol.affine_in("lps"), lps)
    np.testing.assert_allclose(vol.affine_in(asfda.LPS), lps)
    np.testing.assert_allclose(asfda.Volume.from_array(ramp((3, 3, 3)), lps, asfda.LPS).affine, AFFINE)
    assert vol.spacing == (2.0, 2.0, 2.0)
    with pytest.raises(asfda.GeometryMismatchError, match="spacing"):  # disagrees with the affine
        asfda.Volume.from_array(ramp((3, 3, 3)), AFFINE, spacing=(1.0, 2.0, 2.0))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_write_read_against_nibabel(tmp_path, suffix):
    src = image("t1", "test", 0)
    vol = asfda.Volume.load(src)
    ref = nib.load(src)
    np.testing.assert_allclose(vol.view(), ref.get_fdata(dtype=np.float32), rtol=1e-6)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    out = tmp_path / f"copy{suffix}"
    vol.write_nifti(out)
    back = asfda.Volume.load(out)
    np.testing.assert_array_equal(back.view(), vol.view())
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(nib.load(out).get_fdata(dtype=np.float32), vol.view())


def test_canonical_and_same_grid():
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    a = ramp((4, 5, 6))
    vol = asfda.Volume.from_array(a, flipped)
    can = vol.to_canonical()
    assert can.affine[0, 0] > 0
    np.testing.assert_array_equal(can.view(), a[::-1])
    assert vol.same_grid(asfda.Volume.from_array(np.zeros((4, 5, 6), np.uint8), flipped))
    assert not vol.same_grid(can)


def test_argument_errors():
    with pytest.raises(ValueError, match="3D"):
        asfda.Volume.from_array(np.zeros((4, 4), np.float32), AFFINE)
    with pytest.raises(ValueError, match="4x4"):
        asfda.Volume.from_array(np.zeros((4, 4, 4), np.float32), np.eye(3))
    with pytest.raises(TypeError, match="complex"):
        asfda.Volume.from_array(np.zeros((4, 4, 4), np.complex64), AFFINE)
    with pytest.raises(ValueError, match="convention"):
        asfda.Volume.from_array(np.zeros((4, 4, 4), np.float32), AFFINE, "xyz")
    with pytest.raises(asfda.InvalidDataError):  # singular affine
        asfda.Volume.from_array(np.zeros((4, 4, 4), np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="dtype"):
        asfda.Volume.from_array(np.zeros((4, 4, 4), np.float32), AFFINE).save("/tmp/x.nii", "i32")


def test_file_errors(tmp_path):
    with pytest.raises(asfda.IoError) as err:
        asfda.Volume.load(tmp_path / "missing.nii")
    assert err.value.code == 2 and "missing.nii" in err.value.message
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti file" * 40)
    with pytest.raises(asfda.FormatError):
        asfda.Volume.load(junk)
    with pytest.raises(asfda.TooLargeError):
        asfda.Volume.load(image("t1", "test", 0), max_voxels=1000)


def test_size_limits_refuse_a_buffer_before_allocating():
    a = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(asfda.TooLargeError, match="max_bytes"):
        asfda.Volume.from_array(a, np.eye(4), max_bytes=a.nbytes - 1)
    with pytest.raises(asfda.TooLargeError, match="max_voxels"):
        asfda.Volume.from_array(a, np.eye(4), max_voxels=a.size - 1)
    assert asfda.Volume.from_array(a, np.eye(4), max_bytes=a.nbytes).dims == (4, 3, 2)


def test_a_file_name_that_is_not_utf8_saves_and_loads(tmp_path):
    # Paths are bytes on Unix: a Latin-1 name from an old archive must work.
    path = os.fsencode(tmp_path) + b"/caf\xe9.nii.gz"
    v = asfda.Volume.from_array(np.arange(24, dtype=np.float32).reshape(4, 3, 2), np.eye(4))
    v.save(path)
    assert np.array_equal(asfda.Volume.load(path).array(), v.array())
