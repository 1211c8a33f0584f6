//! Input listing, volume ids and atomic output files for the commands.

use std::collections::HashMap;
use std::fs;

use std::path::{Path, PathBuf};

use asfda::{Error, Result};

/// The id of a volume file: its name without `.nii.gz` / `.nii` (the "file stem").
pub fn volume_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for ext in [".nii.gz", ".nii"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

/// Is `path` named like a NIfTI file?
pub fn is_nifti(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// The images named on the command line, or every `.nii`/`.nii.gz` in `folder` (sorted); each with
/// its id. Giving both, neither, an empty folder or two files with one id is an error.
pub fn inputs(positional: &[PathBuf], folder: Option<&Path>) -> Result<Vec<(PathBuf, String)>> {
    let paths: Vec<PathBuf> = match (positional.is_empty(), folder) {
        (false, Some(_)) => return Err(Error::invalid_argument("give either images or --folder, not both")),
        (true, None) => return Err(Error::invalid_argument("no images given (name NIfTI files, or --folder DIR)")),
        (false, None) => positional.to_vec(),
        (true, Some(dir)) => {
            let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, "read folder", &e))?;
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_nifti(p)).collect();
            paths.sort();
            if paths.is_empty() {
                return Err(Error::invalid_argument(format!("no .nii or .nii.gz files in '{}'", dir.display())));
            }
            paths
        }
    };
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for path in &paths {
        if let Some(first) = seen.insert(volume_id(path), path) {
            return Err(Error::invalid_argument(format!(
                "'{}' and '{}' have the same id '{}' (ids are file names without .nii/.nii.gz)",
                first.display(),
                path.display(),
                volume_id(path)
            )));
        }
    }
    Ok(paths.iter().map(|p| (p.clone(), volume_id(p))).collect())
}

/// Fails early (before any inference) unless `path` names a NIfTI file (.nii or .nii.gz), the
/// only format the volume writer writes.
pub fn check_nifti_name(path: &Path, flag: &str) -> Result<()> {
    if is_nifti(path) {
        return Ok(());
    }
    Err(Error::invalid_argument(format!(
        "--{flag} '{}' must end in .nii.gz or .nii (asfda writes NIfTI volumes)",
        path.display()
    )))
}

/// Fails early (before minutes of inference) when `path`'s folder does not exist.
pub fn check_output(path: &Path, flag: &str) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(Error::invalid_argument(format!("the folder of --{flag} '{}' does not exist", path.display())))
        }
        _ => Ok(()),
    }
}
