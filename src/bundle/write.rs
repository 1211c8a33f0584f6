//! Writing an adapted bundle: a copy of a loaded bundle whose state is replaced by a fine-tuning
//! run's ([`Bundle::write_adapted`]).

use std::path::{Path, PathBuf};

use super::{Bundle, ADAPTATION_FILE, MANIFEST_FILE};
use crate::atomic_file;
use crate::error::{Error, Result};

/// What an adapted bundle replaces of its source bundle ([`Bundle::write_adapted`]).
pub struct Adaptation<'a> {
    /// The new train-step state, written as the manifest's `training.checkpoint` file (so
    /// fine-tuning can continue from it).
    pub checkpoint: &'a [u8],
    /// Turns the source inference model's bytes into the adapted one's (e.g. fine-tuned weights
    /// baked into its initializers).
    pub inference: &'a dyn Fn(&[u8]) -> Result<Vec<u8>>,
    /// What was done, written as [`ADAPTATION_FILE`].
    pub note: &'a serde_json::Value,
}

impl Bundle {
    /// Writes an adapted copy of this bundle to the new folder `dir`: the manifest, train-step
    /// graph and source knowledge copied byte for byte, the checkpoint replaced by
    /// `adaptation.checkpoint`, the inference model by `adaptation.inference` of the source one,
    /// plus [`ADAPTATION_FILE`] (`adaptation.note`, pretty-printed JSON). Built in
    /// `<dir>.partial` and renamed into place, so `dir` is either complete or absent; each file
    /// is synced. `dir` must not exist yet (`InvalidArgument`). Needs the training part
    /// (`Unsupported` without it).
    pub fn write_adapted(&self, dir: &Path, adaptation: &Adaptation<'_>) -> Result<()> {
        if dir.exists() {
            return Err(Error::invalid_argument(format!(
                "'{}' already exists; export the adapted bundle to a new folder",
                dir.display()
            )));
        }
        let name = dir
            .file_name()
            .ok_or_else(|| Error::invalid_argument(format!("'{}' names no folder", dir.display())))?
            .to_string_lossy();
        let partial = atomic_file::parent(dir).join(format!("{name}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, "remove the unfinished export", &e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, "create", &e))?;
        let result = self.write_adapted_files(&partial, adaptation).and_then(|()| {
            std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, "rename the finished bundle to", &e))?;
            atomic_file::sync_dir(&atomic_file::parent(dir))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        result
    }

    fn write_adapted_files(&self, out: &Path, adaptation: &Adaptation<'_>) -> Result<()> {
        let training = self.training()?;
        let read = |p: PathBuf| std::fs::read(&p).map_err(|e| Error::io(&p, "read", &e));
        let mut copies = vec![MANIFEST_FILE.to_string(), training.train_step.clone()];
        if let Some(k) = &self.manifest.source_knowledge {
            copies.push(k.file.clone());
        }
        for file in copies {
            atomic_file::write_synced(&out.join(&file), &read(self.path(&file))?)?;
        }
        atomic_file::write_synced(&out.join(&training.checkpoint), adaptation.checkpoint)?;
        let model = (adaptation.inference)(&read(self.inference_path())?)?;
        atomic_file::write_synced(&out.join(&self.manifest.inference.file), &model)?;
        let text = serde_json::to_string_pretty(adaptation.note).map_err(|e| Error::internal(e.to_string()))?;
        atomic_file::write_synced(&out.join(ADAPTATION_FILE), text.as_bytes())?;
        atomic_file::sync_dir(out)
    }
}
