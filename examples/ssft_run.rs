//! A small SSFT run on a synthetic target site, timing each step.
//!
//!   cargo run --release --example ssft_run -- [SITE] [LABELED] [UNLABELED] [STEPS] [PATCH] [BATCH] [EXPORT_DIR]
//!
//! Defaults: site pd, 2 annotated + 2 pseudo-labelled pool volumes, 20 steps of batch 2 at 32^3,
//! then Dice per class on two held-out volumes before and after (skipped with ASFDA_SSFT_EVAL=0),
//! and the adapted bundle exported to EXPORT_DIR if given. Needs `make ort data`.
//! Subjects are synthetic derivatives of real anatomy; the site shifts are simulated.

use std::path::{Path, PathBuf};
use std::time::Instant;

use asfda::engine::{Engine, EngineOptions};
use asfda::finetune::{FineTuneOptions, FineTuner};
use asfda::runtime::RuntimeOptions;
use asfda::volume::{read_nifti, ReadOptions, Volume};

fn read(path: &Path) -> asfda::Result<Volume> {
    read_nifti(path, &ReadOptions::default())
}

fn main() -> asfda::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let site = args.first().cloned().unwrap_or_else(|| "pd".into());
    let arg = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n_labeled, n_unlabeled, steps, patch, batch) = (arg(1, 2), arg(2, 2), arg(3, 20), arg(4, 32), arg(5, 2));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = root.join(".cache/data/synthetic-v1").join(&site);
    let options = EngineOptions { runtime: RuntimeOptions { threads: 2, ..Default::default() }, ..Default::default() };
    let engine = Engine::new(&root.join("models/demo_brain_unet"), options)?;
    let ft_options = FineTuneOptions {
        patch_size: Some([patch; 3]),
        batch_size: batch,
        total_steps: steps as u64,
        ..Default::default()
    };
    let mut tuner = FineTuner::new(&engine, ft_options)?;
    let pool = |i: usize| data.join("pool").join(format!("{site}_pool_{i:03}_image.nii.gz"));
    let label = |i: usize| data.join("pool_labels").join(format!("{site}_pool_{i:03}_label.nii.gz"));
    for i in 0..n_labeled {
        tuner.add_labeled(&format!("pool_{i:03}"), &read(&pool(i))?, &read(&label(i))?)?;
    }
    for i in n_labeled..n_labeled + n_unlabeled {
        let t = Instant::now();
        let kept = tuner.add_unlabeled(&format!("pool_{i:03}"), &read(&pool(i))?)?;
        println!(
            "pseudo-labelled pool_{i:03}: {:.1}% of voxels reliable ({:.2} s)",
            kept * 100.0,
            t.elapsed().as_secs_f64()
        );
    }
    let test: Vec<(Volume, Volume)> = (0..2)
        .map(|i| {
            let dir = data.join("test");
            Ok((
                read(&dir.join(format!("{site}_test_{i:03}_image.nii.gz")))?,
                read(&dir.join(format!("{site}_test_{i:03}_label.nii.gz")))?,
            ))
        })
        .collect::<asfda::Result<_>>()?;
    let cases: Vec<(&Volume, &Volume)> = test.iter().map(|(a, b)| (a, b)).collect();
    let evaluate = std::env::var("ASFDA_SSFT_EVAL").map_or(true, |v| v != "0");
    if evaluate {
        println!("Dice before: {:?}", tuner.evaluate(&cases)?);
    }
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let r = tuner.step()?;
        times.push(t.elapsed().as_secs_f64());
        println!("step {:3}: {r} ({:.3} s)", r.step, times.last().unwrap());
    }
    if evaluate {
        println!("Dice after: {:?}", tuner.evaluate(&cases)?);
    }
    if let Some(dir) = args.get(6) {
        tuner.export_bundle(Path::new(dir))?;
        println!("adapted bundle written to {dir}");
    }
    times.sort_by(f64::total_cmp);
    println!("median step {:.3} s (batch {batch}, {patch}^3)", times[times.len() / 2]);
    Ok(())
}
