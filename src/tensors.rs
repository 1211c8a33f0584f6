//! Named tensor files (safetensors): checkpoints and source statistics of a model bundle.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, ErrorKind, Result};

/// A safetensors file read into memory, validated by the safetensors crate on open.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read tensor file", &e))?;
        SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e))?;
        Ok(TensorFile { path: path.to_path_buf(), bytes })
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in open")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        self.tensors().tensor(name).map_err(|_| {
            Error::new(ErrorKind::InvalidData, format!("'{}' has no tensor '{name}'", self.path.display()))
        })
    }

    /// A little-endian f32 tensor as an owned array.
    pub fn f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let view = self.view(name)?;
        self.expect_dtype(name, view.dtype(), Dtype::F32)?;
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        ArrayD::from_shape_vec(IxDyn(view.shape()), data).map_err(|e| Error::internal(e.to_string()))
    }

    /// A little-endian i64 tensor, flattened.
    pub fn i64(&self, name: &str) -> Result<Vec<i64>> {
        let view = self.view(name)?;
        self.expect_dtype(name, view.dtype(), Dtype::I64)?;
        Ok(view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
    }

    fn expect_dtype(&self, name: &str, got: Dtype, want: Dtype) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(Error::invalid_data(format!(
                "'{}': tensor '{name}' is {got:?}, expected {want:?}",
                self.path.display()
            )))
        }
    }

    /// Records a problem unless tensor `name` exists with `shape`.
    pub fn expect_shape(&self, problems: &mut Vec<String>, name: &str, shape: &[usize]) {
        let file =
            self.path.file_name().map_or_else(|| self.path.display().to_string(), |f| f.to_string_lossy().into_owned());
        match self.shape(name) {
            Ok(s) if s == shape => {}
            Ok(s) => problems.push(format!("tensor '{name}' in {file} has shape {s:?}, the manifest says {shape:?}")),
            Err(_) => problems.push(format!("tensor '{name}' named in the manifest is missing from {file}")),
        }
    }
}

fn bad(path: &Path, err: safetensors::SafeTensorError) -> Error {
    Error::new(ErrorKind::Format, format!("'{}' is not a valid safetensors file: {err}", path.display()))
}
