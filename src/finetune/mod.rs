//! Fine-tuning a bundle's model on a new site.
//!
//! - [`step`]: the train-step graph driver ([`Trainer`]): one AdamW step per call on a given batch;
//! - [`sampling`]: the per-step random stream, poly LR, pseudo-label weight ramp, patch sampling;
//! - [`ssft`]: Selective Semi-supervised Fine-tuning ([`FineTuner`], docs/method.md section 2);
//! - `pseudo_label`: pseudo-labels and the check that decides whether they are used;
//! - `batch`: the volumes as the fine-tuner keeps them, and which patches a step draws;
//! - `dice`: per-class Dice, for evaluation and the pseudo-label check;
//! - [`checkpoint`]: crash-safe safetensors checkpoints;
//! - [`onnx_weights`]: fine-tuned weights baked into a standalone inference ONNX model.

mod batch;
pub mod checkpoint;
mod dice;
pub mod onnx_weights;
mod pseudo_label;
pub mod sampling;
pub mod ssft;
pub mod step;

pub use batch::PlannedPatch;
pub use pseudo_label::{PseudoLabelCheck, PseudoLabeled};
pub use ssft::{FineTuneOptions, FineTuner, StepReport};
pub use step::{Batch, StepLoss, Trainer};
