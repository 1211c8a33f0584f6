//! asfda: adapt a 3D medical segmentation model to a new site with few annotations.
//!
//! Data flows one way: [`volume`] (voxels + geometry, NIfTI I/O) -> model runtime ([`runtime`]).
//! The C ABI (`include/asfda.h`, module `ffi`, not Rust API) is a thin layer over this Rust API.

// Crate internals that the CLI and the integration tests also use: public, but not Rust API.
#[doc(hidden)]
pub mod atomic_file;
pub mod bundle;
pub mod cancel;
pub mod engine;
pub mod error;
// The C ABI: compiled into the cdylib for its #[no_mangle] symbols; not Rust API.
#[doc(hidden)]
pub mod ffi;
pub mod finetune;
pub mod labels;
pub mod log;
pub mod model;
mod onnx_proto;
pub mod preprocess;
pub mod rng;
pub mod runtime;
pub mod score;
pub mod select;
pub mod stats;
#[doc(hidden)]
pub mod tensors;
pub mod volume;
pub mod window;

pub use error::{Error, ErrorKind, Result};

/// The crate version, also exported as `asfda_version()` and `ASFDA_VERSION_*` macros.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
