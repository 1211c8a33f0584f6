//! Input listing, volume ids and atomic output files for the commands.

use std::collections::HashMap;
use std::fs;

use std::path::{Path, PathBuf};

use asfda::volume::{read_dicom_series, read_nifti, ReadOptions, Volume};
use asfda::{Error, Result};

/// The id of an input volume: a NIfTI file's name without `.nii.gz` / `.nii`, a DICOM file's
/// without `.dcm`, a DICOM series folder's name.
pub fn volume_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for ext in [".nii.gz", ".nii", ".dcm"] {
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

/// Reads an input volume: a NIfTI file; a folder, read as one DICOM series; or a DICOM file,
/// read on its own when it holds a whole volume (an enhanced multi-frame image), else refused
/// naming its folder (one slice of a series). Errors name the path.
pub fn read_volume(path: &Path, options: &ReadOptions) -> Result<Volume> {
    if path.is_dir() {
        return read_dicom_series(&[path], options)
            .map_err(|e| e.context(format!("DICOM series folder '{}'", path.display())));
    }
    if !is_dicom_file(path) {
        return read_nifti(path, options);
    }
    let volume = read_dicom_series(&[path], options).map_err(|e| e.context("reading it as DICOM"))?;
    if volume.dims()[2] == 1 {
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Err(Error::invalid_argument(format!(
            "'{}' is a single DICOM slice; pass the folder of its series instead ('{}'): a folder is read as one \
             series",
            path.display(),
            folder.display()
        )));
    }
    Ok(volume)
}

/// Is `path` a DICOM input: a folder of DICOM files or a DICOM file?
pub fn is_dicom_input(path: &Path) -> bool {
    if path.is_dir() {
        holds_dicom(path)
    } else {
        is_dicom_file(path)
    }
}

/// Does the file start like a DICOM file (`DICM` marker)? Unreadable files are left to the
/// NIfTI reader, which reports why.
fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let read = fs::File::open(path).and_then(|f| f.take(132).read_to_end(&mut head));
    read.is_ok() && asfda::volume::dicom::is_dicom(&head)
}

/// Does the folder hold DICOM files (a series folder)?
fn holds_dicom(dir: &Path) -> bool {
    fs::read_dir(dir)
        .is_ok_and(|entries| entries.filter_map(|e| e.ok()).any(|e| e.path().is_file() && is_dicom_file(&e.path())))
}

/// The images named on the command line (NIfTI files, DICOM series folders, enhanced DICOM
/// files), or in `folder` (sorted) every `.nii`/`.nii.gz` and every subfolder holding DICOM files
/// (one series each); each with its id. Giving both, neither, an empty folder or two inputs with
/// one id is an error.
pub fn inputs(positional: &[PathBuf], folder: Option<&Path>) -> Result<Vec<(PathBuf, String)>> {
    let paths: Vec<PathBuf> = match (positional.is_empty(), folder) {
        (false, Some(_)) => return Err(Error::invalid_argument("give either images or --folder, not both")),
        (true, None) => return Err(Error::invalid_argument("no images given (name NIfTI files, or --folder DIR)")),
        (false, None) => positional.to_vec(),
        (true, Some(dir)) => {
            let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, "read folder", &e))?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| (p.is_file() && is_nifti(p)) || (p.is_dir() && holds_dicom(p)))
                .collect();
            paths.sort();
            if paths.is_empty() && holds_dicom(dir) {
                return Err(Error::invalid_argument(format!(
                    "'{}' holds DICOM files: to read it as one series, name it as an image instead of --folder \
                     (--folder takes a folder of NIfTI files and DICOM series folders)",
                    dir.display()
                )));
            }
            if paths.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "no .nii or .nii.gz files or DICOM series folders in '{}'",
                    dir.display()
                )));
            }
            paths
        }
    };
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for path in &paths {
        if let Some(first) = seen.insert(volume_id(path), path) {
            return Err(Error::invalid_argument(format!(
                "'{}' and '{}' have the same id '{}' (ids are file names without .nii/.nii.gz/.dcm, or DICOM folder names)",
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
