//! The `asfda` command line as a user runs it (the debug binary): score -> select -> segment ->
//! report on small real volumes, and the error paths. Needs `make ort` and `make data`.
//!
//! To keep the debug-build runtime modest the volumes are 48x56x48-voxel crops (2 mm) of
//! synthetic target-site volumes, so the model runs one tile each. Subjects are synthetic
//! derivatives of real anatomy; site shifts are simulated.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use asfda::score::{Score, ScoreOptions, SCORE_FORMAT_VERSION};
use asfda::select::Selection;
use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions, Volume};

mod common;
use common::data_dir;

fn asfda(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_asfda")).args(args).output().expect("asfda runs");
    eprintln!(
        "$ asfda {}\n-- stdout\n{}-- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `size` crop from the centre of `v`, with the affine moved so it stays where it was in space.
fn centre_crop(v: &Volume, size: [usize; 3]) -> Volume {
    let dims = v.dims();
    let start: Vec<usize> = (0..3).map(|a| (dims[a] - size[a]) / 2).collect();
    let mut data = Vec::with_capacity(size.iter().product());
    for k in 0..size[2] {
        for j in 0..size[1] {
            let row = (start[0]) + dims[0] * ((start[1] + j) + dims[1] * (start[2] + k));
            data.extend_from_slice(&v.data()[row..row + size[0]]);
        }
    }
    let mut affine = v.affine();
    for (r, row) in affine.iter_mut().enumerate().take(3) {
        let shifted: f64 = (0..3).map(|c| v.affine()[r][c] * start[c] as f64).sum();
        row[3] += shifted;
    }
    Volume::new(data, size, 1, affine).unwrap()
}

/// Crops of the first `n` pd pool volumes written to `dir`; their paths.
fn small_volumes(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let name = format!("pd_pool_{i:03}_image.nii.gz");
            let v = read_nifti(&data_dir().join("pd/pool").join(&name), &ReadOptions::default()).unwrap();
            let path = dir.join(format!("case{i}.nii.gz"));
            write_nifti(&centre_crop(&v, [48, 56, 48]), &path, OutputType::F32).unwrap();
            path
        })
        .collect()
}

/// The `size` centre crop of the pd `split` volume `name` (image or label) written to `to`.
fn crop_to(split: &str, name: &str, size: [usize; 3], to: &Path) -> PathBuf {
    let v = read_nifti(&data_dir().join("pd").join(split).join(name), &ReadOptions::default()).unwrap();
    let kind = if name.contains("_label") { OutputType::U8 } else { OutputType::F32 };
    write_nifti(&centre_crop(&v, size), to, kind).unwrap();
    to.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn score_select_segment_and_report_on_real_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let images = small_volumes(dir.path(), 3);
    let scores = dir.path().join("scores.jsonl");

    // score: one JSON score per line that Score::from_json reads, ids = file stems.
    let out = asfda(&["score", "--threads", "1", "--out", s(&scores), s(&images[0]), s(&images[1]), s(&images[2])]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("[3/3]"), "progress lines on a non-TTY stderr");
    let text = std::fs::read_to_string(&scores).unwrap();
    let read: Vec<Score> = text.lines().map(|l| Score::from_json(l).unwrap()).collect();
    assert_eq!(read.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["case0", "case1", "case2"]);
    assert!(read.iter().all(|s| s.voxels == 48 * 56 * 48 && s.gap_kl.is_finite()));

    // select: respects the budget, writes the selection JSON, prints the ranked table.
    let selection_path = dir.path().join("selection.json");
    let out = asfda(&["select", "--scores", s(&scores), "--budget", "2", "--out", s(&selection_path)]);
    assert!(out.status.success());
    let selection = Selection::from_json(std::fs::read_to_string(&selection_path).unwrap().trim()).unwrap();
    assert_eq!(selection.picks.len(), 2);
    let table = stdout(&out);
    assert!(table.contains("ASD rank") && table.contains(&selection.picks[0].id), "{table}");
    // --json prints the same selection; a seeded baseline also respects the budget.
    let out = asfda(&["select", "--scores", s(&scores), "--budget", "2", "--json"]);
    assert_eq!(Selection::from_json(stdout(&out).trim()).unwrap(), selection);
    let out =
        asfda(&["select", "--scores", s(&scores), "--budget", "1", "--method", "random", "--seed", "7", "--json"]);
    assert_eq!(Selection::from_json(stdout(&out).trim()).unwrap().picks.len(), 1);

    // segment: integer labels on the input's grid, entropy in [0, 1] on it too.
    let labels_path = dir.path().join("labels.nii.gz");
    let entropy_path = dir.path().join("entropy.nii.gz");
    let out = asfda(&["segment", s(&images[0]), "--out", s(&labels_path), "--entropy", s(&entropy_path), "--json"]);
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["classes"].as_array().unwrap().len(), 4);
    let image = read_nifti(&images[0], &ReadOptions::default()).unwrap();
    let labels = read_nifti(&labels_path, &ReadOptions::default()).unwrap();
    assert!(labels.same_grid(&image), "labels must overlay the input");
    assert!(labels.data().iter().all(|&v| v.fract() == 0.0 && (0.0..4.0).contains(&v)));
    assert!(labels.data().iter().any(|&v| v > 0.0), "the brain is segmented");
    // Integer NIfTI: datatype code 2 (uint8) at byte 70 of the header.
    let mut header = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(std::fs::File::open(&labels_path).unwrap()).read_to_end(&mut header).unwrap();
    assert_eq!(i16::from_le_bytes([header[70], header[71]]), 2, "labels are written as uint8");
    let entropy = read_nifti(&entropy_path, &ReadOptions::default()).unwrap();
    assert!(entropy.same_grid(&image));
    assert!(entropy.data().iter().all(|&v| (0.0..=1.0).contains(&v)));

    // report: the picked volumes are found by id in the folder; the PNG decodes.
    let dice = dir.path().join("dice.json");
    std::fs::write(
        &dice,
        r#"{"row_kind":"class","description":"test","rows":[{"name":"gm","before":0.5,"after":0.7},{"name":"wm","before":null,"after":0.8}]}"#,
    )
    .unwrap();
    let report_dir = dir.path().join("report");
    let out = asfda(&[
        "report",
        "--threads",
        "1",
        "--selection",
        s(&selection_path),
        "--folder",
        s(dir.path()),
        "--dice",
        s(&dice),
        "--out",
        s(&report_dir),
    ]);
    assert!(out.status.success());
    let decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(report_dir.join("report.png")).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert!(info.width > 800 && info.height > 2 * 240, "{}x{}", info.width, info.height);
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains(&format!("| 1 | {} |", selection.picks[0].id)) && md.contains("| gm | 0.5000 | 0.7000 |"));
}

#[test]
fn score_goes_on_past_bad_files_and_fails_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.nii.gz");
    std::fs::write(&corrupt, b"not a nifti file").unwrap();
    let missing = dir.path().join("missing.nii");
    let scores = dir.path().join("scores.jsonl");
    let out = asfda(&["score", "--out", s(&scores), s(&missing), s(&corrupt)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("missing.nii") && err.contains("corrupt.nii.gz"), "both files named: {err}");
    assert!(err.contains("2 of 2 volume(s) could not be scored"), "{err}");
    assert_eq!(std::fs::read_to_string(&scores).unwrap(), "", "no scores, but the file is written");
}

/// A score that `select` accepts, without running the model.
fn score(id: &str, n: usize) -> Score {
    Score {
        format_version: SCORE_FORMAT_VERSION,
        id: id.into(),
        embedding: vec![1.0, n as f32, 0.5],
        gap_kl: 0.1 * (n + 1) as f64,
        gap_anchor: 0.1,
        asd: 0.3 / (n + 1) as f64,
        asd_threshold: 0.1,
        confidence: 0.9,
        foreground_fraction: 0.2,
        entropy_histogram: vec![0; ScoreOptions::default().histogram_bins],
        voxels: 10,
        foreground_voxels: 0,
        options: ScoreOptions::default(),
    }
}

fn write_scores(path: &Path, ids: &[&str]) {
    let lines: String = ids.iter().enumerate().map(|(n, id)| score(id, n).to_json() + "\n").collect();
    std::fs::write(path, lines).unwrap();
}

#[test]
fn select_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    write_scores(&a, &["v1", "v2", "v3"]);
    write_scores(&b, &["v4", "v2"]);

    let fails = |args: &[&str], needle: &str| {
        let out = asfda(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: '{needle}' not in {}", stderr(&out));
    };
    let both = format!("{},{}", s(&a), s(&b));
    fails(&["select", "--scores", &both, "--budget", "1"], "duplicate volume id 'v2'");
    fails(&["select", "--scores", s(&a), "--budget", "4"], "budget 4 exceeds the pool of 3");
    fails(&["select", "--scores", s(&a), "--budget", "1", "--method", "best"], "unknown selection method 'best'");
    fails(&["select", "--scores", s(&a), "--budget", "two"], "--budget 'two' is not a whole number");
    fails(&["select", "--scores", s(&a)], "--budget is required");
    fails(&["select", "--scores", s(&a), "--budget", "1", "--bugdet", "2"], "unknown option '--bugdet'");
    fails(&["select", "--scores", s(&a), "--budget", "1", "--labeled", "nope"], "nope");
    fails(&["select", "--scores", s(&dir.path().join("none.jsonl")), "--budget", "1"], "none.jsonl");
    std::fs::write(&b, "{\"format_version\": 1}\n").unwrap();
    fails(&["select", "--scores", s(&b), "--budget", "1"], "b.jsonl:1");

    // The labeled volume leaves the pool: a budget of 2 out of 3 - 1 still works.
    let out = asfda(&["select", "--scores", s(&a), "--budget", "2", "--labeled", "v1", "--json"]);
    assert!(out.status.success());
    let selection = Selection::from_json(stdout(&out).trim()).unwrap();
    assert!(selection.picks.iter().all(|p| p.id != "v1") && selection.picks.len() == 2);
}

#[test]
fn other_errors_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nii.gz");
    let out = asfda(&["segment", s(&missing), "--out", s(&dir.path().join("l.nii.gz"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.nii.gz"));
    let out = asfda(&["segment", s(&missing)]);
    assert!(stderr(&out).contains("--out is required"));
    let out = asfda(&["score", "--out", s(&dir.path().join("x.jsonl"))]);
    assert!(stderr(&out).contains("no images given"));
    let out = asfda(&["score", "--out", "x.jsonl", "--folder", s(dir.path())]);
    assert!(stderr(&out).contains("no .nii or .nii.gz files in"));
    let nowhere = dir.path().join("no/such/folder/s.jsonl");
    let out = asfda(&["score", "--out", s(&nowhere), s(&missing)]);
    assert!(stderr(&out).contains("the folder of --out"), "fails before scoring");
    let out = asfda(&["frobnicate"]);
    assert!(!out.status.success() && stderr(&out).contains("unknown command 'frobnicate'"));
    for command in ["info", "score", "select", "segment", "finetune", "report", "run-model", "demo"] {
        let out = asfda(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
        assert!(stdout(&out).starts_with(&format!("usage: asfda {command}")), "{command}: {}", stdout(&out));
    }
}

/// JSON step lines of `finetune --json`: their step numbers.
fn step_numbers(out: &Output) -> Vec<u64> {
    stdout(out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["loss"].as_f64().unwrap().is_finite() && v["lr"].as_f64().unwrap() > 0.0, "{l}");
            v["step"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn finetune_checkpoints_resumes_exports_and_refuses_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let size = [48, 56, 48];
    let mut pairs = Vec::new();
    for i in 0..2 {
        let image = crop_to("pool", &format!("pd_pool_{i:03}_image.nii.gz"), size, &p(&format!("case{i}.nii.gz")));
        let label =
            crop_to("pool_labels", &format!("pd_pool_{i:03}_label.nii.gz"), size, &p(&format!("case{i}_label.nii.gz")));
        pairs.push(format!("{}={}", s(&image), s(&label)));
    }
    let unlabeled = crop_to("pool", "pd_pool_002_image.nii.gz", size, &p("case2.nii.gz"));
    let labeled = pairs.join(",");
    let checkpoint = p("run.safetensors");
    let common = ["--patch", "32", "--threads", "1", "--json", "--labeled", &labeled, "--unlabeled", s(&unlabeled)];

    // Two steps, saved every step and at the end; one JSON line per step.
    let mut args = vec!["finetune", "--steps", "2", "--save-every", "1", "--checkpoint", s(&checkpoint)];
    args.extend(common);
    let out = asfda(&args);
    assert!(out.status.success());
    assert_eq!(step_numbers(&out), [1, 2]);
    assert!(stderr(&out).contains("step 2/2") && stderr(&out).contains("reliable"), "progress on stderr");
    // The unadapted model fails pd's annotations, so its pseudo-labels are checked and withheld.
    let err = stderr(&out);
    assert!(err.contains("pseudo-labels by the bundle's weights") && err.contains("not used"), "{err}");
    assert!(checkpoint.is_file());

    // --resume continues the count (3, 4) into the same file, and exports the adapted bundle.
    let export = p("adapted");
    let mut args = vec!["finetune", "--steps", "4", "--resume", s(&checkpoint), "--export", s(&export)];
    args.extend(common);
    let out = asfda(&args);
    assert!(out.status.success());
    assert_eq!(step_numbers(&out), [3, 4]);
    assert!(stderr(&out).contains("at step 2 of 4"), "{}", stderr(&out));
    let note: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("adaptation.json")).unwrap()).unwrap();
    assert_eq!(note["fine_tuning_steps"], 4);
    assert_eq!(note["annotated_volumes"], serde_json::json!(["case0", "case1"]));
    assert_eq!(note["pseudo_label_check"]["trusted"], false, "{note}");
    assert!(export.join("manifest.json").is_file());
    // --min-pseudo-dice 0 turns the check off: pseudo-labelled patches are drawn.
    let mut args = vec!["finetune", "--steps", "6", "--min-pseudo-dice", "0"];
    args.extend(common);
    let out = asfda(&args);
    assert!(out.status.success() && !stderr(&out).contains("pseudo-labels by"));
    let pseudo: u64 = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["pseudo_in_batch"].as_u64().unwrap())
        .sum();
    assert!(pseudo > 0, "{}", stdout(&out));
    // Resuming a finished run does nothing and says so.
    let mut args = vec!["finetune", "--steps", "4", "--resume", s(&checkpoint)];
    args.extend(common);
    let out = asfda(&args);
    assert!(out.status.success() && step_numbers(&out).is_empty());
    assert!(stderr(&out).contains("nothing to do"));

    let fails = |args: &[&str], needles: &[&str]| {
        let out = asfda(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        for needle in needles {
            assert!(stderr(&out).contains(needle), "{args:?}: '{needle}' not in {}", stderr(&out));
        }
    };
    // A label on another grid than its image.
    let small = crop_to("pool_labels", "pd_pool_000_label.nii.gz", [48, 56, 40], &p("small_label.nii.gz"));
    let mismatched = format!("{}={}", s(&p("case0.nii.gz")), s(&small));
    fails(
        &["finetune", "--steps", "1", "--patch", "32", "--labeled", &mismatched],
        &["case0", "small_label.nii.gz", "different voxel grids"],
    );
    let missing = p("no-selection.json");
    fails(
        &["finetune", "--steps", "1", "--selection", s(&missing), "--pool", s(dir.path()), "--labels", s(dir.path())],
        &["no-selection.json"],
    );
    fails(&["finetune", "--steps", "1", "--labeled", s(&p("case0.nii.gz"))], &["is not IMAGE=LABEL"]);
    fails(&["finetune", "--labeled", &labeled], &["--steps is required"]);
    fails(&["finetune", "--steps", "1", "--labeled", &labeled, "--patch", "30"], &["multiples of"]);
    fails(
        &["finetune", "--steps", "1", "--labeled", &labeled, "--save-every", "1"],
        &["--save-every needs --checkpoint"],
    );
    fails(&["finetune", "--steps", "1", "--labeled", &labeled, "--export", s(&export)], &["already exists"]);
    fails(&["finetune", "--steps", "1"], &["no annotated volumes"]);
}

#[test]
fn demo_runs_the_whole_loop_and_writes_the_report() {
    // A miniature site of crops in the synthetic data's layout, so the debug build runs one tile
    // per volume; the demo itself is the same code as on the full data.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for sub in ["pool", "pool_labels", "test"] {
        std::fs::create_dir_all(data.join("pd").join(sub)).unwrap();
    }
    std::fs::write(data.join("manifest.json"), "{}").unwrap();
    let size = [48, 56, 48];
    for i in 0..3 {
        for (split, kind) in [("pool", "image"), ("pool_labels", "label")] {
            let name = format!("pd_pool_{i:03}_{kind}.nii.gz");
            crop_to(split, &name, size, &data.join("pd").join(split).join(&name));
        }
    }
    for kind in ["image", "label"] {
        let name = format!("pd_test_000_{kind}.nii.gz");
        crop_to("test", &name, size, &data.join("pd/test").join(&name));
    }
    let out_dir = dir.path().join("out");
    let out = asfda(&[
        "demo",
        "--data",
        s(&data),
        "--out",
        s(&out_dir),
        "--max-pool",
        "3",
        "--budget",
        "2",
        "--steps",
        "2",
        "--test-volumes",
        "1",
        "--max-reliable",
        "1",
        "--threads",
        "1",
    ]);
    assert!(out.status.success());
    let err = stderr(&out);
    for phase in ["== 1/6", "== 2/6", "== 3/6", "== 4/6", "== 5/6", "== 6/6", "step 2/2"] {
        assert!(err.contains(phase), "progress of every phase: '{phase}' not in {err}");
    }
    assert!(stdout(&out).contains("mean fg"), "{}", stdout(&out));
    assert!(err.contains("pseudo-labels by the bundle's weights"), "the pseudo-label check is reported: {err}");

    let png = std::fs::read(out_dir.join("report.png")).unwrap();
    let info = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap().info().clone();
    assert!(info.width > 400 && info.height > 400, "{}x{}", info.width, info.height);
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let selection =
        Selection::from_json(std::fs::read_to_string(out_dir.join("selection.json")).unwrap().trim()).unwrap();
    assert_eq!(selection.picks.len(), 2);
    assert!(md.contains(&selection.picks[0].id) && md.contains("synthetic derivatives of real anatomy"), "{md}");
    assert!(md.contains("--max-pool 3"), "the run's settings are in the report");
    let dice: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("dice.json")).unwrap()).unwrap();
    let rows = dice["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "3 foreground classes and their mean");
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r["before"].as_f64().unwrap())));
    assert_eq!(std::fs::read_to_string(out_dir.join("scores.jsonl")).unwrap().lines().count(), 3);
    assert!(out_dir.join("checkpoint.safetensors").is_file());
    assert!(out_dir.join("adapted_bundle/manifest.json").is_file());

    // A data folder without the synthetic data names the fix.
    let out = asfda(&["demo", "--data", s(&dir.path().join("nothing")), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("make data"));
}
