//! Fine-tuning checkpoints: one safetensors file with the train step's whole state (`param.*`,
//! `m.*`, `v.*` as f32 and the step count as an i64 scalar, the same layout as a bundle's
//! `checkpoint.safetensors`, so a checkpoint can serve as an adapted bundle's checkpoint) plus
//! one metadata entry, [`META_KEY`], holding [`Meta`] as JSON: the format tag, the bundle's name,
//! the step the run started from and the options. (One entry, because safetensors writes its
//! metadata map in hash order: with one entry, saving a state twice gives the same bytes.)
//!
//! Files are written crash-safely: a temporary file in the same folder, fsync, rename over the
//! target, fsync of the folder. A process killed at any moment leaves either the previous file
//! or the new one at the path, never a mix. Its temporary file (`.<name>.asfda-<pid>-<n>.tmp`)
//! is removed by the next save to the same path (`atomic_file::remove_stale_temporaries`).

use std::collections::HashMap;
use std::path::Path;

use ndarray::ArrayD;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// [`Meta::format`] of the checkpoints this build writes and reads.
pub const FORMAT: &str = "asfda.finetune.v1";
/// The safetensors metadata key holding [`Meta`] as JSON.
pub const META_KEY: &str = "asfda";

/// What a checkpoint says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Always [`FORMAT`].
    pub format: String,
    /// `name` of the bundle manifest the state belongs to.
    pub bundle: String,
    /// The train step's count when the fine-tuning run began.
    pub base_step: i64,
    /// The run's [`super::FineTuneOptions`].
    pub options: serde_json::Value,
}

/// A checkpoint read back: state tensors by name, the step count and the metadata.
pub struct Checkpoint {
    pub tensors: HashMap<String, ArrayD<f32>>,
    pub step: i64,
    pub meta: Meta,
}

/// Serialises `state` (name, value), the step count under `step_key` and `metadata`.
pub fn encode<'a>(
    state: impl Iterator<Item = (&'a str, &'a ArrayD<f32>)>,
    step_key: &str,
    step: i64,
    meta: &Meta,
) -> Result<Vec<u8>> {
    let json = serde_json::to_string(meta).map_err(|e| Error::internal(e.to_string()))?;
    let metadata = HashMap::from([(META_KEY.to_string(), json)]);
    let state: Vec<(&str, &ArrayD<f32>)> = state.collect();
    // Standard layout for the byte view below; parameters always are (a copy otherwise).
    let standard: Vec<std::borrow::Cow<'_, ArrayD<f32>>> = state
        .iter()
        .map(|(_, v)| {
            if v.is_standard_layout() {
                std::borrow::Cow::Borrowed(*v)
            } else {
                std::borrow::Cow::Owned(v.as_standard_layout().to_owned())
            }
        })
        .collect();
    let bytes: Vec<std::borrow::Cow<'_, [u8]>> =
        standard.iter().map(|v| le_bytes(v.as_slice().expect("standard layout"))).collect();
    let step_bytes = step.to_le_bytes();
    let mut views = Vec::with_capacity(state.len() + 1);
    for ((name, value), bytes) in state.iter().zip(&bytes) {
        views.push((*name, view(Dtype::F32, value.shape().to_vec(), bytes)?));
    }
    views.push((step_key, view(Dtype::I64, vec![], &step_bytes)?));
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::internal(format!("serialising a checkpoint: {e}")))
}

/// The little-endian bytes of `values`: a view of the memory on little-endian machines (no copy
/// of the ~100 MB a large model's state can take), a converted copy elsewhere.
fn le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding and any byte is a valid u8; the length covers the same memory.
        std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        })
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

fn view(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Result<safetensors::tensor::TensorView<'_>> {
    safetensors::tensor::TensorView::new(dtype, shape, bytes).map_err(|e| Error::internal(e.to_string()))
}

/// Reads a checkpoint written by [`encode`]. `Format` for a file that is not safetensors (e.g.
/// truncated); `InvalidData` for a safetensors file that is not an asfda fine-tuning checkpoint.
pub fn read(path: &Path, step_key: &str) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read the checkpoint", &e))?;
    let bad = |e: safetensors::SafeTensorError| {
        Error::new(
            ErrorKind::Format,
            format!("'{}' is not a readable checkpoint (truncated or corrupt safetensors file): {e}", path.display()),
        )
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let meta: Option<Meta> = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .and_then(|json| serde_json::from_str(json).ok())
        .filter(|m: &Meta| m.format == FORMAT);
    let meta = meta.ok_or_else(|| {
        Error::invalid_data(format!(
            "'{}' is not an asfda fine-tuning checkpoint (no \"{META_KEY}\" metadata of format {FORMAT}); \
             a bundle's own checkpoint is loaded with the bundle",
            path.display()
        ))
    })?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut state = HashMap::new();
    let mut step = None;
    for (name, t) in tensors.tensors() {
        match t.dtype() {
            Dtype::F32 => {
                let data = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let array = ArrayD::from_shape_vec(t.shape(), data).map_err(|e| Error::internal(e.to_string()))?;
                state.insert(name, array);
            }
            Dtype::I64 if name == step_key && t.data().len() == 8 => {
                step = Some(i64::from_le_bytes(t.data().try_into().expect("8 bytes")));
            }
            other => {
                return Err(Error::invalid_data(format!(
                    "'{}': tensor '{name}' is {other:?} with shape {:?}; checkpoints hold f32 state and one i64 '{step_key}'",
                    path.display(),
                    t.shape()
                )))
            }
        }
    }
    let step =
        step.ok_or_else(|| Error::invalid_data(format!("'{}' has no step count '{step_key}'", path.display())))?;
    Ok(Checkpoint { tensors: state, step, meta })
}
