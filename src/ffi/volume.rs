//! C ABI for volumes: NIfTI load/save, DICOM series reading, import from a caller buffer or
//! caller-decoded slices, accessors, reorientation.

use std::ffi::c_char;

use super::{c_path, check_out, free_handle, guard, non_null, write_out, AsfdaStatus};
use crate::error::{Error, Result};
use crate::volume::{self, Convention, DataType, NonFinitePolicy, OutputType, ReadOptions, Volume};

/// A 3D image with channels: f32 voxels (x fastest, then y, z, channel) and a voxel-to-world
/// affine. Immutable once made, so it may be read from several threads at once.
pub struct AsfdaVolume(pub(crate) Volume);

pub(crate) fn into_handle(volume: Volume) -> *mut AsfdaVolume {
    Box::into_raw(Box::new(AsfdaVolume(volume)))
}

/// Voxel datatype of a caller buffer (values equal the NIfTI datatype codes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaDataType {
    ASFDA_DTYPE_U8 = 2,
    ASFDA_DTYPE_I16 = 4,
    ASFDA_DTYPE_I32 = 8,
    ASFDA_DTYPE_F32 = 16,
    ASFDA_DTYPE_F64 = 64,
    ASFDA_DTYPE_I8 = 256,
    ASFDA_DTYPE_U16 = 512,
    ASFDA_DTYPE_U32 = 768,
    ASFDA_DTYPE_I64 = 1024,
    ASFDA_DTYPE_U64 = 1280,
}

/// World-coordinate convention of an affine. 3D Slicer uses RAS; ITK and DICOM software use LPS.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaConvention {
    ASFDA_RAS = 0,
    ASFDA_LPS = 1,
}

/// Voxel type of a written NIfTI file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaOutputType {
    /// Label map, values rounded, 0..=255.
    ASFDA_OUTPUT_U8 = 0,
    /// Label map, values rounded, 0..=65535.
    ASFDA_OUTPUT_U16 = 1,
    /// Float volume.
    ASFDA_OUTPUT_F32 = 2,
}

/// What to do with NaN/Inf voxels when reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaNonFinite {
    /// Fail with ASFDA_STATUS_INVALID_DATA saying how many voxels are not finite (default).
    ASFDA_NONFINITE_ERROR = 0,
    /// Replace them with `replace_value`.
    ASFDA_NONFINITE_REPLACE = 1,
    /// Keep them as they are.
    ASFDA_NONFINITE_KEEP = 2,
}

/// Options for asfda_volume_load and asfda_volume_from_buffer. Fill with
/// asfda_read_options_default().
#[repr(C)]
pub struct AsfdaReadOptions {
    /// Refuse files with more voxels (all channels) than this, before allocating. 0 = default.
    pub max_voxels: u64,
    /// An AsfdaNonFinite value.
    pub nonfinite: i32,
    /// Replacement for NaN/Inf voxels when nonfinite is ASFDA_NONFINITE_REPLACE.
    pub replace_value: f32,
    /// Refuse volumes whose f32 voxels would take more bytes than this, before allocating.
    /// 0 = default (4 GiB).
    pub max_bytes: u64,
}

/// The default read options (voxel limit 2^31, 4 GiB of voxels, NaN/Inf is an error).
#[no_mangle]
pub extern "C" fn asfda_read_options_default() -> AsfdaReadOptions {
    AsfdaReadOptions {
        max_voxels: ReadOptions::default().max_voxels,
        nonfinite: AsfdaNonFinite::ASFDA_NONFINITE_ERROR as i32,
        replace_value: 0.0,
        max_bytes: ReadOptions::default().max_bytes,
    }
}

fn read_options(options: *const AsfdaReadOptions) -> Result<ReadOptions> {
    let defaults = ReadOptions::default();
    // SAFETY: a non-NULL options pointer must point to an initialised struct (header contract).
    let Some(o) = (unsafe { options.as_ref() }) else { return Ok(defaults) };
    let nonfinite = match o.nonfinite {
        0 => NonFinitePolicy::Error,
        1 => NonFinitePolicy::Replace(o.replace_value),
        2 => NonFinitePolicy::Keep,
        other => {
            return Err(Error::invalid_argument(format!(
                "options->nonfinite = {other} is not an AsfdaNonFinite value (0, 1 or 2)"
            )))
        }
    };
    let max_voxels = if o.max_voxels == 0 { defaults.max_voxels } else { o.max_voxels };
    let max_bytes = if o.max_bytes == 0 { defaults.max_bytes } else { o.max_bytes };
    Ok(ReadOptions { max_voxels, max_bytes, nonfinite })
}

fn data_type(code: i32) -> Result<DataType> {
    i16::try_from(code)
        .ok()
        .and_then(|c| DataType::from_nifti_code(c).ok())
        .ok_or_else(|| Error::invalid_argument(format!("dtype = {code} is not an AsfdaDataType value")))
}

fn convention(code: i32) -> Result<Convention> {
    match code {
        0 => Ok(Convention::Ras),
        1 => Ok(Convention::Lps),
        other => Err(Error::invalid_argument(format!("convention = {other} is not ASFDA_RAS (0) or ASFDA_LPS (1)"))),
    }
}

fn output_type(code: i32) -> Result<OutputType> {
    match code {
        0 => Ok(OutputType::U8),
        1 => Ok(OutputType::U16),
        2 => Ok(OutputType::F32),
        other => {
            Err(Error::invalid_argument(format!("output type = {other} is not an AsfdaOutputType value (0, 1 or 2)")))
        }
    }
}

/// Reads a NIfTI-1 or NIfTI-2 file (.nii or .nii.gz). `options` may be NULL (defaults).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_load(
    path: *const c_char,
    options: *const AsfdaReadOptions,
    out_volume: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_volume, "out_volume")?;
        let path = c_path(path, "path")?;
        let volume = volume::read_nifti(&path, &read_options(options)?)?;
        write_out(out_volume, into_handle(volume));
        Ok(())
    })
}

/// Reads one DICOM series into a volume (RAS affine, rescaled values). `paths` holds `n_paths`
/// paths (bytes on Unix): series folders (every DICOM file directly inside is used) and/or
/// files of the series, in any order. `series_uid` may be NULL; when the files hold several
/// series it chooses one by SeriesInstanceUID (without it, several series are an error listing
/// them). `options` may be NULL (defaults); its max_bytes and max_voxels limits are checked
/// before files are read and before voxels are allocated (ASFDA_STATUS_TOO_LARGE).
///
/// Supported: Implicit/Explicit VR Little Endian, Deflated Explicit VR Little Endian, Explicit VR
/// Big Endian and RLE Lossless; compressed syntaxes such as JPEG give ASFDA_STATUS_UNSUPPORTED
/// naming the transfer syntax. Slices are sorted along their normal; uneven steps are resampled
/// within tolerance (logged) or refused; see README "Reading DICOM". ASFDA_STATUS_UNSUPPORTED
/// too when asfda was built without its `dicom` feature.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_read_dicom(
    paths: *const *const c_char,
    n_paths: usize,
    series_uid: *const c_char,
    options: *const AsfdaReadOptions,
    out_volume: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_volume, "out_volume")?;
        if paths.is_null() || n_paths == 0 {
            return Err(Error::invalid_argument(
                "argument 'paths' is NULL or n_paths is 0: name a series folder or its files",
            ));
        }
        // SAFETY: the caller provides `n_paths` readable pointers at `paths` (header contract).
        let pointers = unsafe { std::slice::from_raw_parts(paths, n_paths) };
        let paths =
            pointers.iter().enumerate().map(|(i, p)| c_path(*p, &format!("paths[{i}]"))).collect::<Result<Vec<_>>>()?;
        let options = read_options(options)?;
        let uid = if series_uid.is_null() { None } else { Some(super::c_str(series_uid, "series_uid")?) };
        let volume = read_dicom(&paths, &options, uid)?;
        write_out(out_volume, into_handle(volume));
        Ok(())
    })
}

#[cfg(feature = "dicom")]
fn read_dicom(paths: &[std::path::PathBuf], options: &ReadOptions, uid: Option<&str>) -> Result<Volume> {
    match uid {
        Some(uid) => volume::read_dicom_series_uid(paths, options, uid),
        None => volume::read_dicom_series(paths, options),
    }
}

#[cfg(not(feature = "dicom"))]
fn read_dicom(_: &[std::path::PathBuf], _: &ReadOptions, _: Option<&str>) -> Result<Volume> {
    Err(Error::unsupported("this asfda was built without its `dicom` feature: it cannot read DICOM"))
}

/// Writes `labels` (the label map asfda_segment_volume returned for the DICOM series read from
/// `sources`: files or folders, as asfda_volume_read_dicom takes them) as a binary DICOM
/// Segmentation object at `path`: one segment per foreground class of `engine`'s model (name,
/// colour and coded concept from its manifest), in the source's study and frame of reference,
/// frames referencing the source images they lie on, with new series and instance UIDs. The file
/// is written crash-safely (nothing at `path` on error). Errors: ASFDA_STATUS_INVALID_ARGUMENT
/// (labels that are not class indices of this model, a class without a coded concept),
/// ASFDA_STATUS_INVALID_DATA (sources of several series or without FrameOfReferenceUID),
/// ASFDA_STATUS_FORMAT / ASFDA_STATUS_IO (unreadable sources, unwritable path),
/// ASFDA_STATUS_UNSUPPORTED when built without the `dicom` feature.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_write_dicom_seg(
    labels: *const AsfdaVolume,
    engine: *const super::engine::AsfdaEngine,
    sources: *const *const c_char,
    source_count: usize,
    path: *const c_char,
) -> AsfdaStatus {
    guard(|| {
        let labels = &non_null(labels, "labels")?.0;
        let engine = &non_null(engine, "engine")?.0;
        if sources.is_null() || source_count == 0 {
            return Err(Error::invalid_argument(
                "argument 'sources' is NULL or source_count is 0: name the source series' folder or files",
            ));
        }
        // SAFETY: the caller provides `source_count` readable pointers at `sources` (header contract).
        let pointers = unsafe { std::slice::from_raw_parts(sources, source_count) };
        let sources = pointers
            .iter()
            .enumerate()
            .map(|(i, p)| c_path(*p, &format!("sources[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let path = c_path(path, "path")?;
        write_dicom_seg(engine, labels, &sources, &path)
    })
}

#[cfg(feature = "dicom")]
fn write_dicom_seg(
    engine: &crate::engine::Engine,
    labels: &Volume,
    sources: &[std::path::PathBuf],
    path: &std::path::Path,
) -> Result<()> {
    engine.write_dicom_seg(labels, sources, path).map(|_| ())
}

#[cfg(not(feature = "dicom"))]
fn write_dicom_seg(_: &crate::engine::Engine, _: &Volume, _: &[std::path::PathBuf], _: &std::path::Path) -> Result<()> {
    Err(Error::unsupported("this asfda was built without its `dicom` feature: it cannot write DICOM SEG"))
}

/// Makes a volume from `n_slices` slices the caller decoded itself (e.g. from a PACS), each
/// `rows` x `columns` f32 values, row by row (`pixels[i]` points to slice i's values, after any
/// rescale). `positions` holds 3 doubles per slice (ImagePositionPatient, LPS mm),
/// `orientations` 6 per slice (ImageOrientationPatient), `pixel_spacings` 2 per slice
/// (PixelSpacing: between rows, then between columns, mm). The slices may come in any order; the
/// rules are those of asfda_volume_read_dicom (sorted along the normal, one orientation and size,
/// uneven steps resampled within tolerance or refused, no duplicates, no gantry tilt). The
/// resulting affine is RAS. `options` may be NULL (defaults; limits checked before allocating).
#[no_mangle]
#[must_use]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn asfda_volume_from_slices(
    pixels: *const *const f32,
    n_slices: usize,
    rows: usize,
    columns: usize,
    positions: *const f64,
    orientations: *const f64,
    pixel_spacings: *const f64,
    options: *const AsfdaReadOptions,
    out_volume: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_volume, "out_volume")?;
        let options = read_options(options)?;
        let arrays = [(pixels.is_null(), "pixels"), (positions.is_null(), "positions")];
        let more = [(orientations.is_null(), "orientations"), (pixel_spacings.is_null(), "pixel_spacings")];
        if let Some((_, name)) = arrays.iter().chain(&more).find(|(null, _)| *null) {
            return Err(Error::invalid_argument(format!("argument '{name}' is NULL")));
        }
        let plane = rows
            .checked_mul(columns)
            .ok_or_else(|| Error::invalid_argument(format!("{rows} rows x {columns} columns overflow")))?;
        // SAFETY: the caller provides n_slices pointers and 3, 6 and 2 doubles per slice (header contract).
        let (pointers, p, o, s) = unsafe {
            (
                std::slice::from_raw_parts(pixels, n_slices),
                std::slice::from_raw_parts(positions, n_slices * 3),
                std::slice::from_raw_parts(orientations, n_slices * 6),
                std::slice::from_raw_parts(pixel_spacings, n_slices * 2),
            )
        };
        let mut slices = Vec::with_capacity(n_slices);
        for (i, ptr) in pointers.iter().enumerate() {
            if ptr.is_null() {
                return Err(Error::invalid_argument(format!("pixels[{i}] is NULL")));
            }
            // SAFETY: each non-NULL pixels[i] points to rows * columns floats (header contract).
            let values = unsafe { std::slice::from_raw_parts(*ptr, plane) };
            let geometry = volume::SliceGeometry {
                position: [p[3 * i], p[3 * i + 1], p[3 * i + 2]],
                orientation: std::array::from_fn(|k| o[6 * i + k]),
                pixel_spacing: [s[2 * i], s[2 * i + 1]],
            };
            slices.push(volume::SliceBuffer { pixels: values, rows, columns, geometry });
        }
        let volume = Volume::from_slices(&slices, &options)?;
        write_out(out_volume, into_handle(volume));
        Ok(())
    })
}

/// Imports a caller's voxel buffer (x fastest, then y, z, channel; native byte order).
/// `dims` holds 3 sizes; `spacing` (3 values, mm) may be NULL, otherwise it must agree with the
/// affine; `affine` is 16 doubles, row-major, voxel index -> world mm in `convention`.
/// `options` may be NULL (defaults): its max_voxels and max_bytes limits are checked before
/// anything is allocated (ASFDA_STATUS_TOO_LARGE); its nonfinite policy does not apply (a
/// buffer's values are kept as they are).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_from_buffer(
    data: *const u8,
    data_len: usize,
    dtype: i32,
    dims: *const usize,
    channels: usize,
    spacing: *const f64,
    affine: *const f64,
    convention: i32,
    options: *const AsfdaReadOptions,
    out_volume: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_volume, "out_volume")?;
        let options = read_options(options)?;
        let dtype = data_type(dtype)?;
        let convention = self::convention(convention)?;
        let dims = *non_null(dims.cast::<[usize; 3]>(), "dims")?;
        let affine_flat = *non_null(affine.cast::<[f64; 16]>(), "affine")?;
        let spacing = if spacing.is_null() { None } else { Some(*non_null(spacing.cast::<[f64; 3]>(), "spacing")?) };
        if data.is_null() {
            return Err(Error::invalid_argument("argument 'data' is NULL"));
        }
        // SAFETY: the caller provides `data_len` readable bytes at `data` (header contract).
        let bytes = unsafe { std::slice::from_raw_parts(data, data_len) };
        let affine = std::array::from_fn(|r| std::array::from_fn(|c| affine_flat[r * 4 + c]));
        let volume =
            Volume::from_buffer_with_options(bytes, dtype, dims, channels, spacing, affine, convention, &options)?;
        write_out(out_volume, into_handle(volume));
        Ok(())
    })
}

/// Writes a volume to `path` (.nii or .nii.gz) atomically: a temp file in the same folder, then
/// a rename, so an existing file is never left half-written.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_save(volume: *const AsfdaVolume, path: *const c_char, output_type: i32) -> AsfdaStatus {
    guard(|| {
        let volume = &non_null(volume, "volume")?.0;
        let path = c_path(path, "path")?;
        volume::write_nifti(volume, &path, self::output_type(output_type)?)
    })
}

/// Frees a volume; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_volume_free(volume: *mut AsfdaVolume) {
    free_handle(volume);
}

/// Spatial sizes (x, y, z) into `out_dims[3]` and the channel count into `*out_channels`.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_dims(
    volume: *const AsfdaVolume,
    out_dims: *mut usize,
    out_channels: *mut usize,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_dims, "out_dims")?;
        check_out(out_channels, "out_channels")?;
        let volume = &non_null(volume, "volume")?.0;
        write_out(out_dims.cast::<[usize; 3]>(), volume.dims());
        write_out(out_channels, volume.channels());
        Ok(())
    })
}

/// Voxel spacing in mm (x, y, z) into `out_spacing[3]`.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_spacing(volume: *const AsfdaVolume, out_spacing: *mut f64) -> AsfdaStatus {
    guard(|| {
        check_out(out_spacing, "out_spacing")?;
        let volume = &non_null(volume, "volume")?.0;
        write_out(out_spacing.cast::<[f64; 3]>(), volume.spacing());
        Ok(())
    })
}

/// The voxel-to-world affine (16 doubles, row-major) in the requested convention.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_affine(
    volume: *const AsfdaVolume,
    convention: i32,
    out_affine: *mut f64,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_affine, "out_affine")?;
        let convention = self::convention(convention)?;
        let volume = &non_null(volume, "volume")?.0;
        let m = volume.affine_in(convention);
        write_out(out_affine.cast::<[f64; 16]>(), std::array::from_fn(|i| m[i / 4][i % 4]));
        Ok(())
    })
}

/// A read-only pointer to the voxels (f32, x fastest, then y, z, channel) and their count.
/// The pointer is valid until the volume is freed.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_data(
    volume: *const AsfdaVolume,
    out_data: *mut *const f32,
    out_len: *mut usize,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_data, "out_data")?;
        check_out(out_len, "out_len")?;
        let volume = &non_null(volume, "volume")?.0;
        write_out(out_data, volume.data().as_ptr());
        write_out(out_len, volume.data().len());
        Ok(())
    })
}

/// Reorients to the closest canonical RAS orientation (as nibabel's as_closest_canonical) and
/// returns a new volume. Free it with asfda_volume_free.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_to_canonical(
    volume: *const AsfdaVolume,
    out_volume: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_volume, "out_volume")?;
        let volume = &non_null(volume, "volume")?.0;
        let (canonical, _orientation) = volume.to_canonical();
        write_out(out_volume, into_handle(canonical));
        Ok(())
    })
}

/// Checks that a label map (or any second volume) lies on the same voxel grid as an image:
/// same dims and affine. Returns ASFDA_STATUS_GEOMETRY_MISMATCH with both geometries in the
/// message otherwise.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_volume_check_same_grid(image: *const AsfdaVolume, label: *const AsfdaVolume) -> AsfdaStatus {
    guard(|| {
        let image = &non_null(image, "image")?.0;
        let label = &non_null(label, "label")?.0;
        image.check_same_grid(label, "label map")
    })
}
