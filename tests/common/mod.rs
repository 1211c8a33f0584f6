//! Helpers shared by the integration tests that read the repository's files and the synthetic
//! data (`make data`). Each test binary uses a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The synthetic multi-site data: `$ASFDA_TEST_DATA`, else `.cache/data/synthetic-v1`. Fails,
/// saying how to make it, when it is missing (a test never passes without its data).
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("ASFDA_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/data/synthetic-v1"));
    assert!(dir.join("manifest.json").is_file(), "{} missing: run `make data`", dir.display());
    dir
}
