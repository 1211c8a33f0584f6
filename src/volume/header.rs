//! NIfTI-1 (348-byte) and NIfTI-2 (540-byte) headers, parsed by hand in either byte order into one
//! widened struct, and encoded (little-endian) for writing.
//!
//! Hand parsing (rather than the `nifti` crate) gives one code path for both versions (nifti 0.18 has
//! no NIfTI-2) and full control over validation: nothing here trusts a header value before checking it.

use super::affine::{self, Affine, QformParams};
use super::DataType;
use crate::error::{Error, ErrorKind, Result};

/// Byte offsets and field widths of one header version.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    name: &'static str,
    size: usize,
    magic_at: usize,
    magic: &'static [u8],
    pair_magic: &'static [u8],
    /// Width of the `dim` entries (and of NIfTI-2's integer `vox_offset`).
    int: usize,
    /// Width of `pixdim`, scaling, quaternion and `srow` floats.
    float: usize,
    /// Width of `qform_code`/`sform_code` and `xyzt_units`.
    code: usize,
    units: usize,
    dim: usize,
    datatype: usize,
    bitpix: usize,
    pixdim: usize,
    vox_offset: usize,
    scl_slope: usize,
    scl_inter: usize,
    descrip: usize,
    qform_code: usize,
    sform_code: usize,
    /// quatern_b, _c, _d then qoffset_x, _y, _z, consecutive.
    quatern: usize,
    /// srow_x, srow_y, srow_z, 4 floats each, consecutive.
    srow: usize,
    xyzt_units: usize,
}

const NIFTI1: Layout = Layout {
    name: "NIfTI-1",
    size: 348,
    magic_at: 344,
    magic: b"n+1\0",
    pair_magic: b"ni1\0",
    int: 2,
    float: 4,
    code: 2,
    units: 1,
    dim: 40,
    datatype: 70,
    bitpix: 72,
    pixdim: 76,
    vox_offset: 108,
    scl_slope: 112,
    scl_inter: 116,
    descrip: 148,
    qform_code: 252,
    sform_code: 254,
    quatern: 256,
    srow: 280,
    xyzt_units: 123,
};

const NIFTI2: Layout = Layout {
    name: "NIfTI-2",
    size: 540,
    magic_at: 4,
    magic: b"n+2\0",
    pair_magic: b"ni2\0",
    int: 8,
    float: 8,
    code: 4,
    units: 4,
    dim: 16,
    datatype: 12,
    bitpix: 14,
    pixdim: 104,
    vox_offset: 168,
    scl_slope: 176,
    scl_inter: 184,
    descrip: 240,
    qform_code: 344,
    sform_code: 348,
    quatern: 352,
    srow: 400,
    xyzt_units: 500,
};

/// NIfTI-2's magic is followed by these 4 bytes, which text-mode transfers corrupt.
const NIFTI2_EOL_CHECK: [u8; 4] = [13, 10, 26, 10];

/// `NIFTI_UNITS_MM`.
const UNITS_MM: i64 = 2;

/// Header version and byte order, detected from `sizeof_hdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Encoding {
    layout: &'static Layout,
    big_endian: bool,
}

impl Encoding {
    /// Detects the version from the first 4 bytes (`sizeof_hdr`, 348 or 540, in either byte order).
    pub fn detect(first4: [u8; 4]) -> Result<Encoding> {
        for layout in [&NIFTI1, &NIFTI2] {
            for big_endian in [false, true] {
                let size = if big_endian { i32::from_be_bytes(first4) } else { i32::from_le_bytes(first4) };
                if usize::try_from(size) == Ok(layout.size) {
                    return Ok(Encoding { layout, big_endian });
                }
            }
        }
        Err(Error::format(format!(
            "not a NIfTI file: the first 4 bytes {first4:02x?} are not a NIfTI-1 (348) or NIfTI-2 (540) header size"
        )))
    }

    /// The encoding asfda writes: little-endian NIfTI-1, or NIfTI-2 when a size does not fit NIfTI-1's i16.
    pub fn for_writing(dims: [usize; 3], channels: usize) -> Encoding {
        let fits_nifti1 = dims.iter().chain([&channels]).all(|&d| d <= i16::MAX as usize);
        Encoding { layout: if fits_nifti1 { &NIFTI1 } else { &NIFTI2 }, big_endian: false }
    }

    pub fn header_size(self) -> usize {
        self.layout.size
    }

    pub fn is_big_endian(self) -> bool {
        self.big_endian
    }

    pub fn name(self) -> &'static str {
        self.layout.name
    }

    /// Smallest voxel offset of a single-file image: the header plus the 4-byte extension flag.
    pub fn min_data_offset(self) -> u64 {
        self.layout.size as u64 + 4
    }
}

/// The header fields asfda uses, widened: integers to i64, floats to f64.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Header {
    pub encoding: Encoding,
    pub dim: [i64; 8],
    pub datatype: i16,
    pub pixdim: [f64; 8],
    pub vox_offset: f64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i64,
    pub sform_code: i64,
    pub quatern: [f64; 3],
    pub qoffset: [f64; 3],
    pub srow: [[f64; 4]; 3],
}

/// Voxel grid size described by a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub dims: [usize; 3],
    /// Product of dims 4..=7: time points, components, CIFTI matrix entries...
    pub channels: usize,
    /// dims product times channels.
    pub elements: usize,
}

impl Header {
    /// Parses a whole header (`bytes.len() >= encoding.header_size()`, else `Format`).
    pub fn parse(encoding: Encoding, bytes: &[u8]) -> Result<Header> {
        let l = encoding.layout;
        if bytes.len() < l.size {
            return Err(Error::format(format!(
                "not a NIfTI file: {} bytes, too short for a {} header ({} bytes)",
                bytes.len(),
                l.name,
                l.size
            )));
        }
        let f = Fields { bytes, big_endian: encoding.big_endian };
        check_magic(l, &f)?;
        Ok(Header {
            encoding,
            dim: std::array::from_fn(|i| f.int(l.dim + i * l.int, l.int)),
            datatype: f.int(l.datatype, 2) as i16,
            pixdim: std::array::from_fn(|i| f.float(l.pixdim + i * l.float, l.float)),
            vox_offset: if l.int == 8 { f.int(l.vox_offset, 8) as f64 } else { f.float(l.vox_offset, 4) },
            scl_slope: f.float(l.scl_slope, l.float),
            scl_inter: f.float(l.scl_inter, l.float),
            qform_code: f.int(l.qform_code, l.code),
            sform_code: f.int(l.sform_code, l.code),
            quatern: std::array::from_fn(|i| f.float(l.quatern + i * l.float, l.float)),
            qoffset: std::array::from_fn(|i| f.float(l.quatern + (3 + i) * l.float, l.float)),
            srow: std::array::from_fn(|r| std::array::from_fn(|c| f.float(l.srow + (4 * r + c) * l.float, l.float))),
        })
    }

    /// Dims 1..3 are spatial (missing ones are 1) and dims 4.. fold into channels. Refuses bad dims
    /// (`InvalidData`) and more than `max_elements` voxels in all (`TooLarge`), before anything is allocated.
    pub fn shape(&self, max_elements: u64) -> Result<Shape> {
        let ndim = self.dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(Error::invalid_data(format!("dim[0] = {ndim}, the number of dimensions, must be 1..7")));
        }
        let mut sizes = [1u64; 8];
        for (i, size) in sizes.iter_mut().enumerate().skip(1).take(ndim as usize) {
            *size = u64::try_from(self.dim[i])
                .ok()
                .filter(|&d| d >= 1)
                .ok_or_else(|| Error::invalid_data(format!("dim[{i}] = {} must be >= 1", self.dim[i])))?;
        }
        let elements = match sizes[1..].iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) {
            Some(n) if n <= max_elements => n,
            too_many => {
                let count = too_many.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "the image has {count} voxels (dims {:?}), over the limit of {max_elements}; \
                         raise ReadOptions::max_voxels to read it",
                        &self.dim[1..=ndim as usize]
                    ),
                ));
            }
        };
        let to_usize = |v: u64| {
            usize::try_from(v).map_err(|_| Error::new(ErrorKind::TooLarge, format!("{v} voxels do not fit in memory")))
        };
        Ok(Shape {
            dims: [to_usize(sizes[1])?, to_usize(sizes[2])?, to_usize(sizes[3])?],
            channels: to_usize(sizes[4..].iter().product())?,
            elements: to_usize(elements)?,
        })
    }

    pub fn data_type(&self) -> Result<DataType> {
        DataType::from_nifti_code(self.datatype)
    }

    /// Byte offset of the voxel data (truncated to an integer, as nibabel and nifti1_io do).
    pub fn data_offset(&self) -> Result<u64> {
        let min = self.encoding.min_data_offset();
        if !(self.vox_offset >= min as f64 && self.vox_offset < u64::MAX as f64) {
            return Err(Error::format(format!(
                "vox_offset = {} points inside the header (must be >= {min} for a single-file {})",
                self.vox_offset,
                self.encoding.name()
            )));
        }
        Ok(self.vox_offset as u64)
    }

    /// `(slope, inter)` to apply, or `None`: like nibabel, a slope of 0 or non-finite means unscaled.
    pub fn scaling(&self) -> Result<Option<(f64, f64)>> {
        let (slope, inter) = (self.scl_slope, self.scl_inter);
        if slope == 0.0 || !slope.is_finite() {
            return Ok(None);
        }
        if !inter.is_finite() {
            return Err(Error::invalid_data(format!("scl_slope = {slope} is valid but scl_inter = {inter} is not")));
        }
        Ok(if (slope, inter) == (1.0, 0.0) { None } else { Some((slope, inter)) })
    }

    /// The voxel -> RAS affine: the sform if `sform_code > 0`, else the qform if `qform_code > 0`
    /// (NIfTI standard priority, as in nifti1_io), else nibabel's Analyze-style base affine.
    pub fn affine(&self) -> Result<Affine> {
        let (source, a) = if self.sform_code > 0 {
            ("sform", self.sform())
        } else if self.qform_code > 0 {
            ("qform", self.qform()?)
        } else {
            ("fallback (no sform or qform)", self.base_affine()?)
        };
        affine::validate(&a).map_err(|e| e.context(format!("{source} affine")))?;
        Ok(a)
    }

    fn sform(&self) -> Affine {
        let [x, y, z] = self.srow;
        [x, y, z, [0.0, 0.0, 0.0, 1.0]]
    }

    /// The NIfTI quaternion formula as nibabel implements it (`fillpositive`, `quat2mat`); qfac is
    /// -1 when pixdim[0] < 0, else 1 (NIfTI standard).
    fn qform(&self) -> Result<Affine> {
        let [b, c, d] = self.quatern;
        let w2 = 1.0 - (b * b + c * c + d * d);
        // The stored b, c, d are rounded to the header's float precision, so |w2| that small is 0.
        let eps = if self.encoding.layout.float == 4 { f64::from(f32::EPSILON) } else { f64::EPSILON };
        let w = if w2.abs() < 3.0 * eps {
            0.0
        } else if w2 < 0.0 || !w2.is_finite() {
            return Err(Error::invalid_data(format!(
                "qform quaternion (b, c, d) = {:?} is not a unit quaternion (b^2+c^2+d^2 > 1)",
                self.quatern
            )));
        } else {
            w2.sqrt()
        };
        let r = affine::quaternion_to_matrix([w, b, c, d]);
        let mut zooms = self.zooms(3, "qform")?;
        zooms[2] *= if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let row = |i: usize| [r[i][0] * zooms[0], r[i][1] * zooms[1], r[i][2] * zooms[2], self.qoffset[i]];
        Ok([row(0), row(1), row(2), [0.0, 0.0, 0.0, 1.0]])
    }

    /// nibabel `get_base_affine()` (Analyze convention): diag(-pixdim1, pixdim2, pixdim3) with the
    /// world origin at the centre of the volume.
    fn base_affine(&self) -> Result<Affine> {
        let ndim = usize::try_from(self.dim[0]).unwrap_or(0).min(3);
        let zooms = self.zooms(ndim, "fallback")?;
        let shape: [f64; 3] = std::array::from_fn(|i| if i < ndim { self.dim[i + 1] as f64 } else { 1.0 });
        let diag = [-zooms[0], zooms[1], zooms[2]];
        let row = |i: usize| {
            let mut r = [0.0; 4];
            r[i] = diag[i];
            r[3] = -(shape[i] - 1.0) / 2.0 * diag[i];
            r
        };
        Ok([row(0), row(1), row(2), [0.0, 0.0, 0.0, 1.0]])
    }

    /// pixdim[1..=used] as voxel sizes, each finite and > 0; unused ones are 1.
    fn zooms(&self, used: usize, source: &str) -> Result<[f64; 3]> {
        let mut zooms = [1.0; 3];
        for (i, z) in zooms.iter_mut().enumerate().take(used) {
            let p = self.pixdim[i + 1];
            if !(p.is_finite() && p > 0.0) {
                return Err(Error::invalid_data(format!(
                    "pixdim[{}] = {p} is used as the voxel size by the {source} affine and must be > 0",
                    i + 1
                )));
            }
            *z = p;
        }
        Ok(zooms)
    }

    /// The header asfda writes for a volume: both sform and qform encode `affine`, unscaled data in mm.
    pub fn for_volume(shape: Shape, datatype: DataType, affine: &Affine, sform_code: i64, qform_code: i64) -> Header {
        let encoding = Encoding::for_writing(shape.dims, shape.channels);
        let QformParams { qfac, zooms, quatern, offset } = affine::qform_params(affine);
        let [nx, ny, nz] = shape.dims.map(|d| d as i64);
        let (ndim, nt) = if shape.channels > 1 { (4, shape.channels as i64) } else { (3, 1) };
        Header {
            encoding,
            dim: [ndim, nx, ny, nz, nt, 1, 1, 1],
            datatype: datatype.nifti_code(),
            pixdim: [qfac, zooms[0], zooms[1], zooms[2], 1.0, 1.0, 1.0, 1.0],
            vox_offset: encoding.min_data_offset() as f64,
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code,
            sform_code,
            quatern,
            qoffset: offset,
            srow: [affine[0], affine[1], affine[2]],
        }
    }

    /// The header bytes followed by the 4-byte "no extensions" flag, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let l = self.encoding.layout;
        let mut f = FieldsMut { bytes: vec![0; l.size + 4] };
        f.int(0, 4, l.size as i64);
        f.put(l.magic_at, l.magic);
        if l.int == 8 {
            f.put(l.magic_at + 4, &NIFTI2_EOL_CHECK);
        }
        for (i, d) in self.dim.iter().enumerate() {
            f.int(l.dim + i * l.int, l.int, *d);
        }
        f.int(l.datatype, 2, i64::from(self.datatype));
        let bitpix = DataType::from_nifti_code(self.datatype).map_or(0, |t| 8 * t.size_bytes() as i64);
        f.int(l.bitpix, 2, bitpix);
        for (i, p) in self.pixdim.iter().enumerate() {
            f.float(l.pixdim + i * l.float, l.float, *p);
        }
        if l.int == 8 {
            f.int(l.vox_offset, 8, self.vox_offset as i64);
        } else {
            f.float(l.vox_offset, 4, self.vox_offset);
        }
        f.float(l.scl_slope, l.float, self.scl_slope);
        f.float(l.scl_inter, l.float, self.scl_inter);
        f.int(l.xyzt_units, l.units, UNITS_MM);
        f.put(l.descrip, b"asfda");
        f.int(l.qform_code, l.code, self.qform_code);
        f.int(l.sform_code, l.code, self.sform_code);
        for (i, v) in self.quatern.iter().chain(&self.qoffset).enumerate() {
            f.float(l.quatern + i * l.float, l.float, *v);
        }
        for (i, v) in self.srow.iter().flatten().enumerate() {
            f.float(l.srow + i * l.float, l.float, *v);
        }
        f.bytes
    }
}

/// `Format` unless the magic is a single-file NIfTI one; `Unsupported` for a header/image pair.
fn check_magic(l: &Layout, f: &Fields) -> Result<()> {
    let magic = f.slice(l.magic_at, 4);
    if magic == l.pair_magic {
        return Err(Error::unsupported(format!(
            "this is a {} header of a .hdr/.img pair (magic {:?}); only single-file .nii/.nii.gz is supported, \
             convert it (e.g. nibabel: nib.save(nib.load(path), 'out.nii.gz'))",
            l.name,
            String::from_utf8_lossy(&magic[..3])
        )));
    }
    if magic != l.magic {
        return Err(Error::format(format!(
            "not a NIfTI file: bad magic {:?} (expected {:?})",
            String::from_utf8_lossy(magic),
            String::from_utf8_lossy(&l.magic[..3])
        )));
    }
    let eol = f.slice(l.magic_at + 4, 4);
    if l.int == 8 && eol != NIFTI2_EOL_CHECK && eol != [0; 4] {
        return Err(Error::format(
            "the NIfTI-2 end-of-line check bytes are wrong: the file was corrupted by a text-mode transfer",
        ));
    }
    Ok(())
}

/// Reads fixed-offset fields; offsets come from the layouts, so they are always inside the header.
struct Fields<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn slice(&self, at: usize, len: usize) -> &[u8] {
        self.bytes.get(at..at + len).unwrap_or(&[])
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0; N];
        if let Some(s) = self.bytes.get(at..at + N) {
            a.copy_from_slice(s);
        }
        if self.big_endian {
            a.reverse();
        }
        a
    }

    /// A signed integer of `width` bytes (2, 4 or 8).
    fn int(&self, at: usize, width: usize) -> i64 {
        match width {
            2 => i64::from(i16::from_le_bytes(self.array(at))),
            4 => i64::from(i32::from_le_bytes(self.array(at))),
            _ => i64::from_le_bytes(self.array(at)),
        }
    }

    /// A float of `width` bytes (4 or 8).
    fn float(&self, at: usize, width: usize) -> f64 {
        match width {
            4 => f64::from(f32::from_le_bytes(self.array(at))),
            _ => f64::from_le_bytes(self.array(at)),
        }
    }
}

/// Writes little-endian fixed-offset fields into a zeroed header.
struct FieldsMut {
    bytes: Vec<u8>,
}

impl FieldsMut {
    fn put(&mut self, at: usize, value: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(at..at + value.len()) {
            dst.copy_from_slice(value);
        }
    }

    /// Values are asfda's own (dims already limited to the layout's width), so `as` never truncates.
    fn int(&mut self, at: usize, width: usize, v: i64) {
        match width {
            1 => self.put(at, &[v as u8]),
            2 => self.put(at, &(v as i16).to_le_bytes()),
            4 => self.put(at, &(v as i32).to_le_bytes()),
            _ => self.put(at, &v.to_le_bytes()),
        }
    }

    fn float(&mut self, at: usize, width: usize, v: f64) {
        match width {
            4 => self.put(at, &(v as f32).to_le_bytes()),
            _ => self.put(at, &v.to_le_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(dims: [usize; 3], channels: usize) -> Header {
        let shape = Shape { dims, channels, elements: dims.iter().product::<usize>() * channels };
        let affine = [[-2.0, 0.0, 0.0, 10.0], [0.0, 0.0, 3.0, -5.0], [0.0, 1.5, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]];
        Header::for_volume(shape, DataType::I16, &affine, 2, 1)
    }

    #[test]
    fn detects_versions_and_byte_orders() {
        assert_eq!(Encoding::detect(348i32.to_le_bytes()).unwrap(), Encoding { layout: &NIFTI1, big_endian: false });
        assert_eq!(Encoding::detect(348i32.to_be_bytes()).unwrap(), Encoding { layout: &NIFTI1, big_endian: true });
        assert_eq!(Encoding::detect(540i32.to_be_bytes()).unwrap(), Encoding { layout: &NIFTI2, big_endian: true });
        let e = Encoding::detect(*b"\x1f\x8b\x08\x00").unwrap_err();
        assert!(e.message().starts_with("not a NIfTI file"));
    }

    #[test]
    fn encode_parse_round_trip_both_versions() {
        for (dims, version) in [([4, 5, 6], &NIFTI1), ([40_000, 1, 2], &NIFTI2)] {
            let h = header_for(dims, 3);
            assert_eq!(h.encoding.layout, version);
            let bytes = h.encode();
            assert_eq!(bytes.len(), version.size + 4);
            let parsed =
                Header::parse(Encoding::detect([bytes[0], bytes[1], bytes[2], bytes[3]]).unwrap(), &bytes).unwrap();
            assert_eq!(
                parsed.shape(u64::MAX).unwrap(),
                Shape { dims, channels: 3, elements: dims.iter().product::<usize>() * 3 }
            );
            let (a, b) = (parsed.affine().unwrap(), parsed.qform().unwrap());
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!((x - y).abs() < 1e-5, "sform {a:?} vs qform {b:?}");
            }
            assert_eq!(parsed.data_offset().unwrap(), version.size as u64 + 4);
            assert_eq!(parsed.scaling().unwrap(), None);
        }
    }

    #[test]
    fn shape_refuses_bad_dims_and_huge_images() {
        let mut h = header_for([4, 5, 6], 1);
        h.dim[0] = 8;
        assert!(h.shape(u64::MAX).unwrap_err().message().contains("dim[0] = 8"));
        h.dim[0] = 3;
        h.dim[2] = -5;
        let e = h.shape(u64::MAX).unwrap_err();
        assert_eq!((e.kind(), e.message().contains("dim[2] = -5")), (ErrorKind::InvalidData, true));
        h.dim = [7, i64::MAX, i64::MAX, 2, 2, 2, 2, 2];
        assert_eq!(h.shape(u64::MAX).unwrap_err().kind(), ErrorKind::TooLarge);
        h.dim = [3, 100, 100, 100, 1, 1, 1, 1];
        let e = h.shape(999_999).unwrap_err();
        assert!(e.message().contains("1000000 voxels") && e.message().contains("999999"), "{e}");
        // A dim beyond dim[0] is ignored even when invalid.
        h.dim = [2, 3, 4, 0, -1, 0, 0, 0];
        assert_eq!(h.shape(u64::MAX).unwrap().dims, [3, 4, 1]);
    }

    #[test]
    fn base_affine_matches_nibabel() {
        // nibabel: shape_zoom_affine((3, 4, 5), (2, 3, 4)) with x flipped.
        let mut h = header_for([3, 4, 5], 1);
        (h.sform_code, h.qform_code) = (0, 0);
        h.pixdim[1..4].copy_from_slice(&[2.0, 3.0, 4.0]);
        let a = h.affine().unwrap();
        assert_eq!(a, [[-2.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, -4.5], [0.0, 0.0, 4.0, -8.0], [0.0, 0.0, 0.0, 1.0]]);
        h.pixdim[2] = 0.0;
        assert!(h.affine().unwrap_err().message().contains("pixdim[2] = 0"));
    }

    #[test]
    fn scaling_follows_nibabel() {
        let mut h = header_for([1, 1, 1], 1);
        for slope in [0.0, f64::NAN, f64::INFINITY] {
            h.scl_slope = slope;
            assert_eq!(h.scaling().unwrap(), None);
        }
        (h.scl_slope, h.scl_inter) = (2.0, f64::NAN);
        assert_eq!(h.scaling().unwrap_err().kind(), ErrorKind::InvalidData);
        h.scl_inter = -1.0;
        assert_eq!(h.scaling().unwrap(), Some((2.0, -1.0)));
    }
}
