//! asfda: adapt a 3D medical segmentation model to a new site with few annotations.
//!
//! Data flows one way: [`volume`] (voxels + geometry, NIfTI I/O) -> model runtime ([`runtime`]).
//! The C ABI in [`ffi`] is a thin layer over this Rust API.

pub mod atomic_file;
pub mod bundle;
pub mod cancel;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod finetune;
pub mod labels;
pub mod model;
pub mod preprocess;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod score;
pub mod select;
pub mod stats;
pub mod tensors;
pub mod volume;
pub mod window;

pub use error::{Error, ErrorKind, Result};

/// The crate version, also exported as `asfda_version()` and `ASFDA_VERSION_*` macros.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
