//! A loaded ONNX model with one f32 image input, run on the device chosen at load time.
//!
//! The session is behind a mutex because ORT's `Session::run` takes `&mut self` in ort 2.0;
//! a `Model` can therefore be shared between threads (calls are serialised).

use std::path::Path;
use std::sync::Mutex;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ort::session::builder::SessionBuilder;
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{Device, ModelSource, Runtime, RuntimeOptions};
use crate::volume::Volume;

/// An ONNX model ready to run.
pub struct Model {
    session: Mutex<Session>,
    input_name: String,
    output_names: Vec<String>,
    device: Device,
}

impl Model {
    /// Loads ONNX Runtime per `options` (if not yet loaded) and the model at `path`.
    pub fn load(path: &Path, options: &RuntimeOptions) -> Result<Model> {
        Self::load_with_weights(path, options, &[])
    }

    /// Like [`Model::load`], but replaces the named initializers (weights) of the graph with
    /// `weights`, e.g. fine-tuned parameters, without touching the file on disk.
    pub fn load_with_weights(path: &Path, options: &RuntimeOptions, weights: &[(&str, &ArrayD<f32>)]) -> Result<Model> {
        if !weights.is_empty() && bakes_weights(options.device) {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read model '{}': {e}", path.display())))?;
            return Self::from_memory_with_weights(&bytes, &path.display().to_string(), options, weights);
        }
        let runtime = Runtime::load(options.library_path.as_deref())?;
        let (session, device) =
            runtime.session(options, ModelSource::File(path), None, |b| with_weights(b, weights))?;
        Self::from_session(session, device, &path.display().to_string())
    }

    /// Like [`Model::load_with_weights`], from the bytes of the ONNX model (`name` labels errors).
    pub fn from_memory_with_weights(
        bytes: &[u8],
        name: &str,
        options: &RuntimeOptions,
        weights: &[(&str, &ArrayD<f32>)],
    ) -> Result<Model> {
        let runtime = Runtime::load(options.library_path.as_deref())?;
        if !weights.is_empty() && bakes_weights(options.device) {
            let baked = crate::finetune::onnx_weights::bake_weights(bytes, weights)?;
            let (session, device) = runtime.session(options, ModelSource::Memory(&baked, name), None, Ok)?;
            return Self::from_session(session, device, name);
        }
        let (session, device) =
            runtime.session(options, ModelSource::Memory(bytes, name), None, |b| with_weights(b, weights))?;
        Self::from_session(session, device, name)
    }

    fn from_session(session: Session, device: Device, name: &str) -> Result<Model> {
        let input_name = match session.inputs() {
            [one] => one.name().to_string(),
            inputs => {
                return Err(Error::new(
                    ErrorKind::Model,
                    format!("model '{name}' has {} inputs; asfda expects exactly one image input", inputs.len()),
                ))
            }
        };
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(Model { session: Mutex::new(session), input_name, output_names, device })
    }

    /// The device the session actually runs on (`Auto` resolved).
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs the model on one input tensor (e.g. N x C x D x H x W) and returns every output as an
    /// owned f32 array, in the model's output order.
    pub fn run(&self, input: ArrayViewD<'_, f32>) -> Result<Vec<ArrayD<f32>>> {
        self.run_inner(input, None)
    }

    /// Like [`Model::run`], with run options through which another thread can terminate the
    /// run in flight (`RunOptions::terminate`).
    pub fn run_with_options(&self, input: ArrayViewD<'_, f32>, options: &RunOptions) -> Result<Vec<ArrayD<f32>>> {
        self.run_inner(input, Some(options))
    }

    fn run_inner(&self, input: ArrayViewD<'_, f32>, options: Option<&RunOptions>) -> Result<Vec<ArrayD<f32>>> {
        // ORT needs contiguous memory; a standard-layout view is borrowed as is, anything else copied.
        let input = input.as_standard_layout();
        let tensor = TensorRef::from_array_view(&input)?;
        let mut session =
            self.session.lock().map_err(|_| Error::internal("model session lock poisoned by an earlier panic"))?;
        let inputs = ort::inputs![self.input_name.as_str() => tensor];
        let outputs = match options {
            Some(o) => session.run_with_options(inputs, o)?,
            None => session.run(inputs)?,
        };
        self.output_names.iter().map(|name| Ok(outputs[name.as_str()].try_extract_array::<f32>()?.to_owned())).collect()
    }
}

impl Model {
    /// Runs the model on a whole volume and returns its first output as a volume on the same grid.
    ///
    /// Tensor layout: a volume's voxels are stored x fastest (NIfTI order), which read in C order
    /// is `[C, Z, Y, X]`; the model sees `[1, C, Z, Y, X]` without any copy or transposition.
    pub fn run_volume(&self, volume: &Volume) -> Result<Volume> {
        let [nx, ny, nz] = volume.dims();
        let shape = IxDyn(&[1, volume.channels(), nz, ny, nx]);
        let input =
            ArrayViewD::from_shape(shape, volume.data()).map_err(|e| Error::internal(format!("volume layout: {e}")))?;
        let first =
            self.run(input)?.into_iter().next().ok_or_else(|| Error::new(ErrorKind::Model, "model has no outputs"))?;
        match *first.shape() {
            [1, channels, z, y, x] if [x, y, z] == [nx, ny, nz] => {
                let data = first.as_standard_layout().iter().copied().collect();
                Volume::new(data, volume.dims(), channels, volume.affine())
            }
            ref other => Err(Error::new(
                ErrorKind::Model,
                format!(
                    "model output '{}' has shape {other:?}; expected [1, C, {nz}, {ny}, {nx}] to map it back onto the volume grid",
                    self.output_names[0]
                ),
            )),
        }
    }
}

/// Whether weights go into the model's bytes rather than through ONNX Runtime's initializer
/// overrides: the OpenVINO plugin compiles the graph's own initializers and ignores the overrides
/// (a fine-tuned engine would silently run the original weights; tests/finetune.rs), so on
/// `openvino` (and `auto`, which may pick it) they are baked in.
fn bakes_weights(device: Device) -> bool {
    matches!(device, Device::OpenVino | Device::Auto)
}

/// Overrides the named initializers of the graph being built.
fn with_weights(mut builder: SessionBuilder, weights: &[(&str, &ArrayD<f32>)]) -> ort::Result<SessionBuilder> {
    for (name, array) in weights {
        // ORT keeps a pointer to the value, so it must own its memory (a copy).
        let value = ort::value::Tensor::from_array((*array).clone())?.into_dyn();
        builder = builder.with_initializer(*name, value).map_err(|e| -> ort::Error { e.into() })?;
    }
    Ok(builder)
}
