//! Files asfda writes must be read the same by an independent reader, the `nifti` crate
//! (nibabel is the other one, in tests/python).

use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions, Volume};
use nifti::{IntoNdArray, NiftiObject, ReaderOptions};

fn sample(channels: usize) -> Volume {
    let dims = [5, 4, 3];
    let n = 60 * channels;
    let data = (0..n).map(|i| ((i * 7) % 251) as f32).collect();
    // Oblique-free LPS-ish affine with an offset, as scanners write.
    let affine = [[-1.5, 0.0, 0.0, 40.0], [0.0, -1.5, 0.0, 30.0], [0.0, 0.0, 3.0, -20.0], [0.0, 0.0, 0.0, 1.0]];
    Volume::new(data, dims, channels, affine).unwrap()
}

#[test]
fn nifti_crate_reads_what_asfda_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (channels, out_type, name) in [
        (1, OutputType::U8, "labels.nii.gz"),
        (1, OutputType::U16, "labels16.nii"),
        (2, OutputType::F32, "probs.nii.gz"),
    ] {
        let volume = sample(channels);
        let path = dir.path().join(name);
        write_nifti(&volume, &path, out_type).unwrap();

        let obj = ReaderOptions::new().read_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let header = obj.header();
        let expected_dims: Vec<u16> = if channels == 1 { vec![5, 4, 3] } else { vec![5, 4, 3, 2] };
        assert_eq!(header.dim().unwrap(), &expected_dims[..], "{name}");
        let a = volume.affine();
        for (row, srow) in [header.srow_x, header.srow_y, header.srow_z].iter().enumerate() {
            for col in 0..4 {
                assert!((srow[col] as f64 - a[row][col]).abs() < 1e-5, "{name} srow {row},{col}");
            }
        }
        let array = obj.into_volume().into_ndarray::<f32>().unwrap();
        // nifti-rs returns x-fastest data in Fortran order: iterate it the same way.
        let flat: Vec<f32> = array.t().iter().copied().collect();
        assert_eq!(flat, volume.data(), "{name}");

        // And asfda reads back exactly what it wrote.
        assert_eq!(read_nifti(&path, &ReadOptions::default()).unwrap().data(), volume.data(), "{name}");
    }
}
