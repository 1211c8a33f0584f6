//! RLE Lossless (DICOM PS3.5 Annex G) decoding, written here with every index checked: dicom-rs's
//! decoder panicked on a corrupt stream (index out of bounds, found by the `dicom` fuzz target;
//! input kept in fuzz/regressions/dicom/).
//!
//! One fragment per frame; a fragment is a 64-byte header (the segment count, then 15 segment
//! offsets, little endian) and the segments, each a PackBits stream of one byte plane: for
//! 16-bit pixels the high bytes, then the low bytes.

use crate::error::{Error, Result};

/// Decodes `fragments` (one per frame) of `pixels` pixels of `width` bytes each into `out` as
/// little-endian samples, frame after frame. `out` must hold `fragments.len() * pixels * width`
/// bytes.
pub(super) fn decode(fragments: &[&[u8]], pixels: usize, width: usize, out: &mut [u8]) -> Result<()> {
    let frame_len = pixels * width;
    for (f, fragment) in fragments.iter().enumerate() {
        let frame = &mut out[f * frame_len..(f + 1) * frame_len];
        decode_frame(fragment, pixels, width, frame).map_err(|e| Error::format(format!("RLE frame {}: {e}", f + 1)))?;
    }
    Ok(())
}

fn decode_frame(fragment: &[u8], pixels: usize, width: usize, frame: &mut [u8]) -> Result<(), String> {
    let header = fragment.get(..64).ok_or("shorter than its 64-byte header")?;
    let word = |i: usize| u32::from_le_bytes([header[4 * i], header[4 * i + 1], header[4 * i + 2], header[4 * i + 3]]);
    let segments = word(0) as usize;
    if segments != width {
        return Err(format!("{segments} segments, but {width}-byte greyscale pixels need {width}"));
    }
    for s in 0..segments {
        let start = word(1 + s) as usize;
        let end = if s + 1 < segments { word(2 + s) as usize } else { fragment.len() };
        if start < 64 || start > end || end > fragment.len() {
            return Err(format!("segment {} spans bytes {start}..{end} of a {}-byte fragment", s + 1, fragment.len()));
        }
        // Segment 0 is the most significant byte; samples are written little endian.
        let plane = width - 1 - s;
        unpack(&fragment[start..end], pixels, |i, byte| frame[i * width + plane] = byte)
            .map_err(|e| format!("segment {}: {e}", s + 1))?;
    }
    Ok(())
}

/// PackBits: a control byte n in 0..=127 copies the next n + 1 bytes, -127..=-1 repeats the next
/// byte 1 - n times, -128 does nothing. Stops once `count` bytes are out (a pad byte may follow).
fn unpack(data: &[u8], count: usize, mut put: impl FnMut(usize, u8)) -> Result<(), String> {
    let (mut i, mut n) = (0, 0);
    while n < count {
        let control = *data.get(i).ok_or_else(|| format!("ends after {n} of {count} bytes"))? as i8;
        i += 1;
        match control {
            0..=127 => {
                let run = control as usize + 1;
                let literal = data.get(i..i + run).ok_or("a literal run goes past its end")?;
                for &byte in literal.iter().take(count - n) {
                    put(n, byte);
                    n += 1;
                }
                i += run;
            }
            -127..=-1 => {
                let byte = *data.get(i).ok_or("a repeat run has no byte")?;
                i += 1;
                for _ in 0..(1 - control as isize).min((count - n) as isize) {
                    put(n, byte);
                    n += 1;
                }
            }
            -128 => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(segments: &[&[u8]]) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut offset = 64u32;
        for (s, data) in segments.iter().enumerate() {
            header[4 + 4 * s..8 + 4 * s].copy_from_slice(&offset.to_le_bytes());
            offset += data.len() as u32;
        }
        header.extend(segments.iter().flat_map(|s| s.iter().copied()));
        header
    }

    #[test]
    fn decodes_literal_and_repeat_runs_of_16_bit_pixels() {
        // 4 pixels: high bytes 0x01 x 4 (repeat), low bytes 0x02, 0x03, 0x04, 0x05 (literal).
        let f = fragment(&[&[0xFD, 0x01], &[0x03, 0x02, 0x03, 0x04, 0x05]]);
        let mut out = [0u8; 8];
        decode(&[&f], 4, 2, &mut out).unwrap();
        assert_eq!(out, [0x02, 0x01, 0x03, 0x01, 0x04, 0x01, 0x05, 0x01]);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let mut out = [0u8; 8];
        let short = fragment(&[&[0xFD, 0x01], &[0x03, 0x02]]);
        assert!(decode(&[&short], 4, 2, &mut out).unwrap_err().message().contains("literal run goes past"));
        let mut bad = fragment(&[&[0xFD, 0x01], &[0x03, 0x02, 0x03, 0x04, 0x05]]);
        bad[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(decode(&[&bad], 4, 2, &mut out).unwrap_err().message().contains("spans bytes"));
        assert!(decode(&[&bad[..10]], 4, 2, &mut out).unwrap_err().message().contains("64-byte header"));
        let one = fragment(&[&[0xFD, 0x01]]);
        assert!(decode(&[&one], 4, 2, &mut out).unwrap_err().message().contains("1 segments"));
    }
}
