//! Peak memory of segmenting and scoring a large volume (issue 4 item 3): with z-slab streaming,
//! the Rust heap at its peak — the caller's input volume included — stays within 3x the input's
//! f32 size, and the engine's own estimate (which the memory limit compares) is not below it.
//!
//! A counting global allocator records the peak of live Rust heap bytes; ONNX Runtime allocates
//! through its own allocator and is not seen here (VmHWM, printed, includes it). The spacing
//! (0.5 mm, model at 2 mm) keeps the model grid small so the test is quick; the input is
//! full-size. Needs `make ort`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, EngineOptions, SegmentOutputs, Work};
use asfda::finetune::{FineTuneOptions, FineTuner};
use asfda::preprocess::prepare;
use asfda::runtime::RuntimeOptions;
use asfda::volume::Volume;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc contract, passed on unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc contract, passed on unchanged to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's GlobalAlloc contract, passed on unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc contract, passed on unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block arriving before the old one leaves (a moving realloc).
            grew(new_size);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the peak is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn vm_hwm_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .map_or("?".into(), |kib| format!("{} MiB", kib.parse::<u64>().map_or(0, |k| k / 1024)))
}

/// A smooth synthetic head-like volume of `dims` at `spacing` mm (RAS): a bright ellipsoid with
/// an inner structure on a dark background, so the model predicts several classes.
fn phantom(dims: [usize; 3], spacing: f64) -> Volume {
    let [nx, ny, nz] = dims;
    let mut data = Vec::with_capacity(nx * ny * nz);
    for z in 0..nz {
        let dz = (z as f32 / nz as f32 - 0.5) * 2.0;
        for y in 0..ny {
            let dy = (y as f32 / ny as f32 - 0.5) * 2.0;
            for x in 0..nx {
                let dx = (x as f32 / nx as f32 - 0.5) * 2.0;
                let r = dx * dx + dy * dy + dz * dz;
                data.push(if r < 0.25 {
                    600.0
                } else if r < 0.7 {
                    900.0
                } else {
                    0.0
                });
            }
        }
    }
    let mut affine = [[0.0; 4]; 4];
    for (a, row) in affine.iter_mut().enumerate().take(3) {
        row[a] = spacing;
    }
    affine[3][3] = 1.0;
    Volume::new(data, dims, 1, affine).unwrap()
}

fn demo_engine() -> Engine {
    let options = EngineOptions { runtime: RuntimeOptions { threads: 2, ..Default::default() }, ..Default::default() };
    Engine::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo_brain_unet"), options).unwrap()
}

/// Segments and scores a volume of `dims` at 0.5 mm and returns (peak heap bytes over the
/// baseline, including the input; input bytes; the engine's estimate for segmentation).
fn measure(dims: [usize; 3], spacing: f64) -> (usize, usize, u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let engine = demo_engine();
    let baseline = CURRENT.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let image = phantom(dims, spacing);
    let input = image.data().len() * 4;
    let estimate = engine.memory_estimate(&image, Work::Segment(SegmentOutputs::default())).unwrap();
    let cancel = CancelToken::new().unwrap();
    let seg = engine.segment(&image, SegmentOutputs::default(), &cancel, &mut |_| true).unwrap();
    assert!(seg.labels.same_grid(&image));
    let classes: std::collections::BTreeSet<u32> = seg.labels.data().iter().step_by(997).map(|&l| l as u32).collect();
    assert!(classes.len() >= 2, "the phantom should give more than one class: {classes:?}");
    drop(seg);
    let score = engine.score("big", &image, &cancel, &mut |_| true).unwrap();
    // Scored over the unpadded model grid (2 mm).
    let model_dims = dims.map(|d| (d as f64 * spacing / 2.0).round() as u64);
    assert_eq!(score.voxels, model_dims.iter().product::<u64>());
    let peak = PEAK.load(Ordering::SeqCst) - baseline;
    eprintln!(
        "memory {dims:?} at {spacing} mm: input {} MiB, peak Rust heap {} MiB ({:.2}x the input), estimate {} MiB, VmHWM {}",
        input >> 20,
        peak >> 20,
        peak as f64 / input as f64,
        estimate >> 20,
        vm_hwm_mib()
    );
    // The same volume at the model's own spacing (2 mm: the model grid is the input grid), for
    // the record: the estimate only, nothing is run.
    let mut affine = image.affine();
    (0..3).for_each(|a| affine[a][a] = 2.0);
    let native = Volume::new(image.into_data(), dims, 1, affine).unwrap();
    let mib = |w: Work| engine.memory_estimate(&native, w).unwrap() >> 20;
    eprintln!(
        "memory {dims:?} at 2 mm (estimates): score {} MiB, segment {} MiB, segment + probabilities + entropy {} MiB",
        mib(Work::Score),
        mib(Work::Segment(SegmentOutputs::default())),
        mib(Work::Segment(SegmentOutputs { probabilities: true, entropy: true }))
    );
    (peak, input, estimate)
}

fn check(dims: [usize; 3]) {
    let (peak, input, estimate) = measure(dims, 0.5);
    assert!(peak <= 3 * input, "peak Rust heap {peak} bytes > 3x the input's {input}");
    assert!(estimate >= peak as u64, "the memory estimate {estimate} is below the measured peak {peak}");
    assert!(estimate <= 3 * input as u64, "the estimate {estimate} > 3x the input {input}");
}

/// At the model's own spacing the volume is read in place and the accumulators span one tile of
/// z over the whole plane, so the ratio depends on the volume's depth (it is not asserted here);
/// the estimate must still cover the measured peak.
#[test]
fn the_estimate_covers_the_peak_when_the_volume_is_read_in_place() {
    let (peak, _, estimate) = measure([128, 128, 96], 2.0);
    assert!(estimate >= peak as u64, "the memory estimate {estimate} is below the measured peak {peak}");
}

#[test]
fn a_quarter_size_volume_stays_within_three_times_its_input() {
    check([256, 256, 200]);
}

#[test]
#[ignore = "512x512x400: 400 MiB input, ~1.2 GB peak RSS, ~70 s in release; run by hand: cargo test --release --test memory -- --ignored"]
fn a_512_by_512_by_400_volume_stays_within_three_times_its_input() {
    check([512, 512, 400]);
}

/// Inference on a prepared image (what the fine-tuner's pseudo-label check and refreshes run):
/// the estimate the memory limit compares covers the measured peak, the image included.
#[test]
fn the_estimate_covers_the_peak_of_inference_on_a_prepared_image() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let engine = demo_engine();
    let image = phantom([128, 128, 96], 2.0);
    let prepared = prepare(&image, &engine.bundle().manifest().input).unwrap();
    drop(image);
    let image_bytes = prepared.image.len() * 4;
    let baseline = CURRENT.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let inference = engine
        .infer_prepared(prepared.image.view(), &prepared.grid, &CancelToken::new().unwrap(), &mut |_| true)
        .unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - baseline + image_bytes;
    drop(inference);
    let estimate = engine.memory_estimate_prepared(&prepared.grid);
    eprintln!(
        "infer_prepared: image {} MiB, peak {} MiB, estimate {} MiB",
        image_bytes >> 20,
        peak >> 20,
        estimate >> 20
    );
    assert!(estimate >= peak as u64, "the memory estimate {estimate} is below the measured peak {peak}");
}

/// A fine-tuner keeps an added volume on the model grid only (its prepared image, labels and
/// foreground index), not a copy of the caller's volume, also after the pseudo-label check ran
/// on it. At 0.5 mm the model grid (2 mm) has 1/64 of the voxels, so a kept copy of the image
/// would show as more than the input's size.
#[test]
fn a_fine_tuner_keeps_no_copy_of_the_callers_volume() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let engine = demo_engine();
    let image = phantom([256, 256, 200], 0.5);
    let label_data = image
        .data()
        .iter()
        .map(|&v| {
            if v > 800.0 {
                2.0
            } else if v > 0.0 {
                3.0
            } else {
                0.0
            }
        })
        .collect();
    let label = Volume::new(label_data, image.dims(), 1, image.affine()).unwrap();
    let input = image.data().len() * 4;
    let mut tuner = FineTuner::new(&engine, FineTuneOptions::default()).unwrap();
    let before = CURRENT.load(Ordering::SeqCst);
    tuner.add_labeled("big", &image, &label).unwrap();
    tuner.add_unlabeled("big2", &image).unwrap();
    let check = tuner.check_pseudo_labels().unwrap().clone();
    let kept = CURRENT.load(Ordering::SeqCst) - before;
    eprintln!(
        "fine-tuner: input {} MiB, kept after adding it twice and the check {} MiB (check Dice {:.3})",
        input >> 20,
        kept >> 20,
        check.foreground_dice
    );
    assert!(kept < input / 4, "the fine-tuner kept {kept} bytes for two volumes of {input} bytes");
}
