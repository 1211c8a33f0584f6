//! Every input a fuzz target once failed on (fuzz/regressions/<target>/, see docs/fuzzing.md)
//! runs through the same target body on stable Rust, so a crash found by `make fuzz` stays fixed.
//! The bodies assert invariants themselves (a volume read holds its invariants; JSON read back
//! after writing is the same), so a regression fails here as a panic.

#[path = "../fuzz/targets.rs"]
mod targets;

#[path = "common/dicom.rs"]
mod dicom_file;

use std::path::Path;

/// Runs `body` on every file in fuzz/regressions/`target`/ and returns how many ran.
fn replay(target: &str, body: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target}: {} fails again", file.display());
    }
    files.len()
}

/// Edge inputs every target must survive, beside the recorded regressions.
const EDGES: [&[u8]; 6] = [b"", b"\0", b"{}", b"[]", b"\x1f\x8b", b"\\\x01\0\0n+2\0"];

#[test]
fn nifti_regressions_stay_fixed() {
    replay("nifti", targets::nifti);
    EDGES.iter().for_each(|e| targets::nifti(e));
}

#[test]
fn dicom_regressions_stay_fixed() {
    replay("dicom", targets::dicom);
    EDGES.iter().for_each(|e| targets::dicom(e));
    // A valid file (dicom-rs's writer) read whole, then cut at every byte: truncation anywhere
    // is an error, never a panic; and a marker with nothing after it.
    let file = dicom_file::Slice::new(3, 4, 0.0).bytes();
    assert!(asfda::volume::read_dicom_bytes(&[&file], &asfda::volume::ReadOptions::default()).is_ok());
    for n in 0..file.len() {
        targets::dicom(&file[..n]);
    }
    let mut marker = vec![0u8; 128];
    marker.extend_from_slice(b"DICM");
    targets::dicom(&marker);
    // This one did not crash but made dicom-rs allocate 775 MB from a 20 KB input (a meta element
    // with the unknown VR "LI", which dicom-rs reads with a 4-byte length): refused before parsing.
    let overread = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/dicom/meta-group-length-overread-48104848"),
    )
    .unwrap();
    let e = asfda::volume::read_dicom_bytes(&[&overread], &asfda::volume::ReadOptions::default()).unwrap_err();
    assert!(e.kind() == asfda::ErrorKind::Format && e.message().contains("claims 775040561 bytes"), "{e}");
    // And this one a 1.5 GB allocation: an FL element of 2 bytes, after which dicom-rs resumed
    // mid-value.
    let resync = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/dicom/odd-length-number-resync-aec95c0a"),
    )
    .unwrap();
    let e = asfda::volume::read_dicom_bytes(&[&resync], &asfda::volume::ReadOptions::default()).unwrap_err();
    assert!(e.message().contains("(0024,0011)") && e.message().contains("not a whole number"), "{e}");
}

#[test]
fn score_json_regressions_stay_fixed() {
    replay("score_json", targets::score_json);
    EDGES.iter().for_each(|e| targets::score_json(e));
}

#[test]
fn selection_json_regressions_stay_fixed() {
    replay("selection_json", targets::selection_json);
    EDGES.iter().for_each(|e| targets::selection_json(e));
}

#[test]
fn manifest_regressions_stay_fixed() {
    replay("manifest", targets::manifest);
    EDGES.iter().for_each(|e| targets::manifest(e));
    // The shipped and golden manifests go through the same body (accepted, written, read back).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for seed in ["models/demo_brain_unet/manifest.json", "tests/data/golden_manifest.json"] {
        let text = std::fs::read(root.join(seed)).unwrap();
        assert!(asfda::bundle::Manifest::from_json(std::str::from_utf8(&text).unwrap()).is_ok(), "{seed}");
        targets::manifest(&text);
    }
}

#[test]
fn onnx_proto_regressions_stay_fixed() {
    replay("onnx_proto", targets::onnx_proto);
    EDGES.iter().for_each(|e| targets::onnx_proto(e));
    let model =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny_conv3d/tiny_conv3d.onnx")).unwrap();
    assert!(asfda::bundle::onnx_graph_io(&model).is_ok());
    for n in [1, 2, 7, model.len() / 2, model.len() - 1] {
        targets::onnx_proto(&model[..n]);
    }
}
