//! Reading a DICOM series (a folder of slices, or an enhanced multi-frame file) into a
//! [`Volume`] (feature `dicom`, on by default).
//!
//! - **Files**: DICOM Part 10 files (`DICM` marker) in the transfer syntaxes of
//!   [`SUPPORTED_TRANSFER_SYNTAXES`]: Implicit VR Little Endian, Explicit VR Little Endian,
//!   Deflated Explicit VR Little Endian, Explicit VR Big Endian (retired, still found) and RLE
//!   Lossless. JPEG, JPEG-LS, JPEG 2000 and other compressed syntaxes are refused with an
//!   `Unsupported` error naming the transfer syntax UID and its name (decode them in the host and
//!   use [`Volume::from_slices`], or convert the files first).
//! - **Images**: greyscale (MONOCHROME1 is inverted to MONOCHROME2 sense within the stored bit
//!   range), 8, 16 or 32 bits allocated, signed or unsigned, only the stored bits used; rescale
//!   slope/intercept applied. Colour images are refused. Enhanced multi-frame images take each
//!   frame's position, orientation, spacing and rescale from its per-frame functional groups, else
//!   the shared ones.
//! - **Series**: the geometry rules of [`Volume::from_slices`] (sorted along the slice normal,
//!   one orientation and size, no duplicates, no gantry tilt, uneven steps resampled within a
//!   tolerance or refused; `src/volume/slices.rs`). Files of several series are refused with
//!   their SeriesInstanceUIDs unless one is chosen ([`read_dicom_series_uid`]).
//! - **Geometry**: the affine is converted exactly from DICOM's LPS to asfda's RAS (x and y
//!   negated). A single-slice series gets SpacingBetweenSlices (else SliceThickness, else 1 mm)
//!   as its slice spacing; a lone image without ImagePositionPatient/ImageOrientationPatient is
//!   placed at the origin, axial (as ITK does), with a warning, while in a series of several
//!   images it is an error.
//! - **Hostile input**: file sizes are checked against [`ReadOptions::max_bytes`] before a file is
//!   read, every element length against the bytes that enclose it before the parser allocates
//!   (`guard.rs`), the parser's memory (counted elements, items and string values, plus inflated
//!   deflate data) against what is left of `max_bytes` for the series, and the volume's size
//!   against `max_voxels`/`max_bytes` before the voxels are allocated (`TooLarge`, naming the
//!   bytes needed and the limit). At peak a read holds the current file's bytes, the parsed data
//!   sets and the f32 volume (and a second one while resampling), each within `max_bytes`. Bad files give `Format` or
//!   `InvalidData` errors naming the file; nothing panics.
//!
//! `ReadOptions::nonfinite` applies to the rescaled values (finite unless an extreme
//! RescaleSlope overflows f32).

mod guard;
mod image;
mod pixels;
mod rle;
mod seg;

use std::path::{Path, PathBuf};

pub use image::SUPPORTED_TRANSFER_SYNTAXES;
pub use seg::{write_dicom_seg, SegWritten, SEGMENTATION_STORAGE};

use super::nifti_io::ReadOptions;
use super::slices::{fill_stack, plan_stack, SliceHeader};
use super::Volume;
use crate::error::{Error, ErrorKind, Result};
use image::Image;

/// Reads one DICOM series. `inputs` are files of the series, or folders (every DICOM file
/// directly inside is used; files without the `DICM` marker, such as a README, and DICOMDIR
/// indexes are skipped), or both. Errors name the offending file; files of several series are
/// refused with the SeriesInstanceUIDs found (choose one with [`read_dicom_series_uid`]).
///
/// A named file that is not DICOM is a `Format` error. See the module documentation for what is
/// supported.
pub fn read_dicom_series<P: AsRef<Path>>(inputs: &[P], options: &ReadOptions) -> Result<Volume> {
    read_series(&list_files(inputs)?, options, None)
}

/// [`read_dicom_series`] keeping only the files of the series `series_instance_uid` (when a folder
/// holds several); `InvalidArgument` listing the series found when none matches.
pub fn read_dicom_series_uid<P: AsRef<Path>>(
    inputs: &[P],
    options: &ReadOptions,
    series_instance_uid: &str,
) -> Result<Volume> {
    read_series(&list_files(inputs)?, options, Some(series_instance_uid))
}

/// Reads one series from DICOM files held in memory (for hosts that receive files over a network
/// or from a database, and for the fuzz target); files are named "file N" in errors.
pub fn read_dicom_bytes(files: &[&[u8]], options: &ReadOptions) -> Result<Volume> {
    let mut images = Vec::new();
    let mut budget = options.max_bytes;
    for (i, bytes) in files.iter().enumerate() {
        check_file_size(bytes.len() as u64, &format!("file {i}"), options)?;
        images.extend(image::parse(bytes, &format!("file {i}"), &mut budget)?);
    }
    assemble(images, options, None)
}

/// Whether the file starts like a DICOM Part 10 file (the `DICM` marker after the 128-byte
/// preamble, or at the start): `head` is at least the first 132 bytes when the file has them.
pub fn is_dicom(head: &[u8]) -> bool {
    image::looks_like_dicom(head)
}

/// The files to read, in a stable order: named files as they are, folders listed (DICOM files
/// only, sorted by name; the order does not matter for the result).
fn list_files<P: AsRef<Path>>(inputs: &[P]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(Error::invalid_argument("no DICOM files or folders given"));
    }
    let mut files = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        if input.is_dir() {
            let found = dicom_files_in(input)?;
            if found.is_empty() {
                return Err(Error::invalid_argument(format!("no DICOM files in the folder '{}'", input.display())));
            }
            files.extend(found);
        } else {
            files.push(input.to_path_buf());
        }
    }
    Ok(files)
}

/// The DICOM files directly inside `dir` (sorted), recognised by their marker, not their name.
fn dicom_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read folder", &e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, "read folder", &e))?.path();
        if path.is_file() && starts_like_dicom(&path)? {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn starts_like_dicom(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(132);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", &e))?;
    file.take(132).read_to_end(&mut head).map_err(|e| Error::io(path, "read", &e))?;
    Ok(image::looks_like_dicom(&head))
}

fn read_series(files: &[PathBuf], options: &ReadOptions, uid: Option<&str>) -> Result<Volume> {
    assemble(parse_files(files, options)?, options, uid)
}

/// The parsed images of the one series in `inputs` (files or folders), for the SEG writer.
fn read_images<P: AsRef<Path>>(inputs: &[P], options: &ReadOptions) -> Result<Vec<Image>> {
    one_series(parse_files(&list_files(inputs)?, options)?, None)
}

/// Every file parsed (not decoded), within `options`' limits.
fn parse_files(files: &[PathBuf], options: &ReadOptions) -> Result<Vec<Image>> {
    let mut images = Vec::new();
    let mut budget = options.max_bytes;
    let mut total: u64 = 0;
    for path in files {
        let name = format!("'{}'", path.display());
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, "stat", &e))?.len();
        check_file_size(len, &name, options)?;
        // The files are held in memory while the volume is built: their total counts too.
        total = total.saturating_add(len);
        check_file_size(total, "the series' files together", options)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", &e))?;
        images.extend(image::parse(&bytes, &name, &mut budget)?);
    }
    Ok(images)
}

fn check_file_size(len: u64, name: &str, options: &ReadOptions) -> Result<()> {
    if len > options.max_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("{name}: {len} bytes, over the limit of {} bytes (max_bytes)", options.max_bytes),
        ));
    }
    Ok(())
}

/// Keeps one series, plans the stack of all its frames, and decodes them into the volume.
fn assemble(images: Vec<Image>, options: &ReadOptions, uid: Option<&str>) -> Result<Volume> {
    let images = one_series(images, uid)?;
    // Every frame of every file is one slice: (image index, frame index).
    let mut headers = Vec::new();
    let mut sources = Vec::new();
    for (i, image) in images.iter().enumerate() {
        for (f, frame) in image.frames.iter().enumerate() {
            let name =
                if image.frames.len() > 1 { format!("{} frame {}", image.name, f + 1) } else { image.name.clone() };
            headers.push(SliceHeader { rows: image.rows, columns: image.columns, geometry: frame.geometry, name });
            sources.push((i, f));
        }
    }
    check_placed(&images)?;
    for image in &images {
        pixels::check_length(image)?;
    }
    let thickness = images.first().and_then(|i| i.thickness).unwrap_or(1.0);
    let plan = plan_stack(&headers, thickness, options)?;
    // A multi-frame file's decoded bytes are kept while its frames are placed; a single-frame
    // file's are dropped at once.
    let mut cached: Option<(usize, pixels::Samples<'_>)> = None;
    let mut volume = fill_stack(&plan, |index, out| {
        let (i, f) = sources[index];
        let image = &images[i];
        if cached.as_ref().is_none_or(|(c, _)| *c != i) {
            cached = Some((i, pixels::frame_samples(image)?));
        }
        if let Some((_, samples)) = &cached {
            pixels::decode_frame(samples, image.format, &image.frames[f], f, out);
        }
        Ok(())
    })?;
    apply_nonfinite(&mut volume, options)?;
    Ok(volume)
}

/// Every frame must have a position and orientation, except a lone image (a secondary capture,
/// a test image): it is read at the origin, axial, as ITK does, with a warning.
fn check_placed(images: &[Image]) -> Result<()> {
    let frames: Vec<(&Image, &image::Frame)> =
        images.iter().flat_map(|i| i.frames.iter().map(move |f| (i, f))).collect();
    for (image, frame) in &frames {
        if let Some(reason) = &frame.missing {
            if frames.len() > 1 {
                return Err(Error::invalid_data(format!("{}: {reason}", image.name)));
            }
            log::warn!(target: "asfda::volume::dicom", "{}: {reason}; read as one slice at the origin, axial", image.name);
        }
    }
    Ok(())
}

/// `ReadOptions::nonfinite` on the rescaled values (an extreme RescaleSlope can overflow f32).
fn apply_nonfinite(volume: &mut Volume, options: &ReadOptions) -> Result<()> {
    use super::nifti_io::NonFinitePolicy;
    match options.nonfinite {
        NonFinitePolicy::Keep => Ok(()),
        NonFinitePolicy::Replace(value) => {
            volume.replace_nonfinite(value);
            Ok(())
        }
        NonFinitePolicy::Error => match volume.nonfinite_count() {
            0 => Ok(()),
            n => Err(Error::invalid_data(format!(
                "{n} voxels are not finite after RescaleSlope/RescaleIntercept (values beyond f32 range)"
            ))),
        },
    }
}

/// The images of one series: the chosen one, or the only one; an error listing them otherwise.
fn one_series(images: Vec<Image>, uid: Option<&str>) -> Result<Vec<Image>> {
    if images.is_empty() {
        return Err(Error::invalid_argument("no DICOM images given (only DICOMDIR indexes)"));
    }
    let mut series: Vec<&str> = images.iter().map(|i| i.series_uid.as_str()).collect();
    series.sort_unstable();
    series.dedup();
    let listing = || {
        series
            .iter()
            .map(|s| format!("{s} ({} files)", images.iter().filter(|i| i.series_uid == *s).count()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match uid {
        Some(uid) if !series.contains(&uid) => {
            Err(Error::invalid_argument(format!("no files of series {uid}; the files hold the series {}", listing())))
        }
        Some(uid) => Ok(images.into_iter().filter(|i| i.series_uid == uid).collect()),
        None if series.len() > 1 => Err(Error::invalid_data(format!(
            "the files hold {} series: {}; pass the files of one series (or choose one by SeriesInstanceUID)",
            series.len(),
            listing()
        ))),
        None => Ok(images),
    }
}
