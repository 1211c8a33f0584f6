//! Small DICOM files written at test time by dicom-rs's writer (the parser asfda uses is a
//! different code path), for hostile-input and fuzz-regression tests: nothing third-party is
//! committed.
#![allow(dead_code)]

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

/// What a test slice looks like.
#[derive(Clone, Debug)]
pub struct Slice {
    pub rows: u16,
    pub columns: u16,
    pub z: f64,
    pub photometric: &'static str,
    pub signed: bool,
    pub pixels: Vec<u16>,
    pub series: &'static str,
    pub transfer_syntax: &'static str,
    /// ImageType (CS, backslash-separated values).
    pub image_type: String,
}

impl Slice {
    /// A `rows` x `columns` unsigned 16-bit MONOCHROME2 axial slice at height `z` (explicit VR
    /// little endian), pixels 0, 1, 2, ...
    pub fn new(rows: u16, columns: u16, z: f64) -> Slice {
        let n = usize::from(rows) * usize::from(columns);
        Slice {
            rows,
            columns,
            z,
            photometric: "MONOCHROME2",
            signed: false,
            pixels: (0..n).map(|i| i as u16).collect(),
            series: "1.2.826.0.1.3680043.2.1125.1",
            transfer_syntax: "1.2.840.10008.1.2.1",
            image_type: "ORIGINAL\\PRIMARY".to_string(),
        }
    }

    /// The file's bytes (128-byte preamble, DICM, meta, data set).
    pub fn bytes(&self) -> Vec<u8> {
        let mut o = InMemDicomObject::new_empty();
        let text = |o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        text(&mut o, tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4");
        text(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.2.1125.2");
        text(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, self.series);
        text(&mut o, tags::IMAGE_TYPE, VR::CS, &self.image_type);
        text(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, &format!("-10\\-20\\{}", self.z));
        text(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0");
        text(&mut o, tags::PIXEL_SPACING, VR::DS, "0.5\\0.75");
        text(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, self.photometric);
        let short = |o: &mut InMemDicomObject, tag: Tag, v: u16| {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        };
        short(&mut o, tags::SAMPLES_PER_PIXEL, 1);
        short(&mut o, tags::ROWS, self.rows);
        short(&mut o, tags::COLUMNS, self.columns);
        short(&mut o, tags::BITS_ALLOCATED, 16);
        short(&mut o, tags::BITS_STORED, 16);
        short(&mut o, tags::HIGH_BIT, 15);
        short(&mut o, tags::PIXEL_REPRESENTATION, u16::from(self.signed));
        o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(self.pixels.iter().copied().collect())));
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.4")
            .media_storage_sop_instance_uid("1.2.826.0.1.3680043.2.1125.2")
            .transfer_syntax(self.transfer_syntax)
            .implementation_class_uid("1.2.826.0.1.3680043.2.1125.99");
        let file = o.with_meta(meta).expect("a valid file meta table");
        let mut out = Vec::new();
        file.write_all(&mut out).expect("dicom-rs writes the file");
        out
    }
}

/// Index of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("the bytes are in the file")
}
