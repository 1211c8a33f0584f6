//! `asfda report`: the visual report of a selection (the one `asfda demo` writes after
//! fine-tuning), from a selection JSON, the images and optionally a Dice table.

use std::path::Path;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, SegmentOutputs};
use asfda::report::{write_report, DiceRow, DiceTable, Report, ReportVolume};
use asfda::select::Selection;
use asfda::volume::{read_nifti, ReadOptions, Volume};
use asfda::{Error, Result};

use crate::args::{Args, Spec};
use crate::files::inputs;
use crate::progress::Progress;

pub const SPEC: Spec = Spec {
    name: "report",
    help: "usage: asfda report --selection SELECTION.json (IMAGE... | --folder DIR) --out DIR [options]

Writes DIR/report.png and DIR/report.md: every picked volume's axial, coronal and sagittal
mid-slices (radiological convention) with the model's entropy overlaid, captioned with its pick
order and scores, and a Dice before/after chart when --dice is given. The images are found by id
(file name without .nii/.nii.gz) among the named files or in --folder.

  --selection FILE      selection JSON written by `asfda select --out` (required)
  --folder DIR          where the images are (or name them)
  --out DIR             output folder (required; created)
  --dice FILE           Dice table JSON: {\"row_kind\": \"class\", \"description\": \"...\",
                        \"rows\": [{\"name\": \"gm\", \"before\": 0.61, \"after\": 0.80}, ...]}
                        (null for a value that is not defined)
  --title TEXT          the report's title
  --bundle DIR, --device D, --threads N, --overlap F, --tiles-per-batch N, --mirror, --ort PATH
                        as for `asfda score` (the model that computes the entropy)",
    values: &[
        "selection",
        "folder",
        "out",
        "dice",
        "title",
        "bundle",
        "device",
        "threads",
        "overlap",
        "tiles-per-batch",
        "ort",
    ],
    switches: &["mirror"],
    max_positional: usize::MAX,
};

/// Reads the Dice table JSON documented in the help.
pub fn read_dice(path: &Path) -> Result<DiceTable> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read Dice table", &e))?;
    let bad = |what: &str| Error::format(format!("Dice table '{}': {what}", path.display()));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&format!("malformed JSON: {e}")))?;
    let field = |v: &serde_json::Value, name: &str| -> Result<f64> {
        match &v[name] {
            serde_json::Value::Null => Ok(f64::NAN),
            x => x.as_f64().ok_or_else(|| bad(&format!("'{name}' of a row is not a number or null"))),
        }
    };
    let rows = value["rows"].as_array().ok_or_else(|| bad("no 'rows' array"))?;
    let rows = rows
        .iter()
        .map(|r| {
            let name = r["name"].as_str().ok_or_else(|| bad("a row has no 'name'"))?.to_string();
            Ok(DiceRow { name, before: field(r, "before")?, after: field(r, "after")? })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DiceTable {
        row_kind: value["row_kind"].as_str().unwrap_or("class").to_string(),
        description: value["description"].as_str().unwrap_or("").to_string(),
        rows,
    })
}

pub fn run(args: &Args) -> Result<()> {
    let selection_path = args.path("selection")?;
    let out = args.path("out")?;
    let text =
        std::fs::read_to_string(&selection_path).map_err(|e| Error::io(&selection_path, "read selection", &e))?;
    let selection = Selection::from_json(text.trim()).map_err(|e| e.context(selection_path.display()))?;
    let dice = args.get("dice").map(|p| read_dice(Path::new(p))).transpose()?;
    let available = inputs(&args.positional, args.get("folder"))?;

    let engine = Engine::new(&args.bundle(), args.engine_options()?)?;
    let cancel = CancelToken::new()?;
    let mut progress = Progress::new(selection.picks.len(), "computing the entropy of");
    let mut loaded: Vec<(String, Volume, Volume)> = Vec::new();
    for (index, pick) in selection.picks.iter().enumerate() {
        let (path, _) = available.iter().find(|(_, id)| *id == pick.id).ok_or_else(|| {
            Error::invalid_argument(format!("no image for picked volume '{}' among the given images", pick.id))
        })?;
        progress.start(index, &pick.id);
        let image = read_nifti(path, &ReadOptions::default())?;
        let outputs = SegmentOutputs { probabilities: false, entropy: true };
        let segmentation = engine.segment(&image, outputs, &cancel, &mut |f| {
            progress.update(f);
            true
        })?;
        progress.finish_item("done");
        let entropy = segmentation.entropy.ok_or_else(|| Error::internal("the engine returned no entropy map"))?;
        loaded.push((pick.id.clone(), image, entropy));
    }
    let report = Report {
        title: args.get("title").unwrap_or("asfda: volumes selected for annotation").to_string(),
        selection: &selection,
        volumes: loaded.iter().map(|(id, image, entropy)| ReportVolume { id, image, entropy }).collect(),
        dice,
        notes: vec![format!("Model bundle: {}.", args.bundle().display())],
    };
    let files = write_report(&report, &out)?;
    println!("wrote {} and {}", files.png.display(), files.markdown.display());
    Ok(())
}
