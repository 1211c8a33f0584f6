//! Stored pixel values of one frame to real values: unpacked (8/16/32-bit, signed or not, the
//! stored bits only), MONOCHROME1 inverted, rescale slope/intercept applied.

use std::borrow::Cow;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;

use super::image::{Frame, Image, PixelFormat};

/// The value of an element of a parsed data set.
type PixelValue = Value<dicom_object::mem::InMemDicomObject, dicom_object::mem::InMemFragment>;
use crate::error::{Error, Result};

/// Every frame's stored values: 16-bit values as the parser decoded them (no copy), or bytes in
/// the file's byte order (8/32-bit native data, the decoded frames of an RLE image).
pub(super) enum Samples<'a> {
    Words(&'a [u16]),
    Bytes(Cow<'a, [u8]>),
}

impl Samples<'_> {
    fn byte_len(&self) -> usize {
        match self {
            Samples::Words(w) => w.len() * 2,
            Samples::Bytes(b) => b.len(),
        }
    }
}

/// The stored values of every frame, checked to hold them all.
pub(super) fn frame_samples(image: &Image) -> Result<Samples<'_>> {
    let format = image.format;
    let frame_len = image.rows * image.columns * usize::from(format.bits_allocated / 8);
    let frames = image.frames.len();
    let bytes = if format.rle {
        let Some(Value::PixelSequence(sequence)) = image.object.get(tags::PIXEL_DATA).map(|e| e.value()) else {
            return Err(Error::format(format!("{}: RLE Lossless pixel data is not encapsulated", image.name)));
        };
        let fragments: Vec<&[u8]> = sequence.fragments().iter().map(|f| &f[..]).collect();
        if fragments.len() != frames {
            return Err(Error::format(format!(
                "{}: {} RLE fragments for {frames} frame(s); RLE Lossless has one fragment per frame",
                image.name,
                fragments.len()
            )));
        }
        let mut out = Vec::new();
        out.try_reserve_exact(frame_len * frames)
            .map_err(|e| Error::new(crate::ErrorKind::TooLarge, format!("{}: {e}", image.name)))?;
        out.resize(frame_len * frames, 0);
        let width = usize::from(format.bits_allocated / 8);
        super::rle::decode(&fragments, image.rows * image.columns, width, &mut out)
            .map_err(|e| e.context(&image.name))?;
        Samples::Bytes(Cow::Owned(out))
    } else {
        native_samples(image)?
    };
    let needed = frame_len * frames;
    if bytes.byte_len() < needed {
        return Err(Error::format(format!(
            "{}: the pixel data holds {} bytes, but {frames} frame(s) of {}x{} {}-bit pixels need {needed}",
            image.name,
            bytes.byte_len(),
            image.rows,
            image.columns,
            format.bits_allocated
        )));
    }
    Ok(bytes)
}

/// Refuses an image whose pixel data cannot hold its frames, before any voxel is allocated (a
/// small file declaring 32768 x 32768 pixels must not cost 4 GiB first). Native data is
/// measured exactly; RLE can expand its input at most 64-fold (a 2-byte run gives 128 bytes).
pub(super) fn check_length(image: &Image) -> Result<()> {
    let frame_len = image.rows as u64 * image.columns as u64 * u64::from(image.format.bits_allocated / 8);
    let needed = frame_len.saturating_mul(image.frames.len() as u64);
    let element = image.object.get(tags::PIXEL_DATA).ok_or_else(|| Error::invalid_data("no pixel data"))?;
    let (available, what) = match element.value() {
        Value::PixelSequence(seq) => {
            let bytes: u64 = seq.fragments().iter().map(|f| f.len() as u64).sum();
            (bytes.saturating_mul(64), "at most (RLE) ")
        }
        Value::Primitive(p) => (p.calculate_byte_len() as u64, ""),
        Value::Sequence(_) => (0, ""),
    };
    if available < needed {
        return Err(Error::format(format!(
            "{}: the pixel data holds {what}{available} bytes, but {} frame(s) of {}x{} {}-bit pixels need {needed}",
            image.name,
            image.frames.len(),
            image.rows,
            image.columns,
            image.format.bits_allocated
        )));
    }
    Ok(())
}

/// Native pixel data: the parser keeps OB as bytes and reads OW into 16-bit values, used as they
/// are for 16-bit pixels and otherwise written back as bytes in the file's order.
fn native_samples(image: &Image) -> Result<Samples<'_>> {
    let element = image.object.get(tags::PIXEL_DATA).ok_or_else(|| Error::invalid_data("no pixel data"))?;
    let big = image.format.big_endian;
    let bytes = match element.value() {
        Value::Primitive(PrimitiveValue::U16(words)) if image.format.bits_allocated == 16 => {
            return Ok(Samples::Words(&words[..]))
        }
        other => native_bytes(other, big, &image.name)?,
    };
    Ok(Samples::Bytes(bytes))
}

fn native_bytes<'a>(value: &'a PixelValue, big: bool, name: &str) -> Result<Cow<'a, [u8]>> {
    match value {
        Value::Primitive(PrimitiveValue::U8(bytes)) => Ok(Cow::Borrowed(&bytes[..])),
        Value::Primitive(PrimitiveValue::U16(words)) => {
            Ok(Cow::Owned(words.iter().flat_map(|w| if big { w.to_be_bytes() } else { w.to_le_bytes() }).collect()))
        }
        Value::Primitive(PrimitiveValue::I16(words)) => {
            Ok(Cow::Owned(words.iter().flat_map(|w| if big { w.to_be_bytes() } else { w.to_le_bytes() }).collect()))
        }
        Value::Primitive(PrimitiveValue::Empty) => Ok(Cow::Borrowed(&[])),
        Value::PixelSequence(_) => Err(Error::format(format!(
            "{name}: encapsulated (compressed) pixel data in a transfer syntax for native pixel data"
        ))),
        _ => Err(Error::format(format!("{name}: the pixel data element has an unexpected value type"))),
    }
}

/// Writes frame `index` of `samples` into `out` (rows x columns, row-major) as real values.
pub(super) fn decode_frame(samples: &Samples<'_>, format: PixelFormat, frame: &Frame, index: usize, out: &mut [f32]) {
    let width = usize::from(format.bits_allocated / 8);
    // RLE decodes to little endian whatever the file's byte order.
    let big = format.big_endian && !format.rle;
    let out_len = out.len();
    let start = index * out_len * width;
    let stored = u32::from(format.bits_stored);
    let mask: u64 = if stored >= 32 { u64::from(u32::MAX) } else { (1u64 << stored) - 1 };
    for (i, v) in out.iter_mut().enumerate() {
        let bytes = match samples {
            Samples::Words(words) => {
                *v = real(u64::from(words[index * out_len + i]), format, stored, mask, frame);
                continue;
            }
            Samples::Bytes(bytes) => bytes,
        };
        let at = start + i * width;
        let raw: u64 = match (width, big) {
            (1, _) => u64::from(bytes[at]),
            (2, false) => u64::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])),
            (2, true) => u64::from(u16::from_be_bytes([bytes[at], bytes[at + 1]])),
            (_, false) => u64::from(u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])),
            (_, true) => u64::from(u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])),
        };
        *v = real(raw, format, stored, mask, frame);
    }
}

/// A stored value to a real value: only the stored bits count (the high bits may hold overlays
/// or garbage), signed values are sign-extended from the top stored bit, MONOCHROME1 is
/// mirrored within the stored range, then the rescale applies.
fn real(raw: u64, format: PixelFormat, stored: u32, mask: u64, frame: &Frame) -> f32 {
    {
        let bits = raw & mask;
        let mut value =
            if format.signed && bits >> (stored - 1) & 1 == 1 { bits as i64 - (1i64 << stored) } else { bits as i64 };
        if format.inverted {
            // MONOCHROME1 to MONOCHROME2: mirror within the stored range.
            let (low, high) =
                if format.signed { (-(1i64 << (stored - 1)), (1i64 << (stored - 1)) - 1) } else { (0, mask as i64) };
            value = low + high - value;
        }
        (value as f64 * frame.slope + frame.intercept) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::slices::SliceGeometry;

    fn frame() -> Frame {
        let geometry =
            SliceGeometry { position: [0.0; 3], orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], pixel_spacing: [1.0; 2] };
        Frame { geometry, slope: 2.0, intercept: -1.0, missing: None }
    }

    fn format(bits_stored: u16, signed: bool, inverted: bool) -> PixelFormat {
        PixelFormat { bits_allocated: 16, bits_stored, signed, inverted, big_endian: false, rle: false }
    }

    #[test]
    fn stored_bits_sign_inversion_and_rescale() {
        let bytes: Vec<u8> = [0x0FFFu16, 0xF800, 0x0001].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0.0f32; 3];
        // 12 stored bits, signed: 0x0FFF = -1, 0xF800 keeps 0x800 = -2048, 1 = 1; then 2x - 1.
        let bytes = Samples::Bytes(Cow::Owned(bytes));
        decode_frame(&bytes, format(12, true, false), &frame(), 0, &mut out);
        assert_eq!(out, [-3.0, -4097.0, 1.0]);
        // Unsigned, MONOCHROME1: 4095 - v.
        decode_frame(&bytes, format(12, false, true), &frame(), 0, &mut out);
        assert_eq!(out, [-1.0, 2.0 * 2047.0 - 1.0, 2.0 * 4094.0 - 1.0]);
        // Signed MONOCHROME1: -1 - v.
        decode_frame(&bytes, format(16, true, true), &frame(), 0, &mut out);
        assert_eq!(out[2], 2.0 * -2.0 - 1.0);
        // The same values as 16-bit words the parser decoded.
        let words = Samples::Words(&[0x0FFF, 0xF800, 0x0001]);
        decode_frame(&words, format(12, true, false), &frame(), 0, &mut out);
        assert_eq!(out, [-3.0, -4097.0, 1.0]);
    }
}
