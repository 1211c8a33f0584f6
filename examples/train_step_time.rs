//! Times one fine-tuning step (forward + backward + AdamW) of a bundle's train-step graph.
//!
//!   cargo run --release --example train_step_time -- [BUNDLE] [N] [SIZE] [REPEATS] [THREADS]
//!
//! Defaults: the demo bundle, batch 2, 64^3 patches, 5 timed steps after one warm-up, 2 threads.
//! The device is `$ASFDA_BENCH_DEVICE` (default `cpu`; e.g. `openvino`, scripts/bench_openvino.sh).
//! Prints the median step time, the peak RSS and every step's loss (the warm-up's first) on one
//! `RESULT` line. Its PyTorch-eager peer, scripts/train_step_time.py, takes the same synthetic
//! batch and the bundle's weights and optimiser, so the losses must agree; both are run by
//! scripts/bench_train_step.sh.

use std::path::PathBuf;
use std::time::Instant;

use asfda::bundle::Bundle;
use asfda::finetune::{Batch, Trainer};
use asfda::runtime::RuntimeOptions;
use ndarray::{ArrayD, IxDyn};

/// Learning rate and weight decay of every step (the PyTorch peer uses the same).
const LR: f32 = 1e-4;
const WEIGHT_DECAY: f32 = 1e-2;

/// Peak resident set size of this process in MiB (Linux; 0 where /proc is unavailable).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() -> asfda::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo_brain_unet")));
    let arg = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, size, repeats, threads) = (arg(1, 2), arg(2, 64), arg(3, 5), arg(4, 2));
    let device = std::env::var("ASFDA_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse()?;
    let options = RuntimeOptions { threads, device, ..Default::default() };
    let bundle = Bundle::load(&dir, &options)?;
    let mut trainer = Trainer::new(&bundle, &options)?;
    let classes = bundle.manifest().classes.len() as i64;
    // The synthetic batch; scripts/train_step_time.py builds the identical one.
    let image = ArrayD::from_shape_fn(IxDyn(&[n, 1, size, size, size]), |i| {
        ((i[0] * 5 + i[2] * 7 + i[3] * 3 + i[4]) % 17) as f32 / 17.0 - 0.5
    });
    let labels =
        ArrayD::from_shape_fn(IxDyn(&[n, size, size, size]), |i| ((i[1] / 8 + i[2] / 8 + i[3] / 8) as i64) % classes);
    let weights = vec![1.0f32; n];
    let batch = Batch { image: image.view(), labels: labels.view(), loss_weight: &weights };
    let mut losses = vec![trainer.step(&batch, LR, WEIGHT_DECAY)?.loss]; // warm-up: ORT plans memory
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        losses.push(trainer.step(&batch, LR, WEIGHT_DECAY)?.loss);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let losses: Vec<String> = losses.iter().map(|l| format!("{l:.7}")).collect();
    println!(
        "RESULT impl=asfda-ort device={} threads={threads} n={n} size={size} repeats={repeats} median_s={:.4} peak_rss_mib={:.0} losses={}",
        trainer.device(),
        times[times.len() / 2],
        peak_rss_mib(),
        losses.join(",")
    );
    Ok(())
}
