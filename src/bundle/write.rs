//! Writing an adapted bundle: a copy of a loaded bundle whose state is replaced by a fine-tuning
//! run's ([`Bundle::write_adapted`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::validate::sha256_bytes;
use super::{Bundle, ADAPTATION_FILE, MANIFEST_FILE};
use crate::atomic_file;
use crate::error::{Error, ErrorKind, Result};

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
    /// graph and source knowledge copied byte for byte, the manifest with the
    /// `sha256` digests of the written files (other content kept), the checkpoint replaced by
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
        let mut digests = BTreeMap::new();
        let mut write = |name: &str, bytes: &[u8]| -> Result<()> {
            atomic_file::write_synced(&out.join(name), bytes)?;
            digests.insert(name.to_string(), sha256_bytes(bytes));
            Ok(())
        };
        let mut copies = vec![training.train_step.clone()];
        if let Some(k) = &self.manifest.source_knowledge {
            copies.push(k.file.clone());
        }
        for file in copies {
            write(&file, &read(self.path(&file))?)?;
        }
        write(&training.checkpoint, adaptation.checkpoint)?;
        let model = (adaptation.inference)(&read(self.inference_path())?)?;
        write(&self.manifest.inference.file, &model)?;
        // The source manifest as JSON (unknown content kept), with the digests of the files
        // written here.
        let source = self.path(MANIFEST_FILE);
        let text = std::fs::read_to_string(&source).map_err(|e| Error::io(&source, "read", &e))?;
        let mut manifest: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::new(ErrorKind::Format, format!("'{}': {e}", source.display())))?;
        let object = manifest
            .as_object_mut()
            .ok_or_else(|| Error::new(ErrorKind::Format, format!("'{}' is not a JSON object", source.display())))?;
        object.insert("sha256".into(), serde_json::to_value(&digests).map_err(|e| Error::internal(e.to_string()))?);
        let mut text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::internal(e.to_string()))?;
        text.push('\n');
        atomic_file::write_synced(&out.join(MANIFEST_FILE), text.as_bytes())?;
        let text = serde_json::to_string_pretty(adaptation.note).map_err(|e| Error::internal(e.to_string()))?;
        atomic_file::write_synced(&out.join(ADAPTATION_FILE), text.as_bytes())?;
        atomic_file::sync_dir(out)
    }
}
