//! Reading and writing single-file NIfTI-1/NIfTI-2 images (`.nii`, `.nii.gz`).
//!
//! Reading refuses bad input before allocating: the header is validated (dims, datatype, voxel
//! count limit, geometry) and, for uncompressed files, the file size is checked against what the
//! header promises. Gzip streams are read to the end so a corrupt or truncated trailer (CRC, size)
//! is reported instead of silently accepted.

use super::header::{Encoding, Header, Shape};
use super::{DataType, Volume, XformCodes};
use crate::atomic_file;
use crate::error::{Error, ErrorKind, Result};
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

/// What [`read_nifti`] does with NaN/infinite voxel values (after scaling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinitePolicy {
    /// Refuse the file (`InvalidData`).
    Error,
    /// Replace them by this finite value.
    Replace(f32),
    /// Keep them as they are.
    Keep,
}

/// Options for [`read_nifti`] and [`Volume::from_buffer_with_options`].
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Most voxels accepted, counting every channel (default 2^31).
    pub max_voxels: u64,
    /// Most bytes the volume's f32 voxels may take in memory (4 per voxel and channel; default
    /// [`DEFAULT_MAX_BYTES`], 4 GiB). The check runs before anything is allocated, so a small file
    /// whose header declares a huge image (a well-compressed `.nii.gz`, a sparse `.nii`) is
    /// refused with `TooLarge` instead of taking the host's memory.
    pub max_bytes: u64,
    /// Default [`NonFinitePolicy::Error`].
    pub nonfinite: NonFinitePolicy,
}

/// The default [`ReadOptions::max_bytes`]: 4 GiB of f32 voxels (1024^3 voxels, e.g. a
/// 512 x 512 x 4096 CT; a 512 x 512 x 400 series takes 400 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { max_voxels: 1 << 31, max_bytes: DEFAULT_MAX_BYTES, nonfinite: NonFinitePolicy::Error }
    }
}

/// Voxel types [`write_nifti`] can store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputType {
    /// Rounded to the nearest integer, must be in 0..=255 (label maps, u8 probabilities).
    U8,
    /// Rounded to the nearest integer, must be in 0..=65535.
    U16,
    F32,
}

/// `NIFTI_XFORM_ALIGNED_ANAT`: the code for an affine of unknown provenance.
const XFORM_ALIGNED: i64 = 2;
/// Highest defined xform code (`NIFTI_XFORM_TEMPLATE_OTHER`).
const XFORM_MAX: i64 = 5;
/// Voxel bytes read or written per step.
const CHUNK_BYTES: usize = 1 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a single-file NIfTI-1 or NIfTI-2 image (`.nii` or gzip-compressed, either byte order).
///
/// Voxels become f32 after `scl_slope`/`scl_inter` (applied when the slope is finite and non-zero,
/// as nibabel does); dims 4..7 fold into channels. The affine is the sform if `sform_code > 0`, else
/// the qform if `qform_code > 0`, else the Analyze-style affine nibabel falls back to
/// (`header.get_base_affine()`: diag(-pixdim1, pixdim2, pixdim3) centred on the volume). nibabel
/// also uses an sform/qform whose code is negative; asfda follows the NIfTI standard (> 0).
///
/// Errors (every message names the file): `Io` (cannot open/read), `Unsupported` (`.hdr`/`.img`
/// pairs, complex/RGB/float128/1-bit voxels), `Format` (not NIfTI, truncated, corrupt gzip),
/// `InvalidData` (bad dims, spacing or affine; non-finite voxels under [`NonFinitePolicy::Error`]),
/// `TooLarge` (more than `opts.max_voxels`), `InvalidArgument` (a non-finite replacement value).
pub fn read_nifti(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    check_options(opts)?;
    if is_pair_file(path) {
        return Err(Error::unsupported(format!(
            "'{}' is part of a .hdr/.img pair (Analyze or NIfTI-1 pair); only single-file .nii/.nii.gz is supported",
            path.display()
        )));
    }
    let file = File::open(path).map_err(|e| Error::io(path, "open", &e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, "stat", &e))?.len();
    read_from(BufReader::new(file), file_len, opts).map_err(|e| e.context(format!("'{}'", path.display())))
}

/// Reads a single-file NIfTI-1 or NIfTI-2 image held in memory (uncompressed or gzip), with the
/// same checks and results as [`read_nifti`]: for hosts that receive files over a network or
/// from a database, and for the fuzz targets.
pub fn read_nifti_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Volume> {
    check_options(opts)?;
    read_from(bytes, bytes.len() as u64, opts)
}

fn check_options(opts: &ReadOptions) -> Result<()> {
    match opts.nonfinite {
        NonFinitePolicy::Replace(value) if !value.is_finite() => {
            Err(Error::invalid_argument(format!("NonFinitePolicy::Replace({value}) must use a finite value")))
        }
        _ => Ok(()),
    }
}

fn is_pair_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    [".hdr", ".img", ".hdr.gz", ".img.gz"].iter().any(|ext| name.ends_with(ext))
}

/// Reads `file_len` bytes, uncompressed or gzip (recognised by its magic bytes, not the name).
fn read_from<R: BufRead>(mut reader: R, file_len: u64, opts: &ReadOptions) -> Result<Volume> {
    let start = reader.fill_buf().map_err(|e| Error::new(ErrorKind::Io, format!("cannot read: {e}")))?;
    if !start.starts_with(&GZIP_MAGIC) {
        return read_stream(&mut Source { reader, gzip: false }, Some(file_len), opts);
    }
    let mut source = Source { reader: MultiGzDecoder::new(reader), gzip: true };
    let volume = read_stream(&mut source, None, opts)?;
    // Decompress the rest: the gzip CRC and length are only checked at the end of the stream.
    // Bounded, so that a stream inflating to far more than its header declares (a gzip bomb
    // behind a small image) cannot keep the reader busy for minutes.
    let rest = io::copy(&mut (&mut source.reader).take(MAX_TRAILING_BYTES + 1), &mut io::sink())
        .map_err(|e| source.error("after the voxel data", &e))?;
    if rest > MAX_TRAILING_BYTES {
        return Err(Error::format(format!(
            "the gzip stream holds more than {MAX_TRAILING_BYTES} bytes after the voxel data its header declares"
        )));
    }
    Ok(volume)
}

/// Decompressed bytes accepted after a `.nii.gz`'s voxel data (16 MiB; writers put none there).
const MAX_TRAILING_BYTES: u64 = 16 << 20;

/// A byte stream and whether it is decompressed gzip (whose errors mean corruption, not I/O).
struct Source<R> {
    reader: R,
    gzip: bool,
}

impl<R: Read> Source<R> {
    fn error(&self, during: &str, e: &io::Error) -> Error {
        if self.gzip {
            Error::format(format!("corrupt or truncated gzip stream ({during}): {e}"))
        } else {
            Error::new(ErrorKind::Io, format!("read failed ({during}): {e}"))
        }
    }

    /// Fills `buf` as far as the stream allows; returns the bytes read (short only at end of stream).
    fn read_up_to(&mut self, buf: &mut [u8], during: &str) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(during, &e)),
            }
        }
        Ok(filled)
    }
}

/// Header, checks, then voxels. `file_len` is known for uncompressed files only.
fn read_stream<R: Read>(source: &mut Source<R>, file_len: Option<u64>, opts: &ReadOptions) -> Result<Volume> {
    let header = read_header(source)?;
    let shape = header.shape(opts.max_voxels)?;
    let dtype = header.data_type()?;
    let scale = header.scaling()?;
    let affine = header.affine()?;
    let offset = header.data_offset()?;
    let data_bytes = (shape.elements as u64)
        .checked_mul(dtype.size_bytes() as u64)
        .ok_or_else(|| Error::new(ErrorKind::TooLarge, "the voxel data size overflows"))?;
    super::check_f32_bytes(
        shape.elements,
        opts.max_bytes,
        &format!("dims {:?} x {} channel(s)", shape.dims, shape.channels),
    )?;
    if let Some(len) = file_len {
        let available = len.saturating_sub(offset);
        if available < data_bytes {
            return Err(truncated(available, data_bytes, &shape, dtype));
        }
    }
    skip_to_data(source, offset - header.encoding.header_size() as u64, data_bytes, &shape, dtype)?;
    let data = read_voxels(source, &shape, dtype, header.encoding, scale, file_len.is_some())?;
    let codes = XformCodes { sform: header.sform_code, qform: header.qform_code };
    let mut volume = Volume::new(data, shape.dims, shape.channels, affine)?.with_codes(codes);
    apply_nonfinite_policy(&mut volume, opts.nonfinite)?;
    Ok(volume)
}

fn read_header<R: Read>(source: &mut Source<R>) -> Result<Header> {
    let mut first4 = [0u8; 4];
    let got = source.read_up_to(&mut first4, "header")?;
    if got < 4 {
        return Err(Error::format(format!("not a NIfTI file: only {got} bytes long")));
    }
    let encoding = match Encoding::detect(first4) {
        Ok(encoding) => encoding,
        Err(not_nifti) => {
            // Say what the file is, if it is something people often mistake for a volume.
            let mut head = [0u8; 132];
            head[..4].copy_from_slice(&first4);
            let got = 4 + source.read_up_to(&mut head[4..], "header").unwrap_or(0);
            let what = super::other_formats::describe(&head[..got]);
            return Err(what.map_or(not_nifti, |what| Error::format(format!("not a NIfTI file: {what}"))));
        }
    };
    let mut bytes = vec![0u8; encoding.header_size()];
    bytes[..4].copy_from_slice(&first4);
    let got = 4 + source.read_up_to(&mut bytes[4..], "header")?;
    Header::parse(encoding, &bytes[..got])
}

/// Skips extensions between the header and the voxel data.
fn skip_to_data<R: Read>(
    source: &mut Source<R>,
    skip: u64,
    data_bytes: u64,
    shape: &Shape,
    dtype: DataType,
) -> Result<()> {
    let skipped = io::copy(&mut (&mut source.reader).take(skip), &mut io::sink())
        .map_err(|e| source.error("header extensions", &e))?;
    if skipped < skip {
        return Err(truncated(0, data_bytes, shape, dtype));
    }
    Ok(())
}

/// Reads and converts the voxels chunk by chunk, so a gzip stream that ends early never makes us
/// allocate what its header claimed (`preallocate` only when the file size was already checked).
fn read_voxels<R: Read>(
    source: &mut Source<R>,
    shape: &Shape,
    dtype: DataType,
    encoding: Encoding,
    scale: Option<(f64, f64)>,
    preallocate: bool,
) -> Result<Vec<f32>> {
    // Checked in u64 by the caller; on a 32-bit target the byte count may still not fit a usize.
    let total = shape
        .elements
        .checked_mul(dtype.size_bytes())
        .ok_or_else(|| Error::new(ErrorKind::TooLarge, "the voxel data does not fit in memory"))?;
    // Allocations fail with an error, never an abort: `preallocate` only when the file size was
    // checked, else the buffer grows (fallibly) with the data that really arrives.
    let mut data = super::try_vec_f32(if preallocate { shape.elements } else { shape.elements.min(CHUNK_BYTES) })?;
    let mut chunk = vec![0u8; CHUNK_BYTES.min(total)];
    let mut done = 0;
    while done < total {
        let want = (total - done).min(chunk.len());
        let got = source.read_up_to(&mut chunk[..want], "voxel data")?;
        super::try_reserve_f32(&mut data, got / dtype.size_bytes())?;
        dtype.decode_into(&chunk[..got], encoding.is_big_endian(), scale, &mut data);
        done += got;
        if got < want {
            return Err(truncated(done as u64, total as u64, shape, dtype));
        }
    }
    Ok(data)
}

fn truncated(got: u64, expected: u64, shape: &Shape, dtype: DataType) -> Error {
    Error::format(format!(
        "truncated: {got} bytes of the {expected} bytes of voxel data (dims {:?} x {} channel(s) of {dtype:?}) are present",
        shape.dims, shape.channels
    ))
}

fn apply_nonfinite_policy(volume: &mut Volume, policy: NonFinitePolicy) -> Result<()> {
    match policy {
        NonFinitePolicy::Keep => {}
        NonFinitePolicy::Replace(value) => {
            volume.replace_nonfinite(value);
        }
        NonFinitePolicy::Error => match volume.nonfinite_count() {
            0 => {}
            n => {
                return Err(Error::invalid_data(format!(
                    "{n} voxel value(s) are NaN or infinite; to accept them, read with the non-finite \
                     policy Replace(value) or Keep (C: AsfdaReadOptions.nonfinite; Python: nonfinite=; \
                     CLI: --nonfinite VALUE|keep)"
                )))
            }
        },
    }
    Ok(())
}

/// Writes `volume` as NIfTI: `.nii` or `.nii.gz` by the extension (else `InvalidArgument`).
///
/// The file is written atomically: to a temporary file in the same directory, then renamed over
/// `path`, so readers never see a partial file. NIfTI-1 little-endian, or NIfTI-2 when a dim or
/// the channel count exceeds 32767 (NIfTI-1's i16 limit). Channels are written as dim 4.
///
/// Geometry: sform and qform both encode the affine (the qform without shear, like nibabel). Codes:
/// for a volume read from a file, its sform code when > 0, else its qform code when > 0, else 2
/// (aligned anatomy); its qform code when > 0, else 0 (so readers use the sform). For a volume not
/// read from a file both codes are 2 (aligned anatomy), as nibabel writes for a new image, since
/// asfda cannot know whether the caller's world is the scanner's.
///
/// U8/U16 values are rounded to the nearest integer (halves away from zero) and must fit the type,
/// else `InvalidArgument` naming the first bad value; nothing is written then.
pub fn write_nifti(volume: &Volume, path: &Path, dtype: OutputType) -> Result<()> {
    let gzip = output_is_gzip(path)?;
    check_representable(volume.data(), dtype).map_err(|e| e.context(format!("cannot write '{}'", path.display())))?;
    let (sform, qform) = output_codes(volume.codes);
    let shape = Shape { dims: volume.dims(), channels: volume.channels(), elements: volume.data().len() };
    let header = Header::for_volume(shape, stored_type(dtype), &volume.affine(), sform, qform);
    write_atomically(path, gzip, |out| {
        out.write_all(&header.encode())?;
        write_voxels(out, volume.data(), dtype)
    })
}

fn output_is_gzip(path: &Path) -> Result<bool> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if name.ends_with(".nii.gz") {
        Ok(true)
    } else if name.ends_with(".nii") {
        Ok(false)
    } else {
        Err(Error::invalid_argument(format!(
            "cannot write '{}': the file name must end in .nii or .nii.gz",
            path.display()
        )))
    }
}

fn stored_type(dtype: OutputType) -> DataType {
    match dtype {
        OutputType::U8 => DataType::U8,
        OutputType::U16 => DataType::U16,
        OutputType::F32 => DataType::F32,
    }
}

/// Refuses values that U8/U16 cannot hold (after rounding), naming the first one.
fn check_representable(data: &[f32], dtype: OutputType) -> Result<()> {
    let max = match dtype {
        OutputType::U8 => f32::from(u8::MAX),
        OutputType::U16 => f32::from(u16::MAX),
        OutputType::F32 => return Ok(()),
    };
    match data.iter().position(|v| !(v.round() >= 0.0 && v.round() <= max)) {
        None => Ok(()),
        Some(i) => Err(Error::invalid_argument(format!(
            "voxel {i} has value {} which cannot be stored as {dtype:?} (0..={max} after rounding)",
            data[i]
        ))),
    }
}

/// The (sform, qform) codes to write; see [`write_nifti`].
fn output_codes(codes: Option<XformCodes>) -> (i64, i64) {
    let valid = |c: i64| (1..=XFORM_MAX).contains(&c).then_some(c);
    match codes {
        None => (XFORM_ALIGNED, XFORM_ALIGNED),
        Some(c) => (valid(c.sform).or(valid(c.qform)).unwrap_or(XFORM_ALIGNED), valid(c.qform).unwrap_or(0)),
    }
}

/// Encodes the voxels little-endian, a chunk at a time (values already checked for U8/U16).
fn write_voxels(out: &mut dyn Write, data: &[f32], dtype: OutputType) -> io::Result<()> {
    let per_chunk = CHUNK_BYTES / 4;
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    for values in data.chunks(per_chunk) {
        buf.clear();
        match dtype {
            OutputType::U8 => buf.extend(values.iter().map(|v| v.round() as u8)),
            OutputType::U16 => buf.extend(values.iter().flat_map(|v| (v.round() as u16).to_le_bytes())),
            OutputType::F32 => buf.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// Runs `write` into a crash-safe file (gzip-compressed if asked); see [`atomic_file::write_with`].
fn write_atomically(path: &Path, gzip: bool, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    atomic_file::write_with(path, |out| {
        if gzip {
            // Fast compression: label maps shrink almost as well and large volumes save seconds.
            let mut encoder = GzEncoder::new(out, Compression::fast());
            write(&mut encoder)?;
            encoder.finish().map(|_| ())
        } else {
            write(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_codes_policy() {
        assert_eq!(output_codes(None), (2, 2));
        assert_eq!(output_codes(Some(XformCodes { sform: 4, qform: 1 })), (4, 1));
        assert_eq!(output_codes(Some(XformCodes { sform: 0, qform: 1 })), (1, 1));
        assert_eq!(output_codes(Some(XformCodes { sform: 0, qform: 0 })), (2, 0));
        assert_eq!(output_codes(Some(XformCodes { sform: -3, qform: 99 })), (2, 0));
    }

    #[test]
    fn representable_values() {
        assert!(check_representable(&[0.0, 254.6, -0.4], OutputType::U8).is_ok());
        let e = check_representable(&[1.0, 255.5], OutputType::U8).unwrap_err();
        assert!(e.message().contains("voxel 1 has value 255.5"), "{e}");
        assert!(check_representable(&[f32::NAN], OutputType::U16).is_err());
        assert!(check_representable(&[65535.0], OutputType::U16).is_ok());
        assert!(check_representable(&[-1.0, f32::NAN], OutputType::F32).is_ok());
    }

    #[test]
    fn pair_and_output_names() {
        assert!(is_pair_file(Path::new("/a/b.HDR")));
        assert!(is_pair_file(Path::new("b.img.gz")));
        assert!(!is_pair_file(Path::new("b.nii.gz")));
        assert!(output_is_gzip(Path::new("x.NII.GZ")).unwrap());
        assert!(!output_is_gzip(Path::new("x.nii")).unwrap());
        assert_eq!(output_is_gzip(Path::new("x.nrrd")).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
}
