//! Fine-tuning a bundle's model on a new site.
//!
//! - [`step`]: the train-step graph driver ([`Trainer`]): one AdamW step per call on a given batch;
//! - [`sampling`]: the per-step random stream, poly LR, pseudo-label weight ramp, patch sampling;
//! - [`ssft`]: Selective Semi-supervised Fine-tuning ([`FineTuner`], method.md section 2);
//! - `dice`: per-class Dice, for evaluation and the pseudo-label check;
//! - [`checkpoint`]: crash-safe safetensors checkpoints;
//! - [`onnx_weights`]: fine-tuned weights baked into a standalone inference ONNX model.

pub mod checkpoint;
mod dice;
pub mod onnx_weights;
pub mod sampling;
pub mod ssft;
pub mod step;

pub use ssft::{FineTuneOptions, FineTuner, PlannedPatch, PseudoLabelCheck, PseudoLabeled, StepReport};
pub use step::{Batch, StepLoss, Trainer};
