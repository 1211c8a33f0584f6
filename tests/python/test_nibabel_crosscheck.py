"""Every real NIfTI file in nibabel's and nilearn's wheels, read by asfda through its C ABI, must
equal nibabel's reading: dims, affine, voxel values, and the closest-canonical reorientation."""
import nibabel as nib
import numpy as np
import pytest

import asfda
from realdata import real_nifti_files

FILES = real_nifti_files()


def test_the_real_files_are_there():
    # 8 in nibabel's wheel, 4 in nilearn's: a packaging change must not silently shrink the check.
    assert len(FILES) >= 12, FILES


def nibabel_image(path):
    img = nib.load(path)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        # CIFTI-2 files are NIfTI-2 containers; read them as plain NIfTI-2 images.
        img = nib.Nifti2Image.from_filename(path)
    return img


def as_asfda_layout(img):
    """nibabel's array with dims 4.. folded into one channel axis, as asfda does."""
    data = np.asarray(img.get_fdata(dtype=np.float64))
    shape = data.shape + (1,) * (3 - data.ndim)
    spatial, rest = shape[:3], shape[3:]
    channels = int(np.prod(rest)) if rest else 1
    data = data.reshape(spatial + ((channels,) if channels > 1 else ()), order="F")
    return data, channels


def assert_same_image(vol, img, what):
    expected, channels = as_asfda_layout(img)
    assert vol.dims == expected.shape[:3], what
    assert vol.channels == channels, what
    np.testing.assert_allclose(vol.affine, img.affine, rtol=0, atol=1e-5, err_msg=what)
    got = vol.array()
    # asfda keeps f32 voxels; nibabel computes in f64.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(expected).max()), err_msg=what)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_matches_nibabel(path):
    assert_same_image(asfda.Volume.load(path, nonfinite="keep"), nibabel_image(path), path.name)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_canonical_matches_nibabel(path):
    img = nibabel_image(path)
    canonical = nib.as_closest_canonical(img)
    vol = asfda.Volume.load(path, nonfinite="keep").to_canonical()
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert_same_image(vol, canonical, path.name)


@pytest.mark.parametrize("dtype,values", [("u8", [0, 1, 2, 255]), ("u16", [0, 3, 65535, 7]), ("f32", [-1.5, 0.0, 2.25, 1e6])])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_written_files_read_back_in_nibabel(tmp_path, dtype, values, suffix):
    src = FILES[0]  # anatomical.nii: oblique-free LAS geometry with both sform and qform
    img = nibabel_image(src)
    data = np.resize(np.array(values, dtype=np.float32), img.shape[:3])
    vol = asfda.Volume.from_array(np.asfortranarray(data), img.affine)
    out = tmp_path / f"out{suffix}"
    vol.save(out, dtype)
    back = nib.load(out)
    assert back.get_data_dtype() == {"u8": np.uint8, "u16": np.uint16, "f32": np.float32}[dtype]
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj, dtype=np.float32), data)
    # qform and sform both carry the geometry, so ITK/Slicer (qform-first) place it identically.
    np.testing.assert_allclose(back.header.get_qform(), img.affine, atol=1e-4)
    np.testing.assert_allclose(back.header.get_sform(), img.affine, atol=1e-4)


def test_lps_buffer_equals_ras_buffer():
    img = nibabel_image(FILES[0])
    data = np.asarray(img.dataobj)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    a = asfda.Volume.from_array(data, img.affine, asfda.RAS)
    b = asfda.Volume.from_array(data, lps, asfda.LPS)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-12)
    np.testing.assert_allclose(b.affine_in(asfda.LPS), lps, atol=1e-12)
    np.testing.assert_array_equal(a.array(), b.array())
