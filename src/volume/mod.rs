//! Voxels plus geometry: the [`Volume`] type, NIfTI-1/NIfTI-2 I/O ([`read_nifti`], [`write_nifti`]),
//! DICOM series reading (`dicom`, feature `dicom`), volumes from host-decoded slices
//! ([`Volume::from_slices`]) and nibabel-compatible closest-canonical reorientation
//! ([`Volume::to_canonical`], [`Orientation`]).
//!
//! World coordinates are always RAS millimetres internally (the NIfTI convention); callers working in
//! LPS (DICOM, ITK) say so with [`Convention::Lps`] at the boundary.

mod affine;
mod datatype;
#[cfg(feature = "dicom")]
pub mod dicom;
mod header;
pub mod nifti_io;
pub mod orientation;
mod other_formats;
pub mod slices;

pub use datatype::DataType;
#[cfg(feature = "dicom")]
pub use dicom::{read_dicom_bytes, read_dicom_series, read_dicom_series_uid, write_dicom_seg, SegWritten};
pub use nifti_io::{
    read_nifti, read_nifti_bytes, write_nifti, NonFinitePolicy, OutputType, ReadOptions, DEFAULT_MAX_BYTES,
};
pub use orientation::Orientation;
pub use slices::{SliceBuffer, SliceGeometry};

use crate::error::{Error, ErrorKind, Result};
use affine::Affine;

/// World-coordinate convention of an affine supplied by a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    /// x = Right, y = Anterior, z = Superior (NIfTI, nibabel, FreeSurfer).
    Ras,
    /// x = Left, y = Posterior, z = Superior (DICOM, ITK, 3D Slicer's internal files).
    Lps,
}

/// Voxel sizes (mm) the engine accepts (see [`Volume::check_plausible_spacing`]): from 1 µm
/// (microscopy-grade) to 1 m.
pub const PLAUSIBLE_SPACING_MM: std::ops::RangeInclusive<f64> = 1e-3..=1e3;

/// Largest absolute difference (mm) between affine entries for two volumes to share a grid.
const GRID_TOLERANCE_MM: f64 = 1e-4;

/// The NIfTI `sform_code`/`qform_code` of the file a volume was read from, kept so that writing the
/// volume back preserves what its coordinates mean (scanner, aligned, Talairach, MNI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct XformCodes {
    sform: i64,
    qform: i64,
}

/// A 3D image with C channels: f32 voxels, x fastest then y, z, channel (NIfTI/Fortran order),
/// plus the voxel (i,j,k) -> world RAS millimetre affine.
///
/// Invariants (enforced by every constructor): `data.len() == nx*ny*nz*channels`, every dim >= 1,
/// channels >= 1, the affine is finite with bottom row `[0, 0, 0, 1]`, every column of its 3x3 part
/// has norm > 0 (spacing > 0) and the 3x3 part is non-singular. Voxel values may be non-finite
/// (see [`Volume::nonfinite_count`]). Equality also compares the xform codes remembered from a file.
#[derive(Clone, PartialEq)]
pub struct Volume {
    data: Vec<f32>,
    dims: [usize; 3],
    channels: usize,
    affine: Affine,
    /// `Some` when read from a NIfTI file; carried through reorientation like nibabel does.
    codes: Option<XformCodes>,
}

impl Volume {
    /// A volume from f32 voxels (x fastest, channel slowest) and a RAS affine.
    ///
    /// Errors: `InvalidArgument` for a zero dim/channel count or a data length that does not match;
    /// `InvalidData` for an unusable affine (non-finite, not affine, zero spacing, singular).
    pub fn new(data: Vec<f32>, dims: [usize; 3], channels: usize, affine_ras: [[f64; 4]; 4]) -> Result<Volume> {
        let expected = element_count(dims, channels)?;
        if data.len() != expected {
            return Err(Error::invalid_argument(format!(
                "voxel data has {} values but dims {dims:?} x {channels} channel(s) need {expected}",
                data.len()
            )));
        }
        affine::validate(&affine_ras)?;
        Ok(Volume { data, dims, channels, affine: affine_ras, codes: None })
    }

    /// Imports a caller's raw buffer: any [`DataType`] in native endianness, x fastest, channels slowest,
    /// with a row-major 4x4 affine in `convention` (LPS is converted to RAS by negating rows 0 and 1).
    ///
    /// If `spacing` is given it must equal the affine's column norms within 1e-3 relative, else
    /// `GeometryMismatch` (it catches callers passing a matrix without spacing, or transposed).
    /// Values are converted to f32 unscaled; non-finite values are kept. The f32 copy may take at
    /// most [`DEFAULT_MAX_BYTES`] (`TooLarge` beyond; see [`Volume::from_buffer_with_options`]).
    pub fn from_buffer(
        bytes: &[u8],
        dtype: DataType,
        dims: [usize; 3],
        channels: usize,
        spacing: Option<[f64; 3]>,
        affine: [[f64; 4]; 4],
        convention: Convention,
    ) -> Result<Volume> {
        let options = ReadOptions::default();
        Volume::from_buffer_with_options(bytes, dtype, dims, channels, spacing, affine, convention, &options)
    }

    /// [`Volume::from_buffer`] under `options`' limits: `max_voxels` and `max_bytes` (the f32 copy),
    /// both checked before anything is allocated; the allocation itself failing is `TooLarge`
    /// too. `options.nonfinite` does not apply: a buffer's values are kept as they are.
    #[allow(clippy::too_many_arguments)]
    pub fn from_buffer_with_options(
        bytes: &[u8],
        dtype: DataType,
        dims: [usize; 3],
        channels: usize,
        spacing: Option<[f64; 3]>,
        affine: [[f64; 4]; 4],
        convention: Convention,
        options: &ReadOptions,
    ) -> Result<Volume> {
        let count = element_count(dims, channels)?;
        let what = format!("dims {dims:?} x {channels} channel(s)");
        if count as u64 > options.max_voxels {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("{what} hold {count} voxels, over the limit of {} (max_voxels)", options.max_voxels),
            ));
        }
        check_f32_bytes(count, options.max_bytes, &what)?;
        let expected = count
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| Error::new(ErrorKind::TooLarge, format!("dims {dims:?} x {channels} channels overflow")))?;
        if bytes.len() != expected {
            return Err(Error::invalid_argument(format!(
                "buffer has {} bytes but dims {dims:?} x {channels} channel(s) of {dtype:?} ({} bytes each) need {expected}",
                bytes.len(),
                dtype.size_bytes()
            )));
        }
        let affine_ras = affine::convert(&affine, convention);
        affine::validate(&affine_ras)?;
        if let Some(spacing) = spacing {
            check_spacing(spacing, affine::spacing(&affine_ras))?;
        }
        let mut data = try_vec_f32(count)?;
        dtype.decode_into(bytes, cfg!(target_endian = "big"), None, &mut data);
        Volume::new(data, dims, channels, affine_ras)
    }

    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Voxels per channel (nx * ny * nz).
    pub fn voxel_count(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The voxels of channel `c`.
    ///
    /// # Panics
    /// If `c >= self.channels()`.
    pub fn channel(&self, c: usize) -> &[f32] {
        assert!(c < self.channels, "channel {c} out of range (volume has {})", self.channels);
        let n = self.voxel_count();
        &self.data[c * n..(c + 1) * n]
    }

    /// Voxel (i, j, k) -> world RAS mm.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        self.affine
    }

    /// Voxel (i, j, k) -> world mm in `convention`.
    pub fn affine_in(&self, convention: Convention) -> [[f64; 4]; 4] {
        affine::convert(&self.affine, convention)
    }

    /// Voxel size in mm along each voxel axis (the affine's column norms).
    pub fn spacing(&self) -> [f64; 3] {
        affine::spacing(&self.affine)
    }

    /// `InvalidData` naming the spacing unless every voxel size is within
    /// [`PLAUSIBLE_SPACING_MM`]. Reading stays as tolerant as nibabel (any finite, non-zero
    /// spacing); the engine refuses to run a model on a grid like 1e-30 mm, where resampling to
    /// the model's spacing would be meaningless (and at 1e-30 mm, silently degenerate).
    pub fn check_plausible_spacing(&self) -> Result<()> {
        let spacing = self.spacing();
        if spacing.iter().all(|s| PLAUSIBLE_SPACING_MM.contains(s)) {
            return Ok(());
        }
        Err(Error::invalid_data(format!(
            "voxel spacing {spacing:?} mm is implausible for a medical image: each voxel size must be within {} to {} mm \
             (check the file's pixdim/affine or the spacing passed with the buffer)",
            PLAUSIBLE_SPACING_MM.start(),
            PLAUSIBLE_SPACING_MM.end()
        )))
    }

    /// `InvalidData` unless the volume has at least two voxels along every axis: a single slice (a
    /// 2D image saved as NIfTI) would otherwise be resampled into a slab and "segmented" as
    /// whatever class the model guesses for a smear.
    pub fn check_3d(&self) -> Result<()> {
        let d = self.dims;
        if d.iter().all(|&n| n >= 2) {
            return Ok(());
        }
        Err(Error::invalid_data(format!(
            "the volume is {}x{}x{} voxels: a single slice (2D image) cannot be scored, segmented or used \
             for fine-tuning; asfda's model works on 3D volumes",
            d[0], d[1], d[2]
        )))
    }

    /// Same dims and affines equal within 1e-4 mm per entry (channel counts may differ).
    pub fn same_grid(&self, other: &Volume) -> bool {
        self.dims == other.dims
            && self
                .affine
                .iter()
                .flatten()
                .zip(other.affine.iter().flatten())
                .all(|(a, b)| (a - b).abs() <= GRID_TOLERANCE_MM)
    }

    /// `GeometryMismatch` naming both grids unless [`Volume::same_grid`]; `what` says which inputs.
    pub fn check_same_grid(&self, other: &Volume, what: &str) -> Result<()> {
        if self.same_grid(other) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::GeometryMismatch,
            format!(
                "{what}: the volumes are on different voxel grids (dims {:?} vs {:?}, affines {:?} vs {:?}); resample one onto the other first",
                self.dims, other.dims, self.affine, other.affine
            ),
        ))
    }

    /// Number of NaN or infinite voxels.
    pub fn nonfinite_count(&self) -> usize {
        self.data.iter().filter(|v| !v.is_finite()).count()
    }

    /// Replaces NaN/infinite voxels by `value`; returns how many were replaced.
    pub fn replace_nonfinite(&mut self, value: f32) -> usize {
        let mut replaced = 0;
        for v in self.data.iter_mut().filter(|v| !v.is_finite()) {
            *v = value;
            replaced += 1;
        }
        replaced
    }

    /// The closest canonical (RAS+) orientation, exactly like `nibabel.as_closest_canonical`: a voxel
    /// axis permutation and flips chosen from the affine (SVD polar factor, greedy axis assignment),
    /// with no resampling. Returns the reoriented volume and the [`Orientation`] applied, whose
    /// [`Orientation::undo`] maps results back onto this grid; a volume already in RAS order comes
    /// back unchanged with an identity orientation.
    pub fn to_canonical(&self) -> (Volume, Orientation) {
        let orientation = Orientation::closest_canonical(&self.affine, self.dims);
        let canonical = orientation.reorient(self);
        (canonical, orientation)
    }

    /// What [`Volume::to_canonical`] would produce — the orientation, the canonical dims and
    /// affine — without copying the voxels (preprocessing reads an already-RAS volume in place).
    pub fn canonical_geometry(&self) -> (Orientation, [usize; 3], [[f64; 4]; 4]) {
        let orientation = Orientation::closest_canonical(&self.affine, self.dims);
        let affine = if orientation.is_identity() {
            self.affine
        } else {
            affine::multiply(&self.affine, &orientation.output_to_input_voxels())
        };
        let dims = orientation.output_dims();
        (orientation, dims, affine)
    }

    /// Keeps the xform codes of the file this volume came from (see [`write_nifti`]).
    fn with_codes(mut self, codes: XformCodes) -> Volume {
        self.codes = Some(codes);
        self
    }
}

/// Geometry only: the voxels of a real image would flood logs.
impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("dims", &self.dims)
            .field("channels", &self.channels)
            .field("affine", &self.affine)
            .field("codes", &self.codes)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// nx*ny*nz*channels, refusing zero or overflowing sizes.
fn element_count(dims: [usize; 3], channels: usize) -> Result<usize> {
    if dims.contains(&0) || channels == 0 {
        return Err(Error::invalid_argument(format!("dims {dims:?} and channel count {channels} must all be >= 1")));
    }
    dims.iter()
        .try_fold(channels, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::new(ErrorKind::TooLarge, format!("dims {dims:?} x {channels} channels overflow")))
}

/// Refuses `count` f32 values over `max_bytes`, naming the bytes needed and the limit.
fn check_f32_bytes(count: usize, max_bytes: u64, what: &str) -> Result<()> {
    let needed = (count as u64).saturating_mul(std::mem::size_of::<f32>() as u64);
    if needed > max_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("{what} need {needed} bytes as f32 voxels, over the limit of {max_bytes} bytes (max_bytes)"),
        ));
    }
    Ok(())
}

/// An empty vector with room for `count` f32 values, or `TooLarge` when the allocator refuses
/// (a `Vec::with_capacity` would abort the host process instead).
fn try_vec_f32(count: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    try_reserve_f32(&mut v, count)?;
    Ok(v)
}

/// Room for `more` values in `v` (amortised growth), or `TooLarge` when the allocator refuses.
fn try_reserve_f32(v: &mut Vec<f32>, more: usize) -> Result<()> {
    v.try_reserve(more).map_err(|e| {
        let bytes = (v.len() as u64 + more as u64) * std::mem::size_of::<f32>() as u64;
        Error::new(ErrorKind::TooLarge, format!("cannot allocate {bytes} bytes for the voxels: {e}"))
    })
}

/// The caller's spacing must agree with the affine's column norms (1e-3 relative).
fn check_spacing(given: [f64; 3], from_affine: [f64; 3]) -> Result<()> {
    let matches = given.iter().zip(&from_affine).all(|(g, a)| g.is_finite() && *g > 0.0 && (g - a).abs() <= 1e-3 * a);
    if matches {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::GeometryMismatch,
        format!(
            "spacing {given:?} does not match the affine's voxel sizes (column norms) {from_affine:?}; \
             the affine must include the spacing, in row-major order"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(s: [f64; 3]) -> [[f64; 4]; 4] {
        [[s[0], 0.0, 0.0, 1.0], [0.0, s[1], 0.0, 2.0], [0.0, 0.0, s[2], 3.0], [0.0, 0.0, 0.0, 1.0]]
    }

    #[test]
    fn implausible_spacing_is_named() {
        for ok in [[1e-3, 1.0, 1.0], [1.0, 1.0, 1e3], [0.5, 0.5, 5.0]] {
            Volume::new(vec![0.0; 8], [2, 2, 2], 1, diag(ok)).unwrap().check_plausible_spacing().unwrap();
        }
        for bad in [[1e-30, 1.0, 1.0], [1.0, 1e5, 1.0], [1.0, 1.0, 9.9e-4], [1.0, 1001.0, 1.0]] {
            let e = Volume::new(vec![0.0; 8], [2, 2, 2], 1, diag(bad)).unwrap().check_plausible_spacing().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData);
            assert!(e.message().contains("implausible") && e.message().contains(&format!("{:?}", bad[0])), "{e}");
        }
    }

    #[test]
    fn new_checks_lengths_and_dims() {
        assert!(Volume::new(vec![0.0; 24], [2, 3, 4], 1, diag([1.0; 3])).is_ok());
        let e = Volume::new(vec![0.0; 23], [2, 3, 4], 1, diag([1.0; 3])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = Volume::new(vec![], [0, 3, 4], 1, diag([1.0; 3])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = Volume::new(vec![0.0; 24], [2, 3, 4], 1, diag([1.0, 0.0, 1.0])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn channels_and_nonfinite() {
        let mut v = Volume::new(vec![1.0, f32::NAN, 3.0, f32::INFINITY], [2, 1, 1], 2, diag([1.0; 3])).unwrap();
        assert_eq!(v.channel(1), &[3.0, f32::INFINITY]);
        assert_eq!(v.nonfinite_count(), 2);
        assert_eq!(v.replace_nonfinite(0.0), 2);
        assert_eq!(v.data(), &[1.0, 0.0, 3.0, 0.0]);
    }

    #[test]
    fn from_buffer_lps_and_spacing() {
        let bytes: Vec<u8> = [1u16, 2, 3, 4].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let v = Volume::from_buffer(
            &bytes,
            DataType::U16,
            [2, 2, 1],
            1,
            Some([1.0, 2.0, 3.0]),
            diag([1.0, 2.0, 3.0]),
            Convention::Lps,
        )
        .unwrap();
        assert_eq!(v.data(), &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(v.affine()[0], [-1.0, 0.0, 0.0, -1.0]);
        assert_eq!(v.affine()[1], [0.0, -2.0, 0.0, -2.0]);
        assert_eq!(v.affine_in(Convention::Lps), diag([1.0, 2.0, 3.0]));
        let e = Volume::from_buffer(
            &bytes,
            DataType::U16,
            [2, 2, 1],
            1,
            Some([1.0, 1.0, 1.0]),
            diag([1.0, 2.0, 3.0]),
            Convention::Ras,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::GeometryMismatch);
        let e = Volume::from_buffer(&bytes[1..], DataType::U16, [2, 2, 1], 1, None, diag([1.0; 3]), Convention::Ras)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn grid_comparison() {
        let a = Volume::new(vec![0.0; 8], [2, 2, 2], 1, diag([1.0; 3])).unwrap();
        let mut shifted = diag([1.0; 3]);
        shifted[0][3] += 5e-5;
        let b = Volume::new(vec![0.0; 16], [2, 2, 2], 2, shifted).unwrap();
        assert!(a.same_grid(&b));
        shifted[0][3] += 1e-3;
        let c = Volume::new(vec![0.0; 8], [2, 2, 2], 1, shifted).unwrap();
        let e = a.check_same_grid(&c, "image and label").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::GeometryMismatch);
        assert!(e.message().starts_with("image and label"));
    }
}
