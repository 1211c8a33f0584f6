//! Helpers shared by the integration tests that read the repository's files and the synthetic
//! data (`make data`). Each test binary uses a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use asfda::volume::Volume;

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

/// The block of `v` starting at voxel `origin` (x, y, z) with `size` voxels, its affine moved so
/// world positions stay put.
pub fn crop(v: &Volume, origin: [usize; 3], size: [usize; 3]) -> Volume {
    let [nx, ny, _] = v.dims();
    let src = v.data();
    let mut data = Vec::with_capacity(size.iter().product());
    for k in 0..size[2] {
        for j in 0..size[1] {
            let row = origin[0] + nx * ((origin[1] + j) + ny * (origin[2] + k));
            data.extend_from_slice(&src[row..row + size[0]]);
        }
    }
    let mut a = v.affine();
    for (r, row) in a.iter_mut().enumerate().take(3) {
        let col: Vec<f64> = (0..3).map(|c| v.affine()[r][c]).collect();
        row[3] += (0..3).map(|c| col[c] * origin[c] as f64).sum::<f64>();
    }
    Volume::new(data, size, 1, a).unwrap()
}
