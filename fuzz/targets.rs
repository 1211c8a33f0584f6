//! The fuzz target bodies, shared by the libFuzzer binaries in fuzz_targets/ and by the stable
//! regression test (tests/fuzz_regressions.rs), which runs every file under
//! fuzz/regressions/<target>/ through the same function. A body returns normally for any input:
//! errors are the expected outcome of bad input; a panic, abort or sanitizer report is a finding.

use asfda::volume::{read_nifti_bytes, ReadOptions};

/// Read limits small enough that libFuzzer's 2 GiB RSS limit is never the finding.
fn fuzz_read_options() -> ReadOptions {
    ReadOptions { max_bytes: 64 << 20, max_voxels: 16 << 20, ..ReadOptions::default() }
}

/// NIfTI-1/2, `.nii` or gzip, from bytes. What is read back must hold the Volume invariants.
pub fn nifti(data: &[u8]) {
    if let Ok(v) = read_nifti_bytes(data, &fuzz_read_options()) {
        let [x, y, z] = v.dims();
        assert_eq!(v.data().len(), x * y * z * v.channels());
        assert!(v.spacing().iter().all(|s| s.is_finite() && *s > 0.0), "{:?}", v.spacing());
    }
}

/// Separates the DICOM files of one fuzz input (scripts/fuzz_corpus.py joins series with it).
const DICOM_FILE_SEPARATOR: &[u8] = b"\0ASFDA-NEXT-FILE\0";

/// DICOM files (up to 8, split on [`DICOM_FILE_SEPARATOR`]) read as one series from memory. What is
/// read must hold the Volume invariants and fit the read limits.
pub fn dicom(data: &[u8]) {
    let mut files = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(DICOM_FILE_SEPARATOR.len()).position(|w| w == DICOM_FILE_SEPARATOR) {
        files.push(&rest[..at]);
        rest = &rest[at + DICOM_FILE_SEPARATOR.len()..];
        if files.len() == 7 {
            break;
        }
    }
    files.push(rest);
    let options = fuzz_read_options();
    if let Ok(v) = asfda::volume::read_dicom_bytes(&files, &options) {
        let [x, y, z] = v.dims();
        assert_eq!(v.data().len(), x * y * z * v.channels());
        assert!(v.data().len() as u64 <= options.max_voxels);
        assert!(v.spacing().iter().all(|s| s.is_finite() && *s > 0.0), "{:?}", v.spacing());
    }
}

/// A score as JSON. What parses must write and read back to the same score.
pub fn score_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(score) = asfda::score::Score::from_json(text) {
        let again = asfda::score::Score::from_json(&score.to_json()).expect("a written score reads back");
        assert_eq!(again.to_json(), score.to_json());
    }
}

/// A selection as JSON. What parses must write and read back to the same selection.
pub fn selection_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(selection) = asfda::select::Selection::from_json(text) {
        let again = asfda::select::Selection::from_json(&selection.to_json()).expect("a written selection reads back");
        assert_eq!(again.to_json(), selection.to_json());
    }
}

/// A bundle manifest as JSON, through the reader and validator (`Manifest::from_json`, which
/// runs `problems()`). What is accepted must have no problems, name only plain relative files,
/// and write and read back to the same manifest.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = asfda::bundle::Manifest::from_json(text) {
        assert!(m.problems().is_empty());
        for (_, name) in m.files() {
            assert!(!name.is_empty() && !name.starts_with('/') && !name.split('/').any(|s| s == ".."), "{name}");
        }
        let written = serde_json::to_string(&m).expect("an accepted manifest writes");
        let again = asfda::bundle::Manifest::from_json(&written).expect("a written manifest reads back");
        assert_eq!(again, m);
    }
}

/// An ONNX model's protobuf bytes, through the walker that reads the graph's input and output
/// names at bundle load. Any bytes: an error or names, never a panic.
pub fn onnx_proto(data: &[u8]) {
    if let Ok((inputs, outputs)) = asfda::bundle::onnx_graph_io(data) {
        assert!(inputs.len() + outputs.len() <= data.len(), "more names than bytes");
    }
}
