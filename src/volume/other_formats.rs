//! Recognises the files people hand asfda by mistake (a DICOM slice, an NRRD or MetaImage volume
//! from 3D Slicer or ITK, a PNG screenshot), so that "not a NIfTI file" can say what the file is
//! and how to convert it instead of quoting four bytes.

/// What to do with a DICOM file handed to the NIfTI reader.
#[cfg(feature = "dicom")]
const DICOM: &str = "it is a DICOM file: read its series with `volume::read_dicom_series` (C: \
                     asfda_volume_read_dicom, Python: Volume.load_dicom, CLI: name the series folder)";
#[cfg(not(feature = "dicom"))]
const DICOM: &str = "it is a DICOM file, and this asfda was built without the `dicom` feature: build it \
                     with that feature, or convert the series first, e.g. `dcm2niix -z y -o OUT_DIR SERIES_DIR` \
                     (pip install dcm2niix)";

/// What a file that is not NIfTI is, and what to do about it, from its first bytes (at least the
/// first 132 when the file has them; the DICOM marker sits after a 128-byte preamble).
pub fn describe(head: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if head.get(128..132) == Some(b"DICM") {
        Some(DICOM)
    } else if starts(b"NRRD000") {
        Some(
            "it is an NRRD file; asfda reads NIfTI volumes: save it as .nii.gz (3D Slicer: Save, \
             format NIfTI; Python: SimpleITK.WriteImage(SimpleITK.ReadImage(IN), 'OUT.nii.gz'))",
        )
    } else if starts(b"ObjectType") || starts(b"NDims") {
        Some(
            "it is a MetaImage (.mha/.mhd) file; asfda reads NIfTI volumes: save it as .nii.gz \
             (Python: SimpleITK.WriteImage(SimpleITK.ReadImage(IN), 'OUT.nii.gz'))",
        )
    } else if starts(b"\x89PNG") || starts(b"\xff\xd8\xff") || starts(b"II*\0") || starts(b"MM\0*") {
        Some("it is a 2D picture (PNG, JPEG or TIFF), not a 3D volume; asfda reads NIfTI volumes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn names_the_formats_it_knows_and_nothing_else() {
        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM\x02\x00");
        let fix = if cfg!(feature = "dicom") { "read_dicom_series" } else { "dcm2niix" };
        assert!(describe(&dicom).unwrap().contains("DICOM") && describe(&dicom).unwrap().contains(fix));
        assert!(describe(b"NRRD0004\n# Complete NRRD file format specification").unwrap().contains("NRRD"));
        assert!(describe(b"ObjectType = Image\nNDims = 3").unwrap().contains("MetaImage"));
        assert!(describe(b"\x89PNG\r\n\x1a\n").unwrap().contains("2D picture"));
        assert_eq!(describe(&[0u8; 132]), None);
        assert_eq!(describe(b"DICM"), None, "the marker counts only after the preamble");
        assert_eq!(describe(b""), None);
    }
}
