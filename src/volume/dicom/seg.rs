//! Writing a label map as a DICOM Segmentation object (SEG, SOP class 1.2.840.10008.5.1.4.1.1.66.4):
//! binary, one segment per foreground class of the model, in the study and frame of reference of
//! the source series it was computed from, with new series and instance UIDs.
//!
//! - **Segments** carry the manifest's class metadata: SegmentLabel (the class name), the coded
//!   category and type (SegmentedPropertyCategory/TypeCodeSequence), the display colour as
//!   RecommendedDisplayCIELabValue, algorithm type AUTOMATIC named after the bundle. A foreground
//!   class without a coded concept is refused (DICOM needs one; add `code` to the manifest).
//! - **Frames** are the label volume's own slices (voxel axis k), one per segment and slice where
//!   the segment is present (as highdicom omits empty frames), ordered by segment then position,
//!   with DimensionIndexValues (segment number, slice index). A slice that coincides with a
//!   source frame (same orientation and size, its position within [`EVEN_FRACTION`] of a slice
//!   step along the normal and half a pixel in plane) takes that frame's ImagePositionPatient
//!   and references it (DerivationImageSequence / SourceImageSequence, with ReferencedFrameNumber
//!   for a multi-frame source), so viewers and `get_pixels_by_source_instance` map it back; on a
//!   grid that does not coincide (an uneven series resampled when read, a reoriented volume)
//!   frames keep their own positions and carry no per-frame reference.
//! - **Encoding**: Explicit VR Little Endian, bits packed LSB first across frames (PS3.5 8.1.1),
//!   written crash-safely (temporary file and rename).
//!
//! Validated in tests/python/test_dicom_seg.py with highdicom: it reads the object, the segment
//! descriptions match the manifest, and the decoded masks equal asfda's labels.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use dicom_core::value::{DataSetSequence, PrimitiveValue, C};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use super::image::Image;
use crate::bundle::ClassInfo;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::volume::nifti_io::ReadOptions;
use crate::volume::slices::{EVEN_FRACTION, ORIENTATION_TOLERANCE};
use crate::volume::{Convention, Volume};

/// SOP class UID of the Segmentation Storage IOD.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// asfda's implementation class UID in file meta information (a UUID-derived 2.25 UID, fixed).
const IMPLEMENTATION_CLASS_UID: &str = "2.25.178315066473609745826356406395131528533";

/// What [`write_dicom_seg`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegWritten {
    /// The new SeriesInstanceUID of the segmentation.
    pub series_instance_uid: String,
    /// The new SOPInstanceUID of the segmentation object.
    pub sop_instance_uid: String,
    /// Segments described (one per foreground class, present or not).
    pub segments: usize,
    /// Frames written (segment x slice where the segment is present; at least one).
    pub frames: usize,
    /// Frames that reference a source frame (all of them on the source's own grid).
    pub referenced_frames: usize,
}

/// Writes `labels` (one channel of class indices 0..classes.len(), 0 the background, as
/// [`crate::engine::Engine::segment`] returns them on the input's grid) as a binary DICOM Segmentation
/// object at `path`. `sources` are the files or folders of the DICOM series the labels were
/// computed from (read as [`super::read_dicom_series`] reads them): the SEG takes their patient,
/// study and frame of reference and references their instances. `classes` describe the segments
/// (the bundle's `classes`); `algorithm` names the model (SegmentAlgorithmName).
///
/// Errors: `InvalidArgument` (labels with several channels, a value that is not a class index,
/// a foreground class without a coded concept), `InvalidData` (sources of several series or
/// without FrameOfReferenceUID), `Format`/`Io` (unreadable sources, unwritable `path`). Nothing
/// is left at `path` on error.
pub fn write_dicom_seg<P: AsRef<Path>>(
    labels: &Volume,
    classes: &[ClassInfo],
    algorithm: &str,
    sources: &[P],
    path: &Path,
) -> Result<SegWritten> {
    let class_of = label_indices(labels, classes.len())?;
    check_codes(classes)?;
    let images = super::read_images(sources, &ReadOptions::default())?;
    let source = Source::of(&images)?;
    let grid = Grid::of(labels);
    let frames = frames(&class_of, &grid, classes.len(), &source);
    let written = SegWritten {
        series_instance_uid: new_uid(),
        sop_instance_uid: new_uid(),
        segments: classes.len() - 1,
        frames: frames.len(),
        referenced_frames: frames.iter().filter(|f| f.source.is_some()).count(),
    };
    let object = dataset(&source, &grid, classes, algorithm, &frames, &class_of, &written);
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LE)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID),
        )
        .map_err(|e| Error::invalid_data(format!("DICOM SEG file meta information: {e}")))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| Error::invalid_data(format!("encoding the DICOM SEG: {e}")))?;
    crate::atomic_file::write(path, &bytes)?;
    Ok(written)
}

/// The labels as class indices (u8), refusing anything that is not one.
fn label_indices(labels: &Volume, n_classes: usize) -> Result<Vec<u8>> {
    if labels.channels() != 1 {
        return Err(Error::invalid_argument(format!(
            "a DICOM SEG is written from a label map with 1 channel, got {} channels",
            labels.channels()
        )));
    }
    if !(2..=256).contains(&n_classes) {
        return Err(Error::invalid_argument(format!("need 2 to 256 classes (background first), got {n_classes}")));
    }
    labels
        .data()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.fract() == 0.0 && v >= 0.0 && (v as usize) < n_classes {
                Ok(v as u8)
            } else {
                Err(Error::invalid_argument(format!(
                    "label map voxel {i} is {v}: not a class index 0..{} (the model's classes)",
                    n_classes - 1
                )))
            }
        })
        .collect()
}

fn check_codes(classes: &[ClassInfo]) -> Result<()> {
    match classes.iter().enumerate().skip(1).find(|(_, c)| c.code.is_none()) {
        Some((i, c)) => Err(Error::invalid_argument(format!(
            "class {i} '{}' has no coded concept (manifest classes[{i}].code, SNOMED CT category and type): \
             a DICOM SEG segment needs one",
            c.name
        ))),
        None => Ok(()),
    }
}

/// One frame of the source series that a SEG frame may derive from.
struct SourceFrame {
    sop_class_uid: String,
    sop_instance_uid: String,
    /// 1-based frame number in a multi-frame source; `None` for a single-frame image.
    frame_number: Option<usize>,
    rows: usize,
    columns: usize,
    position: [f64; 3],
    orientation: [f64; 6],
}

/// What the SEG takes from its source series.
struct Source {
    /// Patient, study and frame-of-reference attributes copied as they are.
    copied: Vec<DataElement<InMemDicomObject>>,
    series_instance_uid: String,
    series_number: Option<i32>,
    frames: Vec<SourceFrame>,
    /// (SOPClassUID, SOPInstanceUID) of every source instance, for the Common Instance Reference.
    instances: Vec<(String, String)>,
}

/// Patient, General Study and Frame of Reference attributes a derived object repeats.
const COPIED: [Tag; 12] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::FRAME_OF_REFERENCE_UID,
];

impl Source {
    fn of(images: &[Image]) -> Result<Source> {
        let first = &images[0];
        let text = |object: &InMemDicomObject, tag: Tag| {
            object.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        };
        for (tag, what) in
            [(tags::STUDY_INSTANCE_UID, "StudyInstanceUID"), (tags::FRAME_OF_REFERENCE_UID, "FrameOfReferenceUID")]
        {
            if text(&first.object, tag).is_none_or(|s| s.is_empty()) {
                return Err(Error::invalid_data(format!(
                    "{}: no {what}; a DICOM SEG must share its source's study and frame of reference",
                    first.name
                )));
            }
        }
        let copied = COPIED.iter().filter_map(|&tag| first.object.get(tag).cloned()).collect();
        let mut frames = Vec::new();
        let mut instances = Vec::new();
        for image in images {
            let class = text(&image.object, tags::SOP_CLASS_UID).unwrap_or_default();
            let instance = text(&image.object, tags::SOP_INSTANCE_UID).unwrap_or_default();
            if class.is_empty() || instance.is_empty() {
                return Err(Error::invalid_data(format!("{}: no SOPClassUID or SOPInstanceUID", image.name)));
            }
            let multi = image.frames.len() > 1;
            frames.extend(image.frames.iter().enumerate().filter(|(_, f)| f.missing.is_none()).map(|(i, f)| {
                SourceFrame {
                    sop_class_uid: class.clone(),
                    sop_instance_uid: instance.clone(),
                    frame_number: multi.then_some(i + 1),
                    rows: image.rows,
                    columns: image.columns,
                    position: f.geometry.position,
                    orientation: f.geometry.orientation,
                }
            }));
            instances.push((class, instance));
        }
        Ok(Source {
            copied,
            series_instance_uid: first.series_uid.clone(),
            series_number: text(&first.object, tags::SERIES_NUMBER).and_then(|s| s.parse().ok()),
            frames,
            instances,
        })
    }
}

/// The label volume's slices in DICOM terms (LPS).
struct Grid {
    dims: [usize; 3],
    /// Row direction (column index grows), column direction (row index grows), LPS unit vectors.
    orientation: [f64; 6],
    /// [between rows, between columns] (DICOM order), mm.
    pixel_spacing: [f64; 2],
    /// Slice step vector (voxel axis k), LPS mm.
    step: [f64; 3],
    /// LPS position of voxel (0, 0, 0).
    origin: [f64; 3],
}

impl Grid {
    fn of(labels: &Volume) -> Grid {
        let a = labels.affine_in(Convention::Lps);
        let axis = |c: usize| [a[0][c], a[1][c], a[2][c]];
        let (x, y) = (axis(0), axis(1));
        let (nx, ny) = (norm(x), norm(y));
        Grid {
            dims: labels.dims(),
            orientation: [x[0] / nx, x[1] / nx, x[2] / nx, y[0] / ny, y[1] / ny, y[2] / ny],
            pixel_spacing: [ny, nx],
            step: axis(2),
            origin: axis(3),
        }
    }

    fn position(&self, k: usize) -> [f64; 3] {
        std::array::from_fn(|r| self.origin[r] + self.step[r] * k as f64)
    }

    /// The source frame slice `k` coincides with, if any.
    fn matching_source(&self, k: usize, source: &Source) -> Option<usize> {
        let p = self.position(k);
        let step = norm(self.step);
        let normal = cross3(&self.orientation);
        let half_pixel = 0.5 * self.pixel_spacing[0].min(self.pixel_spacing[1]);
        let along_tolerance = if step > 0.0 { EVEN_FRACTION * step } else { 1e-3 };
        let mut best: Option<(usize, f64)> = None;
        for (i, f) in source.frames.iter().enumerate() {
            let same_plane = f.rows == self.dims[1]
                && f.columns == self.dims[0]
                && f.orientation.iter().zip(&self.orientation).all(|(a, b)| (a - b).abs() <= ORIENTATION_TOLERANCE);
            if !same_plane {
                continue;
            }
            let d: [f64; 3] = std::array::from_fn(|r| f.position[r] - p[r]);
            let along = dot(d, normal);
            let in_plane = norm(std::array::from_fn(|r| d[r] - along * normal[r]));
            if along.abs() <= along_tolerance && in_plane <= half_pixel && best.is_none_or(|(_, b)| along.abs() < b) {
                best = Some((i, along.abs()));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// One SEG frame: a segment on one slice.
struct Frame {
    segment: usize,
    slice: usize,
    position: [f64; 3],
    source: Option<usize>,
}

/// The frames to write: every (segment, slice) where the segment is present, segment-major; one
/// empty frame of segment 1 when no foreground class is present at all (a SEG has >= 1 frame).
fn frames(class_of: &[u8], grid: &Grid, n_classes: usize, source: &Source) -> Vec<Frame> {
    let [nx, ny, nz] = grid.dims;
    let plane = nx * ny;
    let mut present = vec![false; n_classes * nz];
    for (k, slice) in class_of.chunks_exact(plane).enumerate() {
        for &c in slice {
            present[usize::from(c) * nz + k] = true;
        }
    }
    let matches: Vec<Option<usize>> = (0..nz).map(|k| grid.matching_source(k, source)).collect();
    let frame = |segment, k: usize| Frame {
        segment,
        slice: k,
        position: matches[k].map_or_else(|| grid.position(k), |i| source.frames[i].position),
        source: matches[k],
    };
    let mut out: Vec<Frame> = (1..n_classes)
        .flat_map(|s| (0..nz).map(move |k| (s, k)))
        .filter(|&(s, k)| present[s * nz + k])
        .map(|(s, k)| frame(s, k))
        .collect();
    if out.is_empty() {
        out.push(frame(1, 0));
    }
    out
}

/// Bits of every frame, packed LSB first, frames back to back (not byte-aligned per frame), padded
/// to an even length.
fn pixel_data(frames: &[Frame], class_of: &[u8], grid: &Grid) -> Vec<u8> {
    let plane = grid.dims[0] * grid.dims[1];
    let bits = frames.len() * plane;
    let mut packed = vec![0u8; bits.div_ceil(8).next_multiple_of(2)];
    for (f, frame) in frames.iter().enumerate() {
        let slice = &class_of[frame.slice * plane..(frame.slice + 1) * plane];
        for (i, &c) in slice.iter().enumerate() {
            if usize::from(c) == frame.segment {
                let bit = f * plane + i;
                packed[bit / 8] |= 1 << (bit % 8);
            }
        }
    }
    packed
}

fn dataset(
    source: &Source,
    grid: &Grid,
    classes: &[ClassInfo],
    algorithm: &str,
    frames: &[Frame],
    class_of: &[u8],
    written: &SegWritten,
) -> InMemDicomObject {
    let (date, time) = now_utc();
    let mut o = InMemDicomObject::new_empty();
    for element in &source.copied {
        o.put(element.clone());
    }
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &written.sop_instance_uid);
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &written.series_instance_uid);
    put_str(&mut o, tags::MODALITY, VR::CS, "SEG");
    // The source's series number + 1000 keeps the SEG next to its series in viewers' lists.
    let series_number = source.series_number.map_or(1000, |n| n.saturating_add(1000));
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, &series_number.to_string());
    put_str(&mut o, tags::SERIES_DESCRIPTION, VR::LO, &truncate(&format!("asfda {algorithm}"), 64));
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    for tag in [tags::PATIENT_NAME, tags::PATIENT_ID, tags::PATIENT_BIRTH_DATE, tags::PATIENT_SEX] {
        if o.get(tag).is_none() {
            put_str(&mut o, tag, if tag == tags::PATIENT_NAME { VR::PN } else { VR::LO }, "");
        }
    }
    for (tag, vr) in [
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        if o.get(tag).is_none() {
            put_str(&mut o, tag, vr, "");
        }
    }
    // Equipment (General and Enhanced General Equipment modules).
    put_str(&mut o, tags::MANUFACTURER, VR::LO, "asfda");
    put_str(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, "asfda");
    put_str(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(&mut o, tags::SOFTWARE_VERSIONS, VR::LO, crate::VERSION);
    // General and Segmentation Image modules.
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut o, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut o, tags::SERIES_TIME, VR::TM, &time);
    put_strs(&mut o, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_str(&mut o, tags::CONTENT_LABEL, VR::CS, "ASFDA");
    put_str(&mut o, tags::CONTENT_DESCRIPTION, VR::LO, &truncate(&format!("{algorithm} segmentation"), 64));
    put_str(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, "asfda");
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut o, tags::SEGMENTS_OVERLAP, VR::CS, "NO");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put(&mut o, tags::SEGMENT_SEQUENCE, VR::SQ, sequence(segments(classes, algorithm)));
    // Image Pixel module: 1-bit binary frames.
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(&mut o, tags::ROWS, VR::US, PrimitiveValue::from(grid.dims[1] as u16));
    put(&mut o, tags::COLUMNS, VR::US, PrimitiveValue::from(grid.dims[0] as u16));
    put(&mut o, tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16));
    put(&mut o, tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16));
    put(&mut o, tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16));
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16));
    // Multi-frame Functional Groups and Dimension modules.
    put_str(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string());
    put(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, VR::SQ, sequence(vec![shared_groups(grid)]));
    let per_frame = frames.iter().map(|f| frame_groups(f, source)).collect();
    put(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, VR::SQ, sequence(per_frame));
    dimensions(&mut o);
    put(&mut o, tags::REFERENCED_SERIES_SEQUENCE, VR::SQ, sequence(vec![referenced_series(source)]));
    put(&mut o, tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixel_data(frames, class_of, grid)));
    o
}

/// SegmentSequence: one item per foreground class (segment number = class index).
fn segments(classes: &[ClassInfo], algorithm: &str) -> Vec<InMemDicomObject> {
    classes
        .iter()
        .enumerate()
        .skip(1)
        .map(|(number, class)| {
            let mut item = InMemDicomObject::new_empty();
            put(&mut item, tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from(number as u16));
            put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &truncate(&class.name, 64));
            put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
            put_str(&mut item, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &truncate(algorithm, 64));
            if let Some(code) = &class.code {
                put(
                    &mut item,
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    VR::SQ,
                    sequence(vec![coded(&code.category)]),
                );
                put(&mut item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, VR::SQ, sequence(vec![coded(&code.kind)]));
            }
            if let Some(rgb) = class.color {
                put(
                    &mut item,
                    tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                    VR::US,
                    PrimitiveValue::U16(cielab(rgb).into_iter().collect()),
                );
            }
            item
        })
        .collect()
}

fn coded(concept: &crate::bundle::CodedConcept) -> InMemDicomObject {
    code_item(&concept.value, &concept.scheme, &concept.meaning)
}

fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

/// Pixel measures and plane orientation, the same for every frame.
fn shared_groups(grid: &Grid) -> InMemDicomObject {
    let mut measures = InMemDicomObject::new_empty();
    put(&mut measures, tags::PIXEL_SPACING, VR::DS, ds(&grid.pixel_spacing));
    let thickness = norm(grid.step);
    put(&mut measures, tags::SLICE_THICKNESS, VR::DS, ds(&[thickness]));
    put(&mut measures, tags::SPACING_BETWEEN_SLICES, VR::DS, ds(&[thickness]));
    let mut orientation = InMemDicomObject::new_empty();
    put(&mut orientation, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&grid.orientation));
    let mut groups = InMemDicomObject::new_empty();
    put(&mut groups, tags::PIXEL_MEASURES_SEQUENCE, VR::SQ, sequence(vec![measures]));
    put(&mut groups, tags::PLANE_ORIENTATION_SEQUENCE, VR::SQ, sequence(vec![orientation]));
    groups
}

/// A frame's derivation, content (dimension index values), plane position and segment.
fn frame_groups(frame: &Frame, source: &Source) -> InMemDicomObject {
    let mut groups = InMemDicomObject::new_empty();
    if let Some(i) = frame.source {
        let f = &source.frames[i];
        let mut image = InMemDicomObject::new_empty();
        put_str(&mut image, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &f.sop_class_uid);
        put_str(&mut image, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &f.sop_instance_uid);
        if let Some(n) = f.frame_number {
            put_str(&mut image, tags::REFERENCED_FRAME_NUMBER, VR::IS, &n.to_string());
        }
        // The frame lies on the source frame pixel for pixel (matching_source checked it).
        put_str(&mut image, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
        let purpose = code_item("121322", "DCM", "Source image for image processing operation");
        put(&mut image, tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, VR::SQ, sequence(vec![purpose]));
        let mut derivation = InMemDicomObject::new_empty();
        put(
            &mut derivation,
            tags::DERIVATION_CODE_SEQUENCE,
            VR::SQ,
            sequence(vec![code_item("113076", "DCM", "Segmentation")]),
        );
        put(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, VR::SQ, sequence(vec![image]));
        put(&mut groups, tags::DERIVATION_IMAGE_SEQUENCE, VR::SQ, sequence(vec![derivation]));
    }
    let mut content = InMemDicomObject::new_empty();
    let index = [frame.segment as u32, frame.slice as u32 + 1];
    put(&mut content, tags::DIMENSION_INDEX_VALUES, VR::UL, PrimitiveValue::U32(index.into_iter().collect()));
    put(&mut groups, tags::FRAME_CONTENT_SEQUENCE, VR::SQ, sequence(vec![content]));
    let mut position = InMemDicomObject::new_empty();
    put(&mut position, tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&frame.position));
    put(&mut groups, tags::PLANE_POSITION_SEQUENCE, VR::SQ, sequence(vec![position]));
    let mut segment = InMemDicomObject::new_empty();
    put(&mut segment, tags::REFERENCED_SEGMENT_NUMBER, VR::US, PrimitiveValue::from(frame.segment as u16));
    put(&mut groups, tags::SEGMENT_IDENTIFICATION_SEQUENCE, VR::SQ, sequence(vec![segment]));
    groups
}

/// DimensionOrganizationSequence and DimensionIndexSequence: frames are indexed by segment
/// number, then by position (the slice index along the normal).
fn dimensions(o: &mut InMemDicomObject) {
    let organization = new_uid();
    let mut org = InMemDicomObject::new_empty();
    put_str(&mut org, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization);
    put(o, tags::DIMENSION_ORGANIZATION_SEQUENCE, VR::SQ, sequence(vec![org]));
    let index = |pointer: Tag, group: Tag, description: &str| {
        let mut item = InMemDicomObject::new_empty();
        put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization);
        put(&mut item, tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::from(pointer));
        put(&mut item, tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::from(group));
        put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, description);
        item
    };
    let items = vec![
        index(tags::REFERENCED_SEGMENT_NUMBER, tags::SEGMENT_IDENTIFICATION_SEQUENCE, "ReferencedSegmentNumber"),
        index(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE, "ImagePositionPatient"),
    ];
    put(o, tags::DIMENSION_INDEX_SEQUENCE, VR::SQ, sequence(items));
}

/// The Common Instance Reference module's ReferencedSeriesSequence item: every source instance.
fn referenced_series(source: &Source) -> InMemDicomObject {
    let instances = source
        .instances
        .iter()
        .map(|(class, instance)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
            put_str(&mut item, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
            item
        })
        .collect();
    let mut series = InMemDicomObject::new_empty();
    put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, &source.series_instance_uid);
    put(&mut series, tags::REFERENCED_INSTANCE_SEQUENCE, VR::SQ, sequence(instances));
    series
}

fn put(o: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<dicom_core::value::Value<InMemDicomObject>>) {
    o.put(DataElement::new(tag, vr, value));
}

fn put_str(o: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    put(o, tag, vr, PrimitiveValue::from(value));
}

fn put_strs(o: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[&str]) {
    put(o, tag, vr, PrimitiveValue::Strs(values.iter().map(|s| s.to_string()).collect::<C<String>>()));
}

fn sequence(items: Vec<InMemDicomObject>) -> DataSetSequence<InMemDicomObject> {
    DataSetSequence::from(items)
}

/// Decimal strings (DS), each at most 16 characters as the VR allows, as precise as fits.
fn ds(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|&v| ds_one(v)).collect::<C<String>>())
}

fn ds_one(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    (0..=15)
        .rev()
        .map(|precision| {
            let s = format!("{v:.precision$}");
            let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
            if s == "-0" {
                "0".to_string()
            } else {
                s
            }
        })
        .find(|s| s.len() <= 16)
        .unwrap_or_else(|| format!("{v:.6e}"))
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().filter(|c| !c.is_control() && *c != '\\').take(max_chars).collect()
}

/// sRGB (0-255) to DICOM's scaled CIELab (PS3.3 C.10.7.1.1: L* 0..100 and a*, b* -128..127
/// mapped linearly to 0..65535), via linear RGB and XYZ with the D65 white point.
fn cielab(rgb: [u8; 3]) -> [u16; 3] {
    let linear = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let [r, g, b] = rgb.map(linear);
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f64| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    let (l, a, bb) = (116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz));
    let scale = |v: f64, lo: f64, hi: f64| ((v.clamp(lo, hi) - lo) / (hi - lo) * 65535.0).round() as u16;
    [scale(l, 0.0, 100.0), scale(a, -128.0, 127.0), scale(bb, -128.0, 127.0)]
}

/// A new UID under the UUID-derived root 2.25 (PS3.5 B.2): 128 bits from the clock, the process
/// id and a counter, mixed, so two objects written in the same nanosecond still differ.
pub(crate) fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = (nanos as u64)
        ^ ((nanos >> 64) as u64)
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = SplitMix64::new(seed);
    let value = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    format!("2.25.{value}")
}

/// Today's date (YYYYMMDD) and the time (HHMMSS), UTC, from the system clock.
fn now_utc() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil inverse).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60))
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn cross3(o: &[f64; 6]) -> [f64; 3] {
    [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds_one(0.5), "0.5");
        assert_eq!(ds_one(-0.0), "0");
        assert_eq!(ds_one(1.0), "1");
        assert_eq!(ds_one(-120.123_456_789_012_35), "-120.12345678901");
        for v in [1e-9, -123_456.789_012_345_67, 0.1 + 0.2, 98_765_432.123_456] {
            let s = ds_one(v);
            assert!(s.len() <= 16, "{s}");
            assert!((s.parse::<f64>().unwrap() - v).abs() <= 1e-6 * v.abs().max(1.0), "{v} -> {s}");
        }
    }

    #[test]
    fn cielab_of_white_black_and_red() {
        assert_eq!(cielab([255, 255, 255]), [65535, 32896, 32896]);
        assert_eq!(cielab([0, 0, 0]), [0, 32896, 32896]);
        // sRGB red: L* 53.24, a* 80.09, b* 67.20.
        let [l, a, b] = cielab([255, 0, 0]);
        assert!((f64::from(l) / 65535.0 * 100.0 - 53.24).abs() < 0.05);
        assert!((f64::from(a) / 65535.0 * 255.0 - 128.0 - 80.09).abs() < 0.1);
        assert!((f64::from(b) / 65535.0 * 255.0 - 128.0 - 67.20).abs() < 0.1);
    }

    #[test]
    fn civil_dates_and_uids() {
        let (date, time) = now_utc();
        assert_eq!(date.len(), 8);
        assert!(date.starts_with("20"), "{date}");
        assert_eq!(time.len(), 6);
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert!(a.starts_with("2.25.") && a.len() <= 64 && a[5..].chars().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn bits_are_packed_across_frames() {
        // 3x1 slices, 2 slices; class 1 at voxel 0 of slice 0 and voxel 2 of slice 1.
        let class_of = [1, 0, 0, 0, 0, 1];
        let grid = Grid {
            dims: [3, 1, 2],
            orientation: [1., 0., 0., 0., 1., 0.],
            pixel_spacing: [1., 1.],
            step: [0., 0., 1.],
            origin: [0.; 3],
        };
        let frames = [
            Frame { segment: 1, slice: 0, position: [0.; 3], source: None },
            Frame { segment: 1, slice: 1, position: [0., 0., 1.], source: None },
        ];
        // Frame 0 bits 0..3 (bit 0 set), frame 1 bits 3..6 (bit 5 set): 0b0010_0001.
        assert_eq!(pixel_data(&frames, &class_of, &grid), vec![0b0010_0001, 0]);
    }
}
