//! `asfda report`: the visual report of a selection (the one `asfda demo` writes after
//! fine-tuning), from a selection JSON, the images and optionally a Dice table. The renderer
//! ([`render`]) is the CLI's: the library has no image or font dependencies.

#[cfg(test)]
mod real_data_tests;
pub mod render;

use std::path::{Path, PathBuf};

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, SegmentOutputs};
use asfda::select::Selection;
use asfda::volume::Volume;
use asfda::{Error, Result};

use crate::args::{EngineFlags, HELP_TEMPLATE};
use crate::files::inputs;
use crate::progress::Progress;
pub use render::{write_report, DiceRow, DiceTable, Report, ReportVolume};

/// The visual report (PNG + Markdown) of a selection: entropy overlays, Dice chart
///
/// Writes DIR/report.png and DIR/report.md: every picked volume's axial, coronal and sagittal
/// mid-slices (radiological convention) with the model's entropy overlaid, captioned with its pick
/// order and scores, and a Dice before/after chart when --dice is given. The images are found by
/// id (file name without .nii/.nii.gz) among the named files or in --folder.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda report --selection SELECTION.json (IMAGE... | --folder DIR) --out DIR [options]",
    help_template = HELP_TEMPLATE
)]
pub struct ReportArgs {
    /// The images (or --folder)
    #[arg(value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Selection JSON written by `asfda select --out`
    #[arg(long, value_name = "FILE")]
    pub selection: PathBuf,
    /// Where the images are (or name them)
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
    /// Output folder (created)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Dice table JSON: {"row_kind": "class", "description": "...", "rows": [{"name": "gm",
    /// "before": 0.61, "after": 0.80}, ...]} (null for a value that is not defined)
    #[arg(long, value_name = "FILE")]
    pub dice: Option<PathBuf>,
    /// The report's title
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    // The model that computes the entropy, and how it runs.
    #[command(flatten)]
    pub engine: EngineFlags,
}

/// Reads the Dice table JSON documented in the help.
pub fn read_dice(path: &Path) -> Result<DiceTable> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read Dice table", &e))?;
    let bad = |what: &str| Error::format(format!("Dice table '{}': {what}", path.display()));
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("malformed JSON: {e}")).with_source(e))?;
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

pub fn run(args: &ReportArgs) -> Result<()> {
    let selection_path = &args.selection;
    let out = &args.out;
    let text = std::fs::read_to_string(selection_path).map_err(|e| Error::io(selection_path, "read selection", &e))?;
    let selection = Selection::from_json(text.trim()).map_err(|e| e.context(selection_path.display()))?;
    let dice = args.dice.as_deref().map(read_dice).transpose()?;
    let available = inputs(&args.images, args.folder.as_deref())?;

    let engine = Engine::new(&args.engine.bundle(), args.engine.options())?;
    let cancel = CancelToken::new()?;
    let mut progress = Progress::new(selection.picks.len(), "computing the entropy of");
    let mut loaded: Vec<(String, Volume, Volume)> = Vec::new();
    for (index, pick) in selection.picks.iter().enumerate() {
        let (path, _) = available.iter().find(|(_, id)| *id == pick.id).ok_or_else(|| {
            Error::invalid_argument(format!("no image for picked volume '{}' among the given images", pick.id))
        })?;
        progress.start(index, &pick.id);
        let image = crate::files::read_volume(path, &args.engine.read_options())?;
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
        title: args.title.clone().unwrap_or_else(|| "asfda: volumes selected for annotation".to_string()),
        selection: &selection,
        volumes: loaded.iter().map(|(id, image, entropy)| ReportVolume { id, image, entropy }).collect(),
        dice,
        notes: vec![format!("Model bundle: {}.", args.engine.bundle().display())],
    };
    let files = write_report(&report, out)?;
    println!("wrote {} and {}", files.png.display(), files.markdown.display());
    Ok(())
}
