//! The train-step graph driver: runs a bundle's standard-op train-step graph (DiceCE forward +
//! backward + AdamW) in an ordinary ONNX Runtime session, feeding each step's updated parameters
//! and moments back as the next step's inputs. See docs/fine-tuning.md for why training
//! is a graph. Batches, schedules and data live one level up ([`super::FineTuner`]).

use std::borrow::Cow;
use std::path::PathBuf;

use ndarray::{ArrayD, ArrayViewD};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use crate::bundle::{Bundle, TrainingSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{openvino_unavailable, Device, ModelSource, Runtime, RuntimeOptions};
use crate::tensors::TensorFile;

/// One training batch: images [N, C, Z, Y, X], labels [N, Z, Y, X] (class indices, or the
/// bundle's ignore label) and a loss weight per sample (pseudo-labelled samples get less).
pub struct Batch<'a> {
    pub image: ArrayViewD<'a, f32>,
    pub labels: ArrayViewD<'a, i64>,
    pub loss_weight: &'a [f32],
}

/// The loss of one graph step (computed before that step's update) and the step's number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    pub loss: f32,
    pub loss_ce: f32,
    pub loss_dice: f32,
    /// 1-based number of the step just taken.
    pub step: i64,
}

/// One named state tensor of the optimiser: a parameter or a moment.
struct StateTensor {
    /// Train-step input name (`param.<name>`, `m.<name>`, `v.<name>`).
    input: String,
    /// Output carrying its update (`new.<input>`), if trainable.
    output: Option<String>,
    value: ArrayD<f32>,
}

/// How many train-step shapes keep a compiled OpenVINO session (a fine-tuning run uses one:
/// its patch size and batch size are fixed).
const OPENVINO_SHAPES_KEPT: usize = 4;

/// The train-step sessions.
enum Sessions {
    /// One session whose shapes follow the inputs (CPU and CUDA providers).
    Dynamic(Session),
    /// OpenVINO compiles the train step only for fixed input shapes (its weight-gradient
    /// convolutions refuse dynamic weight shapes): one session per batch shape, made on first
    /// use. With `auto`, a shape OpenVINO refuses switches the trainer to the CPU provider.
    PerShape { sessions: Vec<(Vec<usize>, Session)>, auto: bool },
}

/// Parameters, AdamW moments and step count, driven through the train-step graph.
pub struct Trainer {
    sessions: Sessions,
    runtime: &'static Runtime,
    train_step: PathBuf,
    options: RuntimeOptions,
    spec: TrainingSpec,
    classes: usize,
    state: Vec<StateTensor>,
    step: i64,
    device: Device,
}

impl Trainer {
    /// Loads the train-step graph and the bundle's checkpoint.
    ///
    /// On OpenVINO (device `openvino`, or `auto` without CUDA when the OpenVINO plugin is usable)
    /// the graph is compiled at the first step of each batch shape; an explicit `openvino`
    /// without a usable plugin fails here.
    pub fn new(bundle: &Bundle, options: &RuntimeOptions) -> Result<Trainer> {
        let spec = bundle.training()?.clone();
        let runtime = Runtime::load(options.library_path.as_deref())?;
        let train_step = bundle.path(&spec.train_step);
        let openvino = options.openvino_library.as_deref();
        let per_shape = match options.device {
            Device::OpenVino => {
                runtime.openvino(openvino).map_err(|why| openvino_unavailable(&why))?;
                Some(false)
            }
            Device::Auto if !runtime.cuda_available() && runtime.openvino(openvino).is_ok() => Some(true),
            _ => None,
        };
        let (sessions, device) = match per_shape {
            Some(auto) => {
                if !train_step.is_file() {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("model file '{}' does not exist", train_step.display()),
                    ));
                }
                if auto {
                    log::info!("device 'auto' runs the train step on openvino (no CUDA provider)");
                }
                (Sessions::PerShape { sessions: Vec::new(), auto }, Device::OpenVino)
            }
            None => {
                let (session, device) = runtime.session(options, ModelSource::File(&train_step), None, Ok)?;
                (Sessions::Dynamic(session), device)
            }
        };
        let checkpoint = TensorFile::open(&bundle.path(&spec.checkpoint))?;
        let state = load_state(&spec, &checkpoint)?;
        let step = checkpoint.i64(&spec.io.step_checkpoint_key)?.first().copied().unwrap_or(0);
        Ok(Trainer {
            sessions,
            runtime,
            train_step,
            options: options.clone(),
            spec,
            classes: bundle.manifest().classes.len(),
            state,
            step,
            device,
        })
    }

    /// Makes sure a session for `batch`'s shapes exists: the one dynamic session, or on OpenVINO
    /// the one compiled for these shapes (compiled now if new).
    fn prepare_session(&mut self, batch: &Batch<'_>) -> Result<()> {
        let Sessions::PerShape { sessions, auto } = &mut self.sessions else { return Ok(()) };
        let key = shape_key(batch);
        if sessions.iter().any(|(k, _)| *k == key) {
            return Ok(());
        }
        let io = &self.spec.io;
        let dims = |d: &[usize]| d.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let shapes = format!(
            "{}[{}],{}[{}],{}[{}]",
            io.image,
            dims(batch.image.shape()),
            io.labels,
            dims(batch.labels.shape()),
            io.loss_weight,
            batch.loss_weight.len()
        );
        let openvino = RuntimeOptions { device: Device::OpenVino, ..self.options.clone() };
        match self.runtime.session(&openvino, ModelSource::File(&self.train_step), Some(&shapes), Ok) {
            Ok((session, _)) => {
                log::debug!("compiled the train step on OpenVINO for {shapes}");
                if sessions.len() >= OPENVINO_SHAPES_KEPT {
                    sessions.remove(0);
                }
                sessions.push((key, session));
                Ok(())
            }
            Err(e) if *auto => {
                log::info!("device 'auto' falls back to the CPU for the train step: {e}");
                let cpu = RuntimeOptions { device: Device::Cpu, ..self.options.clone() };
                let (session, device) = self.runtime.session(&cpu, ModelSource::File(&self.train_step), None, Ok)?;
                self.sessions = Sessions::Dynamic(session);
                self.device = device;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The device the train step runs on (`auto` resolved; with `auto`, OpenVINO refusing a
    /// batch shape at its first step turns this into the CPU).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Steps taken so far (the checkpoint's count included).
    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// Every state tensor as (train-step input name, value): `param.*`, `m.*`, `v.*`, in the
    /// manifest's parameter order — what a checkpoint holds besides the step count.
    pub fn state(&self) -> impl Iterator<Item = (&str, &ArrayD<f32>)> {
        self.state.iter().map(|s| (s.input.as_str(), &s.value))
    }

    /// The name of the step-count tensor in checkpoints.
    pub fn step_key(&self) -> &str {
        &self.spec.io.step_checkpoint_key
    }

    /// Replaces the whole state (every tensor of [`Trainer::state`], by name) and the step count.
    /// Nothing changes unless every tensor is present with the shape the bundle declares.
    pub fn restore(&mut self, mut lookup: impl FnMut(&str) -> Option<ArrayD<f32>>, step: i64) -> Result<()> {
        let mut values = Vec::with_capacity(self.state.len());
        for s in &self.state {
            let value = lookup(&s.input).ok_or_else(|| {
                Error::invalid_data(format!("the checkpoint has no tensor '{}', which this bundle trains", s.input))
            })?;
            if value.shape() != s.value.shape() {
                return Err(Error::invalid_data(format!(
                    "checkpoint tensor '{}' has shape {:?}; this bundle's is {:?}",
                    s.input,
                    value.shape(),
                    s.value.shape()
                )));
            }
            values.push(value);
        }
        if step < 0 {
            return Err(Error::invalid_data(format!("the checkpoint's step count is negative ({step})")));
        }
        for (s, value) in self.state.iter_mut().zip(values) {
            s.value = value;
        }
        self.step = step;
        Ok(())
    }

    /// Current parameters as (inference-graph initializer name, value), to run the model with
    /// the fine-tuned weights.
    pub fn weights(&self) -> Vec<(&str, &ArrayD<f32>)> {
        self.spec
            .parameters
            .iter()
            .filter_map(|p| {
                let input = self.spec.io.param(&p.name);
                self.state.iter().find(|s| s.input == input).map(|s| (p.initializer.as_str(), &s.value))
            })
            .collect()
    }

    /// One AdamW step on `batch` with learning rate `lr` and decoupled weight decay.
    pub fn step(&mut self, batch: &Batch<'_>, lr: f32, weight_decay: f32) -> Result<StepLoss> {
        self.check_batch(batch)?;
        self.prepare_session(batch)?;
        let session = match &mut self.sessions {
            Sessions::Dynamic(session) => session,
            Sessions::PerShape { sessions, .. } => {
                let key = shape_key(batch);
                let found = sessions.iter_mut().find(|(k, _)| *k == key);
                &mut found.ok_or_else(|| Error::internal("no OpenVINO session for this batch shape"))?.1
            }
        };
        let io = &self.spec.io;
        let step_number = self.step + 1;
        let scalars = [(lr, &io.lr), (step_number as f32, &io.step), (weight_decay, &io.weight_decay)];
        let scalar_arrays: Vec<ArrayD<f32>> = scalars.iter().map(|(v, _)| ndarray::arr0(*v).into_dyn()).collect();
        let weights = ArrayViewD::from_shape(ndarray::IxDyn(&[batch.loss_weight.len()]), batch.loss_weight)
            .map_err(|e| Error::internal(e.to_string()))?;

        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (io.image.as_str().into(), TensorRef::from_array_view(batch.image.view())?.into()),
            (io.labels.as_str().into(), TensorRef::from_array_view(batch.labels.view())?.into()),
            (io.loss_weight.as_str().into(), TensorRef::from_array_view(weights)?.into()),
        ];
        for ((_, name), array) in scalars.iter().zip(&scalar_arrays) {
            inputs.push((name.as_str().into(), TensorRef::from_array_view(array.view())?.into()));
        }
        for s in &self.state {
            inputs.push((s.input.as_str().into(), TensorRef::from_array_view(s.value.view())?.into()));
        }
        let outputs = session.run(inputs)?;
        let scalar = |name: &str| -> Result<f32> {
            Ok(*outputs[name]
                .try_extract_array::<f32>()?
                .iter()
                .next()
                .ok_or_else(|| Error::new(ErrorKind::Model, format!("output '{name}' is empty")))?)
        };
        let report = StepLoss {
            loss: scalar(&io.loss)?,
            loss_ce: scalar(&io.loss_ce)?,
            loss_dice: scalar(&io.loss_dice)?,
            step: step_number,
        };
        if !report.loss.is_finite() {
            // Keep the previous state: a NaN step must not poison the weights.
            return Err(Error::new(ErrorKind::InvalidData, format!("step {step_number} produced a non-finite loss ({}); state left unchanged (lower the learning rate?)", report.loss)));
        }
        let updates: Vec<(usize, ArrayD<f32>)> = self
            .state
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.output.as_ref().map(|o| (i, o)))
            .map(|(i, o)| Ok((i, outputs[o.as_str()].try_extract_array::<f32>()?.to_owned())))
            .collect::<Result<_>>()?;
        drop(outputs);
        for (i, value) in updates {
            self.state[i].value = value;
        }
        self.step = step_number;
        Ok(report)
    }

    /// Shapes must agree with each other and the model; labels must be classes or the ignore label.
    fn check_batch(&self, batch: &Batch<'_>) -> Result<()> {
        let (img, lab) = (batch.image.shape(), batch.labels.shape());
        let n = batch.loss_weight.len();
        if img.len() != 5 || lab.len() != 4 || img[0] != n || lab[0] != n || img[2..] != lab[1..] {
            return Err(Error::invalid_argument(format!(
                "batch shapes disagree: image {img:?} must be [N, C, Z, Y, X], labels {lab:?} [N, Z, Y, X], loss weights {n}"
            )));
        }
        let ignore = self.spec.loss.ignore_label;
        if let Some(bad) = batch.labels.iter().find(|&&l| l != ignore && !(0..self.classes as i64).contains(&l)) {
            return Err(Error::invalid_argument(format!(
                "label value {bad} is neither a class (0..{}) nor the ignore label {ignore}",
                self.classes - 1
            )));
        }
        Ok(())
    }
}

/// A batch's shapes: image, labels, number of loss weights.
fn shape_key(batch: &Batch<'_>) -> Vec<usize> {
    batch.image.shape().iter().chain(batch.labels.shape()).copied().chain([batch.loss_weight.len()]).collect()
}

fn load_state(spec: &TrainingSpec, checkpoint: &TensorFile) -> Result<Vec<StateTensor>> {
    let io = &spec.io;
    let mut state = Vec::new();
    for p in &spec.parameters {
        let inputs =
            if p.trainable { vec![io.param(&p.name), io.m(&p.name), io.v(&p.name)] } else { vec![io.param(&p.name)] };
        for input in inputs {
            let value = checkpoint.f32(&input)?;
            let output = p.trainable.then(|| io.updated(&input));
            state.push(StateTensor { input, output, value });
        }
    }
    Ok(state)
}
