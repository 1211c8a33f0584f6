//! One DICOM file: its bytes checked and parsed (dicom-rs), and the attributes a volume needs:
//! series, pixel format, and per frame its geometry and rescale.

use std::io::Read;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntaxIndex};
use dicom_object::mem::InMemDicomObject;
use dicom_object::{FileDicomObject, FileMetaTable};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::guard::{self, Encoding};
use crate::error::{Error, ErrorKind, Result};
use crate::volume::slices::SliceGeometry;

pub(super) type Object = FileDicomObject<InMemDicomObject>;

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// Media Storage Directory (DICOMDIR): an index of files, not an image.
const DICOMDIR_CLASS: &str = "1.2.840.10008.1.3.10";

/// The transfer syntaxes whose pixel data asfda decodes.
pub const SUPPORTED_TRANSFER_SYNTAXES: [(&str, &str); 5] = [
    (IMPLICIT_VR_LE, "Implicit VR Little Endian"),
    (EXPLICIT_VR_LE, "Explicit VR Little Endian"),
    (DEFLATED_EXPLICIT_VR_LE, "Deflated Explicit VR Little Endian"),
    (EXPLICIT_VR_BE, "Explicit VR Big Endian"),
    (RLE_LOSSLESS, "RLE Lossless"),
];

/// How stored pixel values are laid out and what they mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PixelFormat {
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    /// MONOCHROME1: the lowest value is white; inverted to MONOCHROME2 sense when read.
    pub inverted: bool,
    pub big_endian: bool,
    pub rle: bool,
}

/// One frame (a 2D slice): where it lies and how its stored values map to real values.
#[derive(Clone, Debug)]
pub(super) struct Frame {
    pub geometry: SliceGeometry,
    pub slope: f64,
    pub intercept: f64,
    /// Why the frame has no position or orientation (then `geometry` holds the defaults: origin
    /// 0, axial, as ITK reads such an image).
    pub missing: Option<String>,
}

/// A parsed image file.
pub(super) struct Image {
    pub name: String,
    pub object: Object,
    pub series_uid: String,
    pub rows: usize,
    pub columns: usize,
    pub format: PixelFormat,
    pub frames: Vec<Frame>,
    /// SpacingBetweenSlices or SliceThickness, used only for a single-slice series.
    pub thickness: Option<f64>,
}

/// Whether `bytes` start like a DICOM Part 10 file (`DICM` after the 128-byte preamble, or at 0).
pub(super) fn looks_like_dicom(head: &[u8]) -> bool {
    head.get(128..132) == Some(b"DICM") || head.starts_with(b"DICM")
}

/// Parses a DICOM file held in memory. `Ok(None)` for a DICOMDIR (an index, not an image).
/// `budget` is what is left of `ReadOptions::max_bytes` for the files' parsed data sets: the
/// inflated size of a deflated data set and the parser's estimated memory are charged to it
/// before either is allocated.
pub(super) fn parse(bytes: &[u8], name: &str, budget: &mut u64) -> Result<Option<Image>> {
    let bad = |message: String| Error::format(format!("{name}: {message}"));
    let start = if bytes.get(128..132) == Some(b"DICM") {
        128
    } else if bytes.starts_with(b"DICM") {
        0
    } else {
        return Err(bad("not a DICOM file (no `DICM` marker after the 128-byte preamble; a raw ACR-NEMA data \
                        set without file meta information is not supported)"
            .into()));
    };
    let after_marker = &bytes[start + 4..];
    let meta_len = guard::meta_group_end(after_marker).map_err(&bad)?;
    let meta = FileMetaTable::from_reader(&bytes[start..start + 4 + meta_len])
        .map_err(|e| bad(format!("unreadable file meta information: {e}")))?;
    if meta.media_storage_sop_class_uid() == DICOMDIR_CLASS {
        return Ok(None);
    }
    let uid = meta.transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let body = &after_marker[meta_len..];
    let inflated;
    let (dataset, encoding, parse_uid) = if uid == DEFLATED_EXPLICIT_VR_LE {
        inflated = inflate(body, *budget).map_err(|e| e.context(name))?;
        *budget -= inflated.len() as u64;
        (&inflated[..], Encoding { explicit_vr: true, big_endian: false }, EXPLICIT_VR_LE)
    } else {
        (body, encoding_of(&uid, name)?, uid.as_str())
    };
    let walk = guard::check_dataset(dataset, encoding).map_err(&bad)?;
    charge(budget, walk.parsed.saturating_mul(guard::PARSED_ENTRY_BYTES), name, walk.parsed)?;
    let dataset = &dataset[..walk.used];
    let ts = TransferSyntaxRegistry.get(parse_uid).ok_or_else(|| unsupported_syntax(&uid, name))?;
    let object = InMemDicomObject::read_dataset_with_ts(dataset, ts)
        .map_err(|e| bad(format!("malformed data set: {e}")))?
        .with_exact_meta(meta);
    read_attributes(object, name, &uid).map(Some)
}

/// The encoding of a data set in transfer syntax `uid`, or `Unsupported` naming it.
fn encoding_of(uid: &str, name: &str) -> Result<Encoding> {
    let ts = TransferSyntaxRegistry.get(uid).ok_or_else(|| unsupported_syntax(uid, name))?;
    let decodable = match ts.codec() {
        Codec::None => true,
        Codec::EncapsulatedPixelData(..) => uid == RLE_LOSSLESS,
        Codec::Dataset(_) => false,
    };
    if !decodable {
        return Err(unsupported_syntax(uid, name));
    }
    Ok(Encoding { explicit_vr: uid != IMPLICIT_VR_LE, big_endian: ts.endianness() == Endianness::Big })
}

fn unsupported_syntax(uid: &str, name: &str) -> Error {
    let known = TransferSyntaxRegistry.get(uid).map(|ts| ts.name()).unwrap_or("an unknown transfer syntax");
    let supported: Vec<&str> = SUPPORTED_TRANSFER_SYNTAXES.iter().map(|(_, n)| *n).collect();
    Error::unsupported(format!(
        "{name}: transfer syntax {uid} ({known}) is not supported; asfda decodes {}. Convert the series first, \
         e.g. `gdcmconv --raw IN OUT` or `dcmdjpeg IN OUT`, or decode it in the host and use \
         Volume::from_slices / asfda_volume_from_slices",
        supported.join(", ")
    ))
}

/// Takes `cost` bytes from `budget`, or `TooLarge` naming them.
fn charge(budget: &mut u64, cost: u64, name: &str, entries: u64) -> Result<()> {
    if cost > *budget {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "{name}: parsing its {entries} elements, items and values needs about {cost} bytes, over what is left \
                 of the limit ({} bytes, max_bytes)",
                *budget
            ),
        ));
    }
    *budget -= cost;
    Ok(())
}

/// Inflates a deflated data set, refusing more than `max_bytes` (a deflate bomb).
fn inflate(body: &[u8], max_bytes: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::DeflateDecoder::new(body).take(max_bytes.saturating_add(1));
    decoder.read_to_end(&mut out).map_err(|e| Error::format(format!("corrupt deflated data set: {e}")))?;
    if out.len() as u64 > max_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("the deflated data set inflates to more than {max_bytes} bytes (max_bytes)"),
        ));
    }
    Ok(out)
}

fn read_attributes(object: Object, name: &str, uid: &str) -> Result<Image> {
    let bad = |message: String| Error::invalid_data(format!("{name}: {message}"));
    let series_uid = string(&object, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let rows = usize::from(uint(&object, tags::ROWS).ok_or_else(|| bad("no Rows (0028,0010): not an image".into()))?);
    let columns = usize::from(uint(&object, tags::COLUMNS).ok_or_else(|| bad("no Columns (0028,0011)".into()))?);
    if object.get(tags::PIXEL_DATA).is_none() {
        return Err(bad("no Pixel Data (7FE0,0010)".into()));
    }
    let format = pixel_format(&object, uid).map_err(|e| e.context(name))?;
    let frames = frames(&object).map_err(|e| e.context(name))?;
    let thickness = float(&object, tags::SPACING_BETWEEN_SLICES)
        .or_else(|| float(&object, tags::SLICE_THICKNESS))
        .filter(|t| t.is_finite() && *t > 0.0);
    Ok(Image { name: name.to_string(), object, series_uid, rows, columns, format, frames, thickness })
}

fn pixel_format(object: &Object, uid: &str) -> Result<PixelFormat> {
    let samples = uint(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = string(object, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into());
    if samples != 1 || !photometric.starts_with("MONOCHROME") {
        return Err(Error::unsupported(format!(
            "the image is {photometric} with {samples} samples per pixel (colour, e.g. RGB or a palette), not a \
             greyscale volume"
        )));
    }
    let bits_allocated = uint(object, tags::BITS_ALLOCATED).unwrap_or(0);
    if ![8, 16, 32].contains(&bits_allocated) {
        return Err(Error::unsupported(format!("BitsAllocated {bits_allocated}: asfda reads 8, 16 or 32-bit pixels")));
    }
    let bits_stored = uint(object, tags::BITS_STORED).unwrap_or(bits_allocated);
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(Error::invalid_data(format!("BitsStored {bits_stored} with BitsAllocated {bits_allocated}")));
    }
    Ok(PixelFormat {
        bits_allocated,
        bits_stored,
        signed: uint(object, tags::PIXEL_REPRESENTATION) == Some(1),
        inverted: photometric == "MONOCHROME1",
        big_endian: uid == EXPLICIT_VR_BE,
        rle: uid == RLE_LOSSLESS,
    })
}

/// Every frame's geometry and rescale: from the per-frame and shared functional groups of an
/// enhanced multi-frame image, else from the top-level attributes (one frame).
fn frames(object: &Object) -> Result<Vec<Frame>> {
    let count = match object.get(tags::NUMBER_OF_FRAMES) {
        Some(e) => e.to_int::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            Error::invalid_data(format!("NumberOfFrames {:?} is not a positive number", e.to_str().unwrap_or_default()))
        })?,
        None => 1,
    };
    let shared = first_item(object.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE));
    let per_frame = object.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items());
    if shared.is_none() && per_frame.is_none() {
        if count != 1 {
            return Err(Error::unsupported(format!(
                "a multi-frame image ({count} frames) without functional groups (PerFrameFunctionalGroupsSequence): \
                 only enhanced multi-frame MR/CT/PET images, or one slice per file, are supported"
            )));
        }
        return Ok(vec![frame(&[object])?]);
    }
    let per_frame = per_frame.unwrap_or(&[]);
    if per_frame.len() as i64 != count {
        return Err(Error::invalid_data(format!(
            "NumberOfFrames is {count} but the PerFrameFunctionalGroupsSequence has {} items",
            per_frame.len()
        )));
    }
    per_frame
        .iter()
        .enumerate()
        .map(|(i, item)| {
            // A frame's own group wins over the shared one, then the top level (rescale only).
            let mut sources: Vec<&InMemDicomObject> = vec![item];
            sources.extend(shared);
            frame_from_groups(&sources, object).map_err(|e| e.context(format!("frame {}", i + 1)))
        })
        .collect()
}

/// A frame from the top-level attributes of a classic single-frame image. Missing geometry is
/// kept as the reason, so that a lone image can still be read (see [`Frame::placed`]).
fn frame(sources: &[&Object]) -> Result<Frame> {
    let o = sources[0];
    let get = |tag: Tag, what: &str, n: usize| -> Result<Option<Vec<f64>>> {
        let Some(values) = floats(o, tag) else { return Ok(None) };
        if values.len() != n || values.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid_data(format!("{what} is {values:?}, expected {n} finite numbers")));
        }
        Ok(Some(values))
    };
    let p = get(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient (0020,0032)", 3)?;
    let d = get(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient (0020,0037)", 6)?;
    let s = get(tags::PIXEL_SPACING, "PixelSpacing (0028,0030)", 2)?;
    let missing = [(&p, "ImagePositionPatient (0020,0032)"), (&d, "ImageOrientationPatient (0020,0037)")]
        .iter()
        .find(|(v, _)| v.is_none())
        .map(|(_, what)| format!("no {what}: the slice cannot be placed in space"));
    let s = s.unwrap_or_else(|| vec![1.0, 1.0]);
    Ok(Frame {
        geometry: SliceGeometry {
            position: p.map_or([0.0; 3], |p| [p[0], p[1], p[2]]),
            orientation: d.map_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], |d| std::array::from_fn(|i| d[i])),
            pixel_spacing: [s[0], s[1]],
        },
        slope: float(o, tags::RESCALE_SLOPE).unwrap_or(1.0),
        intercept: float(o, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        missing,
    })
}

/// A frame of an enhanced image: each macro from the first of `groups` that has it.
fn frame_from_groups(groups: &[&InMemDicomObject], top: &Object) -> Result<Frame> {
    let from = |sequence: Tag, attribute: Tag, what: &str, n: usize| -> Result<Vec<f64>> {
        let found = groups.iter().find_map(|g| first_item(g.get(sequence)).and_then(|item| floats(item, attribute)));
        let values = found.ok_or_else(|| Error::invalid_data(format!("no {what} in its functional groups")))?;
        if values.len() != n {
            return Err(Error::invalid_data(format!("{what} has {} values, expected {n}", values.len())));
        }
        Ok(values)
    };
    let p = from(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let d = from(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6)?;
    let s = from(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    let rescale = |attribute: Tag| {
        groups
            .iter()
            .find_map(|g| {
                first_item(g.get(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)).and_then(|i| float(i, attribute))
            })
            .or_else(|| float(top, attribute))
    };
    Ok(Frame {
        geometry: SliceGeometry {
            position: [p[0], p[1], p[2]],
            orientation: std::array::from_fn(|i| d[i]),
            pixel_spacing: [s[0], s[1]],
        },
        slope: rescale(tags::RESCALE_SLOPE).unwrap_or(1.0),
        intercept: rescale(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        missing: None,
    })
}

type Element = dicom_object::mem::InMemElement;

fn first_item(element: Option<&Element>) -> Option<&InMemDicomObject> {
    element.and_then(|e| e.items()).and_then(|items| items.first())
}

fn uint(object: &InMemDicomObject, tag: Tag) -> Option<u16> {
    object.get(tag).and_then(|e| e.to_int::<u16>().ok())
}

fn string(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    object.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.trim_matches(['\0', ' ']).to_string())
}

fn float(object: &InMemDicomObject, tag: Tag) -> Option<f64> {
    object.get(tag).and_then(|e| e.to_float64().ok()).filter(|v| v.is_finite())
}

fn floats(object: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    object.get(tag).and_then(|e| e.to_multi_float64().ok())
}
