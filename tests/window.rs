//! Sliding-window inference on the demo model: equivalence with a whole-volume pass, tiling,
//! progress, cancellation (between batches and in flight), mirroring. Needs `make ort`.

use std::path::Path;
use std::sync::Arc;

use asfda::bundle::Bundle;
use asfda::cancel::CancelToken;
use asfda::model::Model;
use asfda::runtime::RuntimeOptions;
use asfda::volume::{read_nifti, ReadOptions};
use asfda::window::{sliding_window, OutputNames, WindowOptions, WindowOutput};
use asfda::ErrorKind;
use ndarray::{s, Array4, Axis};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn demo() -> (Bundle, Model) {
    let options = RuntimeOptions { threads: 2, ..Default::default() };
    let bundle = Bundle::load(&root().join("models/demo_brain_unet"), &options).unwrap();
    let model = Model::load(&bundle.inference_path(), &options).unwrap();
    (bundle, model)
}

/// The real MR volume, z-scored, zero-padded into a [1, z, y, x] image.
fn image(shape: [usize; 3]) -> Array4<f32> {
    let v = read_nifti(&root().join("data/anatomical.nii"), &ReadOptions::default()).unwrap();
    let [nx, ny, nz] = v.dims();
    let data = v.data();
    let mean = data.iter().sum::<f32>() / data.len() as f32;
    let std = (data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / data.len() as f32).sqrt();
    let mut out = Array4::zeros((1, shape[0], shape[1], shape[2]));
    for z in 0..nz.min(shape[0]) {
        for y in 0..ny.min(shape[1]) {
            for x in 0..nx.min(shape[2]) {
                out[[0, z, y, x]] = (data[x + nx * (y + ny * z)] - mean) / std;
            }
        }
    }
    out
}

fn names(bundle: &Bundle) -> OutputNames<'_> {
    OutputNames { logits: &bundle.manifest().inference.logits, features: &bundle.manifest().inference.features }
}

/// Runs the sliding window with 64^3 tiles to completion.
fn blend(model: &Model, bundle: &Bundle, img: &Array4<f32>, options: &WindowOptions) -> WindowOutput {
    sliding_window(model, &names(bundle), img.view(), [64, 64, 64], options, &CancelToken::new().unwrap(), &mut |_| {
        true
    })
    .unwrap()
}

#[test]
fn one_tile_covering_the_volume_equals_a_whole_volume_pass() {
    let (bundle, model) = demo();
    let img = image([64, 64, 64]);
    let out = blend(&model, &bundle, &img, &WindowOptions::default());
    let whole = model.run(img.view().insert_axis(Axis(0)).into_dyn()).unwrap();
    let logits = whole[0].index_axis(Axis(0), 0);
    let max_diff = out.logits.iter().zip(logits.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "sliding window vs whole pass: max diff {max_diff}");
    assert_eq!(out.features.shape(), &[1, bundle.manifest().inference.feature_channels]);
}

#[test]
fn overlapping_tiles_cover_the_volume_and_report_progress() {
    let (bundle, model) = demo();
    let img = image([96, 64, 80]);
    let cancel = CancelToken::new().unwrap();
    let mut seen = Vec::new();
    let options = WindowOptions { tiles_per_batch: 1, ..Default::default() };
    let out = sliding_window(&model, &names(&bundle), img.view(), [64, 64, 64], &options, &cancel, &mut |f| {
        seen.push(f);
        true
    })
    .unwrap();
    assert_eq!(out.logits.shape(), &[4, 96, 64, 80]);
    assert_eq!(out.features.nrows(), 4); // z: 0, 32; x: 0, 16
    assert!(out.logits.iter().all(|v| v.is_finite()));
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && (seen[3] - 1.0).abs() < 1e-12, "{seen:?}");
    // Voxel (z 10, y 32, x 5) lies in the first tile only (z tiles start at 0 and 32, x tiles at
    // 0 and 16), so the blend there is exactly that tile's prediction.
    let first = model.run(img.slice(s![.., 0..64, 0..64, 0..64]).insert_axis(Axis(0)).into_dyn()).unwrap();
    let (a, b) = (out.logits[[1, 10, 32, 5]], first[0][[0, 1, 10, 32, 5]]);
    assert!((a - b).abs() < 1e-4, "{a} vs {b}");
}

#[test]
fn progress_returning_false_cancels_and_the_model_stays_usable() {
    let (bundle, model) = demo();
    let img = image([96, 64, 64]);
    let cancel = CancelToken::new().unwrap();
    let options = WindowOptions { tiles_per_batch: 1, ..Default::default() };
    let err = sliding_window(&model, &names(&bundle), img.view(), [64, 64, 64], &options, &cancel, &mut |_| false)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let fresh = CancelToken::new().unwrap();
    assert!(sliding_window(&model, &names(&bundle), img.view(), [64, 64, 64], &options, &fresh, &mut |_| true).is_ok());
}

#[test]
fn cancel_from_another_thread_stops_the_run() {
    let (bundle, model) = demo();
    let img = image([128, 64, 96]);
    let cancel = Arc::new(CancelToken::new().unwrap());
    let remote = Arc::clone(&cancel);
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        remote.cancel();
    });
    // Mirroring makes this long (8 passes x 6 tiles), so the cancel lands mid-run.
    let options = WindowOptions { mirror: true, tiles_per_batch: 3, ..Default::default() };
    let result = sliding_window(&model, &names(&bundle), img.view(), [64, 64, 64], &options, &cancel, &mut |_| true);
    canceller.join().unwrap();
    assert_eq!(result.err().map(|e| e.kind()), Some(ErrorKind::Cancelled));
}

#[test]
fn mirroring_averages_eight_passes() {
    let (bundle, model) = demo();
    let img = image([64, 64, 64]);
    let plain = blend(&model, &bundle, &img, &WindowOptions::default());
    let tta = blend(&model, &bundle, &img, &WindowOptions { mirror: true, ..Default::default() });
    assert_eq!(tta.features.nrows(), 8);
    let diff = tta.logits.iter().zip(plain.logits.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "mirrored passes must change the blend (max diff {diff})");
    assert!(tta.logits.iter().all(|v| v.is_finite()));
}
