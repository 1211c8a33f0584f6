//! Times one fine-tuning step (forward + backward + AdamW) of a bundle's train-step graph.
//!
//!   cargo run --release --example train_step_time -- [BUNDLE] [N] [SIZE] [REPEATS]
//!
//! Defaults: the demo bundle, batch 2, 64^3 patches, 5 timed steps after one warm-up. Prints the
//! median. Compare with PyTorch eager on the same model: scripts/train_step_time.py.

use std::path::PathBuf;
use std::time::Instant;

use asfda::bundle::Bundle;
use asfda::finetune::{Batch, Trainer};
use asfda::runtime::RuntimeOptions;
use ndarray::{ArrayD, IxDyn};

fn main() -> asfda::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo_brain_unet")));
    let arg = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, size, repeats) = (arg(1, 2), arg(2, 64), arg(3, 5));
    let options = RuntimeOptions { threads: 2, ..Default::default() };
    let bundle = Bundle::load(&dir, &options)?;
    let mut trainer = Trainer::new(&bundle, &options)?;
    let classes = bundle.manifest().classes.len() as i64;
    let image = ArrayD::from_shape_fn(IxDyn(&[n, 1, size, size, size]), |i| {
        ((i[2] * 7 + i[3] * 3 + i[4]) % 17) as f32 / 17.0 - 0.5
    });
    let labels =
        ArrayD::from_shape_fn(IxDyn(&[n, size, size, size]), |i| ((i[1] / 8 + i[2] / 8 + i[3] / 8) as i64) % classes);
    let weights = vec![1.0f32; n];
    let batch = Batch { image: image.view(), labels: labels.view(), loss_weight: &weights };
    trainer.step(&batch, 1e-4, 1e-2)?; // warm-up: ORT plans memory on the first run
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            trainer.step(&batch, 1e-4, 1e-2).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<asfda::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    println!("asfda train step (ORT, 2 threads): N={n} {size}^3 median {:.3} s over {repeats}", times[times.len() / 2]);
    Ok(())
}
