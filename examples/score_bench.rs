//! Scoring benchmark (issue #4 item 8): asfda's `Engine::score` against the bare ONNX Runtime
//! session on the same tiles. Driven by scripts/bench_score.sh; each mode runs in its own process
//! so its peak RSS (VmHWM) is its own.
//!
//!   cargo run --release --example score_bench -- score  BUNDLE VOLUME.nii[.gz] REPEATS
//!   cargo run --release --example score_bench -- bare   BUNDLE VOLUME.nii[.gz] REPEATS
//!   cargo run --release --example score_bench -- dump   BUNDLE VOLUME.nii[.gz] OUT.npy
//!
//! `score`: one warm-up `Engine::score`, then REPEATS timed ones (preprocess + sliding window +
//! softmax + scoring). `bare`: `prepare` once, one warm-up sliding window, then one profiled
//! pass of the engine's stages (prepare / sliding window / softmax / score_volume), then
//! REPEATS passes that time only `Model::run` on the same tile batches the engine runs (starts
//! from `window::tile_grid`, `tiles_per_batch` tiles per run; copying tiles out is not timed).
//! `dump`: writes the prepared (resampled, normalised, padded) model input [C, Z, Y, X] as .npy
//! so the Python peers do the same network work, plus OUT.json with the valid region.
//! Every mode prints one `RESULT {json}` line. ORT intra-op threads: 2. The device is
//! `$ASFDA_BENCH_DEVICE` (default `cpu`; e.g. `openvino`, scripts/bench_openvino.sh).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use asfda::bundle::Bundle;
use asfda::cancel::CancelToken;
use asfda::engine::{softmax_in_place, Engine, EngineOptions};
use asfda::model::Model;
use asfda::preprocess::prepare;
use asfda::runtime::RuntimeOptions;
use asfda::score::score_volume;
use asfda::volume::{read_nifti, ReadOptions};
use asfda::window::{gather_tiles, sliding_window, tile_grid, OutputNames, WindowOptions};
use ndarray::s;

const THREADS: usize = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (VmHWM).
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Current resident set size in MiB (VmRSS), e.g. after loading the model.
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn fmt_list(v: &[f64]) -> String {
    format!("[{}]", v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", "))
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims},), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for v in data {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
}

fn main() -> asfda::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: score_bench score|bare|dump BUNDLE VOLUME REPEATS|OUT.npy");
        std::process::exit(2);
    }
    let (mode, dir, volume_path) = (args[0].as_str(), PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let device =
        std::env::var("ASFDA_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse().expect("ASFDA_BENCH_DEVICE");
    let runtime = RuntimeOptions { threads: THREADS, device, ..Default::default() };
    let window = WindowOptions::default(); // overlap 0.5, 2 tiles per batch, sigma 1/8, no mirroring
    let t_read = Instant::now();
    let volume = read_nifti(&volume_path, &ReadOptions::default())?;
    let read_s = t_read.elapsed().as_secs_f64();

    match mode {
        "score" => {
            let repeats: usize = args[3].parse().expect("REPEATS");
            let t = Instant::now();
            let engine = Engine::new(&dir, EngineOptions { runtime, window, ..Default::default() })?;
            let load_s = t.elapsed().as_secs_f64();
            let rss_load = rss_mib();
            let cancel = CancelToken::new()?;
            let t = Instant::now();
            let score = engine.score("bench", &volume, &cancel, &mut |_| true)?;
            let warmup_s = t.elapsed().as_secs_f64();
            let mut times = Vec::new();
            for _ in 0..repeats {
                let t = Instant::now();
                let s = engine.score("bench", &volume, &cancel, &mut |_| true)?;
                times.push(t.elapsed().as_secs_f64());
                assert_eq!(s.to_json(), score.to_json(), "scores must be deterministic");
            }
            println!(
                "RESULT {{\"method\": \"asfda\", \"median_s\": {:.4}, \"times_s\": {}, \"warmup_s\": {warmup_s:.4}, \"load_s\": {load_s:.4}, \"read_s\": {read_s:.4}, \"rss_after_load_mib\": {rss_load:.1}, \"peak_rss_mib\": {:.1}}}",
                median(times.clone()),
                fmt_list(&times),
                peak_rss_mib()
            );
            eprintln!("score: {}", score.to_json());
        }
        "bare" => {
            let repeats: usize = args[3].parse().expect("REPEATS");
            let bundle = Bundle::load(&dir, &runtime)?;
            let model = Model::load(&bundle.inference_path(), &runtime)?;
            let source = bundle.source_knowledge()?.expect("bundle has source knowledge");
            let m = bundle.manifest();
            let tile = m.input.patch_size;
            let rss_load = rss_mib();
            // A warm-up sliding window (ORT plans memory on the first runs), then one profiled
            // pass of the engine's stages.
            let t = Instant::now();
            let prepared = prepare(&volume, &m.input)?;
            let prepare_s = t.elapsed().as_secs_f64();
            let names = OutputNames { logits: &m.inference.logits, features: &m.inference.features };
            let cancel = CancelToken::new()?;
            drop(sliding_window(&model, &names, prepared.image.view(), tile, &window, &cancel, &mut |_| true)?);
            let t = Instant::now();
            let out = sliding_window(&model, &names, prepared.image.view(), tile, &window, &cancel, &mut |_| true)?;
            let window_s = t.elapsed().as_secs_f64();
            let mut probs = out.logits;
            let t = Instant::now();
            softmax_in_place(probs.view_mut());
            let softmax_s = t.elapsed().as_secs_f64();
            let [rz, ry, rx] = prepared.grid.valid_region();
            let t = Instant::now();
            let _score = score_volume(
                "bench",
                probs.slice(s![.., rz, ry, rx]),
                out.features.view(),
                &source,
                &Default::default(),
            )?;
            let score_s = t.elapsed().as_secs_f64();
            drop(probs);

            // Bare ORT: the same tile batches, only Model::run timed.
            let image = prepared.image.view();
            let shape = [image.shape()[1], image.shape()[2], image.shape()[3]];
            let starts = tile_grid(shape, tile, window.overlap);
            let mut times = Vec::new();
            for _ in 0..repeats {
                let mut run_s = 0.0;
                for batch in starts.chunks(window.tiles_per_batch) {
                    let input = gather_tiles(image, batch, tile);
                    let t = Instant::now();
                    let outputs = model.run(input.view().into_dyn())?;
                    run_s += t.elapsed().as_secs_f64();
                    std::hint::black_box(outputs);
                }
                times.push(run_s);
            }
            println!(
                "RESULT {{\"method\": \"bare_ort\", \"median_s\": {:.4}, \"times_s\": {}, \"tiles\": {}, \"tiles_per_batch\": {}, \"model_grid_zyx\": {:?}, \"profile_s\": {{\"prepare\": {prepare_s:.4}, \"sliding_window\": {window_s:.4}, \"softmax\": {softmax_s:.4}, \"score_volume\": {score_s:.4}}}, \"rss_after_load_mib\": {rss_load:.1}, \"peak_rss_mib\": {:.1}}}",
                median(times.clone()),
                fmt_list(&times),
                starts.len(),
                window.tiles_per_batch,
                shape,
                peak_rss_mib()
            );
        }
        "dump" => {
            let bundle = Bundle::load(&dir, &runtime)?;
            let prepared = prepare(&volume, &bundle.manifest().input)?;
            let out = PathBuf::from(&args[3]);
            let img = prepared.image.as_standard_layout();
            write_npy(&out, img.shape(), img.as_slice().expect("contiguous"))
                .map_err(|e| asfda::Error::internal(e.to_string()))?;
            let [rz, ry, rx] = prepared.grid.valid_region();
            let meta = format!(
                "{{\"shape_czyx\": {:?}, \"valid_zyx\": [[{}, {}], [{}, {}], [{}, {}]], \"spacing_xyz\": {:?}}}\n",
                img.shape(),
                rz.start,
                rz.end,
                ry.start,
                ry.end,
                rx.start,
                rx.end,
                prepared.grid.spacing()
            );
            std::fs::write(out.with_extension("json"), &meta).map_err(|e| asfda::Error::internal(e.to_string()))?;
            println!("RESULT {}", meta.trim());
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
    Ok(())
}
