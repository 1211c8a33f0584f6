//! The report renderer on real data: synthetic target-site volumes, their entropy and scores from
//! the demo bundle, a real selection. Needs `make ort` and `make data`. Subjects are synthetic
//! derivatives of real anatomy; site shifts are simulated. (Formerly `tests/report.rs`: the
//! renderer moved from the library into the CLI, so its tests run as the binary's unit tests.)
//!
//! Volumes are centre crops (one model tile each) to keep the debug-build runtime modest.

use std::path::{Path, PathBuf};

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, EngineOptions, SegmentOutputs};
use asfda::runtime::RuntimeOptions;
use asfda::select::{select, SelectOptions};
use asfda::volume::{read_nifti, ReadOptions, Volume};

use super::render::{render_figure, write_report, DiceRow, DiceTable, Report, ReportVolume};

/// The repository root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The synthetic multi-site data: `$ASFDA_TEST_DATA`, else `.cache/data/synthetic-v1` (as
/// `tests/common` finds it). Fails, saying how to make it, when it is missing.
fn data_dir() -> PathBuf {
    let dir = std::env::var_os("ASFDA_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/data/synthetic-v1"));
    assert!(dir.join("manifest.json").is_file(), "{} missing: run `make data`", dir.display());
    dir
}

/// A `size` crop from the centre of `v`, with the affine moved so it stays where it was in space.
fn centre_crop(v: &Volume, size: [usize; 3]) -> Volume {
    let dims = v.dims();
    let start: Vec<usize> = (0..3).map(|a| (dims[a] - size[a]) / 2).collect();
    let mut data = Vec::with_capacity(size.iter().product());
    for k in 0..size[2] {
        for j in 0..size[1] {
            let row = start[0] + dims[0] * ((start[1] + j) + dims[1] * (start[2] + k));
            data.extend_from_slice(&v.data()[row..row + size[0]]);
        }
    }
    let mut affine = v.affine();
    for (r, row) in affine.iter_mut().enumerate().take(3) {
        row[3] += (0..3).map(|c| v.affine()[r][c] * start[c] as f64).sum::<f64>();
    }
    Volume::new(data, size, 1, affine).unwrap()
}

fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn report_from_real_volumes_and_the_demo_model() {
    let options = EngineOptions { runtime: RuntimeOptions { threads: 2, ..Default::default() }, ..Default::default() };
    let engine = Engine::new(&root().join("models/demo_brain_unet"), options).unwrap();
    let cancel = CancelToken::new().unwrap();
    // An LSP-oriented 1.2 x 1.2 x 2.5 mm volume and a RAS 2 mm one: the report reorients both.
    let sources = [
        ("spacing_orient_pool_000", "spacing_orient/pool/spacing_orient_pool_000_image.nii.gz", [80, 40, 80]),
        ("pd_pool_000", "pd/pool/pd_pool_000_image.nii.gz", [48, 56, 48]),
    ];
    let mut images = Vec::new();
    let mut entropies = Vec::new();
    let mut scores = Vec::new();
    for (id, file, size) in sources {
        let full = read_nifti(&data_dir().join(file), &ReadOptions::default()).unwrap();
        let image = centre_crop(&full, size);
        let outputs = SegmentOutputs { probabilities: false, entropy: true };
        let entropy = engine.segment(&image, outputs, &cancel, &mut |_| true).unwrap().entropy.unwrap();
        assert!(entropy.same_grid(&image));
        scores.push(engine.score(id, &image, &cancel, &mut |_| true).unwrap());
        images.push(image);
        entropies.push(entropy);
    }
    let selection = select(&scores, &[], &SelectOptions { budget: 2, ..Default::default() }).unwrap();
    let dice = DiceTable {
        row_kind: "class".into(),
        description: "test values".into(),
        rows: ["csf_other", "gm", "wm"]
            .iter()
            .map(|n| DiceRow { name: n.to_string(), before: 0.5, after: 0.7 })
            .collect(),
    };
    let report = Report {
        title: "asfda report test".into(),
        selection: &selection,
        volumes: (0..2).map(|i| ReportVolume { id: sources[i].0, image: &images[i], entropy: &entropies[i] }).collect(),
        dice: Some(dice.clone()),
        notes: vec!["Subjects are synthetic derivatives of real anatomy.".into()],
    };
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(&report, dir.path()).unwrap();
    let (width, height, pixels) = decode(&std::fs::read(&files.png).unwrap());
    let figure = render_figure(&report).unwrap();
    assert_eq!((width as usize, height as usize), (figure.width, figure.height));
    assert_eq!(pixels, figure.rgb);
    assert!(height > 2 * 240 + 300, "two volume rows and the chart: {height}");
    // The model is uncertain somewhere (tissue borders), so some overlay pixels are coloured.
    let coloured = pixels.chunks(3).filter(|p| p[0] > p[2].saturating_add(60) && p[1] < p[0]).count();
    assert!(coloured > 500, "entropy overlay visible ({coloured} warm pixels)");
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    for pick in &selection.picks {
        assert!(md.contains(&format!("| {} | {} |", pick.order + 1, pick.id)), "{md}");
    }

    // The figure shows anatomy, not voxel order: the same data already in RAS renders the same.
    let ras: Vec<(Volume, Volume)> =
        (0..2).map(|i| (images[i].to_canonical().0, entropies[i].to_canonical().0)).collect();
    assert_ne!(ras[0].0.dims(), images[0].dims(), "the LSP volume is reoriented");
    let ras_report = Report {
        title: report.title.clone(),
        selection: &selection,
        volumes: (0..2).map(|i| ReportVolume { id: sources[i].0, image: &ras[i].0, entropy: &ras[i].1 }).collect(),
        dice: Some(dice),
        notes: vec![],
    };
    assert_eq!(render_figure(&ras_report).unwrap().rgb, figure.rgb);
}
