//! The golden manifest: `tests/data/golden_manifest.json` and its variants
//! (`golden_manifest_cases.json`) must be accepted or refused by the library's reader exactly as
//! by the Python generator's check (`bindings/python/tests/test_manifest.py` reads the same
//! files), with the same field named, so the two schemas cannot drift. No files or ONNX Runtime
//! needed: only the manifest is read.

use std::path::{Path, PathBuf};

use asfda::bundle::{InputOrientation, Layout, LossKind, Manifest, Normalization, OptimizerKind, ZscoreMask};
use asfda::ErrorKind;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden() -> Value {
    read_json(&root().join("tests/data/golden_manifest.json"))
}

/// The slot at a dotted path (numbers index arrays).
fn slot<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
    path.split('.').fold(v, |v, seg| match seg.parse::<usize>() {
        Ok(i) if v.is_array() => &mut v[i],
        _ => &mut v[seg],
    })
}

/// Applies a case's `set` and `remove` edits.
fn edited(case: &Value) -> Value {
    let mut m = golden();
    for (path, value) in case["set"].as_object().into_iter().flatten() {
        *slot(&mut m, path) = value.clone();
    }
    for path in case["remove"].as_array().into_iter().flatten() {
        let path = path.as_str().unwrap();
        let (parent, key) = path.rsplit_once('.').map_or(("", path), |(p, k)| (p, k));
        let parent = if parent.is_empty() { &mut m } else { slot(&mut m, parent) };
        match key.parse::<usize>() {
            Ok(i) if parent.is_array() => {
                parent.as_array_mut().unwrap().remove(i);
            }
            _ => {
                parent.as_object_mut().unwrap().remove(key).unwrap_or_else(|| panic!("no '{path}' to remove"));
            }
        }
    }
    m
}

/// Whether one of the problems ("a; b; ...") is about `field` (starts with `field:` or `field.`).
fn names_field(message: &str, field: &str) -> bool {
    message
        .split("; ")
        .any(|p| p.strip_prefix(field).is_some_and(|rest| rest.starts_with(':') || rest.starts_with('.')))
}

fn cases() -> Value {
    read_json(&root().join("tests/data/golden_manifest_cases.json"))
}

#[test]
fn the_golden_manifest_is_read_completely() {
    let text = std::fs::read_to_string(root().join("tests/data/golden_manifest.json")).unwrap();
    let m = Manifest::from_json(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.input.orientation, InputOrientation::Ras);
    assert_eq!(m.input.normalization, Normalization::Zscore { mask: ZscoreMask::Nonzero });
    assert_eq!(m.inference.layout, Layout::Nczyx);
    let t = m.training.as_ref().unwrap();
    assert_eq!((t.loss.kind, t.optimizer.kind), (LossKind::DiceCe, OptimizerKind::Adamw));
    assert_eq!(m.source_knowledge.as_ref().unwrap().tiles, Some(9));
    // Written back, it is the same JSON: the Rust types know every field the generator writes.
    assert_eq!(serde_json::to_value(&m).unwrap(), golden());
}

#[test]
fn the_shipped_demo_manifest_passes() {
    let text = std::fs::read_to_string(root().join("models/demo_brain_unet/manifest.json")).unwrap();
    let m = Manifest::from_json(&text).unwrap_or_else(|e| panic!("{e}"));
    let back = serde_json::to_value(&m).unwrap();
    assert_eq!(back, serde_json::from_str::<Value>(&text).unwrap());
}

#[test]
fn valid_variants_are_accepted() {
    for case in cases()["valid"].as_array().unwrap() {
        let text = edited(case).to_string();
        if let Err(e) = Manifest::from_json(&text) {
            panic!("variant '{}' refused: {e}", case["name"]);
        }
    }
}

#[test]
fn invalid_variants_are_refused_naming_the_field() {
    for case in cases()["invalid"].as_array().unwrap() {
        let field = case["field"].as_str().unwrap();
        let err = Manifest::from_json(&edited(case).to_string())
            .err()
            .unwrap_or_else(|| panic!("variant '{}' accepted", case["name"]));
        assert!(matches!(err.kind(), ErrorKind::Format | ErrorKind::InvalidData), "{err}");
        assert!(names_field(err.message(), field), "variant '{}': '{field}' not named in: {err}", case["name"]);
    }
}

#[test]
fn enum_errors_list_the_allowed_values() {
    let case = serde_json::json!({"set": {"input.orientation": "LPS"}});
    let err = Manifest::from_json(&edited(&case).to_string()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Format);
    assert_eq!(err.message(), "input.orientation: unknown variant `LPS`, expected `RAS`");
    let case = serde_json::json!({"set": {"training.optimizer.kind": "sgd"}});
    let err = Manifest::from_json(&edited(&case).to_string()).unwrap_err();
    assert_eq!(err.message(), "training.optimizer.kind: unknown variant `sgd`, expected `adamw`");
}
