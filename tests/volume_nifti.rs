//! NIfTI reading/writing, geometry and reorientation on real files (shipped with nibabel and
//! nilearn in the test virtualenv) and on files corrupted byte by byte.

use asfda::volume::{read_nifti, write_nifti, Convention, DataType, NonFinitePolicy, OutputType, ReadOptions, Volume};
use asfda::{Error, ErrorKind};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Helpers

/// site-packages of the test virtualenv: `ASFDA_TEST_PYTHON_SITE`, else `<crate>/.venv/...`.
/// Missing is a failure, not a skip: the documented test command creates it.
fn site_packages() -> PathBuf {
    let dir = std::env::var_os("ASFDA_TEST_PYTHON_SITE").map(PathBuf::from).unwrap_or_else(venv_site_packages);
    assert!(
        dir.join("nibabel/tests/data").is_dir() && dir.join("nilearn/datasets/data").is_dir(),
        "test data not found in {}: create the virtualenv with nibabel and nilearn (see README) or set ASFDA_TEST_PYTHON_SITE",
        dir.display()
    );
    dir
}

/// `<crate>/.venv/lib/python3.*/site-packages`, whatever the Python minor version.
fn venv_site_packages() -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
        })
        .map_or_else(|| lib.join("python3/site-packages"), |p| p.join("site-packages"))
}

fn nibabel_file(name: &str) -> PathBuf {
    site_packages().join("nibabel/tests/data").join(name)
}

fn nilearn_file(name: &str) -> PathBuf {
    site_packages().join("nilearn/datasets/data").join(name)
}

fn read(path: &Path) -> asfda::Result<Volume> {
    read_nifti(path, &ReadOptions::default())
}

fn read_keep(path: &Path) -> Volume {
    read_nifti(path, &ReadOptions { nonfinite: NonFinitePolicy::Keep, ..Default::default() }).unwrap()
}

/// Asserts the error kind, a key phrase, and that the message names the file.
fn assert_error(result: asfda::Result<Volume>, kind: ErrorKind, phrase: &str, path: &Path) -> Error {
    let e = result.expect_err("expected an error");
    assert_eq!(e.kind(), kind, "wrong kind for: {e}");
    assert!(e.message().contains(phrase), "message lacks {phrase:?}: {e}");
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(e.message().contains(&*name), "message does not name the file: {e}");
    e
}

fn affine_close(a: [[f64; 4]; 4], b: [[f64; 4]; 4], tol: f64) -> bool {
    a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| (x - y).abs() <= tol)
}

fn bits(data: &[f32]) -> Vec<u32> {
    data.iter().map(|v| v.to_bits()).collect()
}

/// A small oblique, left-handed (LAS-like) volume: 5 x 4 x 3 voxels, `channels` channels.
fn sample_volume(channels: usize, values: impl Fn(usize) -> f32) -> Volume {
    let n = 5 * 4 * 3 * channels;
    let affine = [[-1.5, 0.0, 0.0, 30.25], [0.0, 1.9, -0.35, -20.5], [0.0, 0.32, 2.2, 7.125], [0.0, 0.0, 0.0, 1.0]];
    Volume::new((0..n).map(values).collect(), [5, 4, 3], channels, affine).unwrap()
}

/// Writes a fresh little-endian NIfTI-1 `.nii` (u16 labels, 352-byte voxel offset) and returns its bytes.
fn fresh_nii(dir: &Path) -> Vec<u8> {
    let path = dir.join("fresh.nii");
    write_nifti(&sample_volume(1, |i| (i % 7) as f32), &path, OutputType::U16).unwrap();
    std::fs::read(path).unwrap()
}

/// `bytes` with each `(offset, replacement)` applied, saved as `dir/name`.
fn patched(dir: &Path, name: &str, bytes: &[u8], patches: &[(usize, Vec<u8>)]) -> PathBuf {
    let mut bytes = bytes.to_vec();
    for (at, new) in patches {
        bytes[*at..*at + new.len()].copy_from_slice(new);
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn i16s(v: &[i16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// NIfTI-1 header offsets used to corrupt files.
const DIM: usize = 40;
const DATATYPE: usize = 70;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
const SCL_SLOPE: usize = 112;
const SFORM_CODE: usize = 254;
const SROW_X: usize = 280;
const MAGIC: usize = 344;

// ---------------------------------------------------------------------------------------------
// Real files

struct Expected {
    path: PathBuf,
    dims: [usize; 3],
    channels: usize,
    /// Sum of all voxels (NaN excluded), from nibabel `get_fdata()`.
    sum: f64,
    last: f64,
    affine_00_03: (f64, f64),
    canonical_00_03: (f64, f64),
}

fn real_files() -> Vec<Expected> {
    let e = |path, dims, channels, sum, last, a: (f64, f64), c: (f64, f64)| Expected {
        path,
        dims,
        channels,
        sum,
        last,
        affine_00_03: a,
        canonical_00_03: c,
    };
    vec![
        e(nibabel_file("anatomical.nii"), [33, 41, 25], 1, 284166082.0, 2971.0, (-2.0, 32.0), (2.0, -32.0)),
        e(
            nibabel_file("example4d.nii.gz"),
            [128, 96, 24],
            2,
            101985356.0,
            0.0,
            (-2.0, 117.8551025390625),
            (2.0, -136.1448974609375),
        ),
        e(
            nibabel_file("example_nifti2.nii.gz"),
            [32, 20, 12],
            2,
            6926802.0,
            457.0,
            (-2.0, 117.8551025390625),
            (2.0, 55.8551025390625),
        ),
        e(
            nibabel_file("functional.nii"),
            [17, 21, 3],
            20,
            77913290.39703369,
            3129.341064453125,
            (-4.0, 32.0),
            (4.0, -32.0),
        ),
        e(
            nibabel_file("reoriented_anat_moved.nii"),
            [21, 26, 22],
            1,
            32739769.449157715,
            0.0,
            (4.0, -35.29789733886719),
            (4.0, -35.29789733886719),
        ),
        e(
            nibabel_file("resampled_anat_moved.nii"),
            [17, 21, 3],
            1,
            7749957.09866333,
            f64::NAN,
            (-4.0, 32.0),
            (4.0, -32.0),
        ),
        e(
            nibabel_file("row_major.dconn.nii"),
            [1, 1, 1],
            100,
            46.74536418868229,
            0.794831395149231,
            (-1.0, 0.0),
            (1.0, 0.0),
        ),
        e(nibabel_file("standard.nii.gz"), [4, 5, 7], 1, 7650.0, 255.0, (1.0, 0.0), (1.0, 0.0)),
        e(nilearn_file("image_10426.nii.gz"), [53, 63, 46], 1, 3460.168992704268, 0.0, (-3.0, 78.0), (3.0, -78.0)),
        e(
            nilearn_file("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
            [197, 233, 189],
            1,
            257090788.0,
            0.0,
            (1.0, -98.0),
            (1.0, -98.0),
        ),
        e(
            nilearn_file("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
            [197, 233, 189],
            1,
            333468829.0,
            0.0,
            (1.0, -98.0),
            (1.0, -98.0),
        ),
        e(
            nilearn_file("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
            [197, 233, 189],
            1,
            170935158.0,
            0.0,
            (1.0, -98.0),
            (1.0, -98.0),
        ),
    ]
}

#[test]
fn reads_every_real_file_like_nibabel() {
    for f in real_files() {
        let name = f.path.display();
        let v = read_keep(&f.path);
        assert_eq!((v.dims(), v.channels()), (f.dims, f.channels), "{name}");
        assert_eq!(v.data().len(), v.voxel_count() * v.channels());
        let sum: f64 = v.data().iter().filter(|x| !x.is_nan()).map(|&x| f64::from(x)).sum();
        assert!((sum - f.sum).abs() <= 1e-9 * f.sum.abs().max(1.0), "{name}: sum {sum} vs {}", f.sum);
        let last = *v.data().last().unwrap();
        assert!(f64::from(last) == f.last || (last.is_nan() && f.last.is_nan()), "{name}: last voxel {last}");
        assert_eq!((v.affine()[0][0], v.affine()[0][3]), f.affine_00_03, "{name}");
        let (c, o) = v.to_canonical();
        assert_eq!((c.affine()[0][0], c.affine()[0][3]), f.canonical_00_03, "{name}");
        assert_eq!(o.is_identity(), f.affine_00_03.0 > 0.0, "{name}");
        let back = o.undo(&c).unwrap();
        assert_eq!(bits(back.data()), bits(v.data()), "{name}: undo is not bit-identical");
        assert!(affine_close(back.affine(), v.affine(), 1e-9), "{name}");
        assert_eq!(bits(&o.undo_buffer(c.data(), c.channels())), bits(v.data()), "{name}");
    }
}

#[test]
fn big_endian_scaled_and_extended_files() {
    // anatomical.nii is big-endian int16; example4d.nii.gz has header extensions (vox_offset 416);
    // functional.nii is scaled (slope 0.0754..., inter 3100.76...).
    let v = read(&nibabel_file("anatomical.nii")).unwrap();
    assert_eq!(v.spacing(), [2.0, 2.0, 2.0]);
    let f = read(&nibabel_file("functional.nii")).unwrap();
    assert!(f.data().iter().any(|x| x.fract() != 0.0), "scaling was not applied");
    let nifti2 = read(&nibabel_file("example_nifti2.nii.gz")).unwrap();
    let nifti1 = read(&nibabel_file("example4d.nii.gz")).unwrap();
    assert!(affine_close(nifti1.affine(), nifti2.affine(), 0.0));
}

#[test]
fn nonfinite_policy() {
    let path = nibabel_file("resampled_anat_moved.nii");
    let e = assert_error(read(&path), ErrorKind::InvalidData, "153 voxel value(s) are NaN or infinite", &path);
    assert!(e.message().contains("non-finite policy Replace(value)") && e.message().contains("--nonfinite"), "{e}");
    let replaced =
        read_nifti(&path, &ReadOptions { nonfinite: NonFinitePolicy::Replace(-1.0), ..Default::default() }).unwrap();
    assert_eq!(replaced.nonfinite_count(), 0);
    assert_eq!(replaced.data().iter().filter(|&&x| x == -1.0).count(), 153);
    let mut kept = read_keep(&path);
    assert_eq!(kept.nonfinite_count(), 153);
    assert_eq!(kept.replace_nonfinite(0.0), 153);
    let bad_option = ReadOptions { nonfinite: NonFinitePolicy::Replace(f32::NAN), ..Default::default() };
    assert_eq!(read_nifti(&path, &bad_option).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Writing

#[test]
fn write_read_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    type Case = (OutputType, fn(usize) -> f32);
    let cases: [Case; 3] = [
        (OutputType::U8, |i| (i % 256) as f32),
        (OutputType::U16, |i| (i * 977 % 65536) as f32),
        (OutputType::F32, |i| (i as f32 - 50.0) * 0.37),
    ];
    for (dtype, values) in cases {
        for ext in ["nii", "nii.gz"] {
            for channels in [1, 3] {
                let v = sample_volume(channels, values);
                let path = dir.path().join(format!("out_{dtype:?}_{channels}.{ext}"));
                write_nifti(&v, &path, dtype).unwrap();
                let back = read(&path).unwrap();
                assert_eq!((back.dims(), back.channels()), (v.dims(), v.channels()));
                assert_eq!(bits(back.data()), bits(v.data()), "{}", path.display());
                assert!(affine_close(back.affine(), v.affine(), 1e-4), "{:?} vs {:?}", back.affine(), v.affine());
                assert!(back.same_grid(&v));
            }
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn write_rounds_and_preserves_real_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let v = sample_volume(1, |i| i as f32 * 0.5);
    let path = dir.path().join("rounded.nii");
    write_nifti(&v, &path, OutputType::U8).unwrap();
    let back = read(&path).unwrap();
    assert!(back.data().iter().zip(v.data()).all(|(b, x)| *b == x.round()));

    // A real oblique 4D file, reoriented, written and read back.
    let (canonical, _) = read(&nibabel_file("example4d.nii.gz")).unwrap().to_canonical();
    let path = dir.path().join("canonical.nii.gz");
    write_nifti(&canonical, &path, OutputType::F32).unwrap();
    let back = read(&path).unwrap();
    assert_eq!(bits(back.data()), bits(canonical.data()));
    assert!(affine_close(back.affine(), canonical.affine(), 1e-4));
}

#[test]
fn writes_nifti2_when_a_dim_exceeds_i16() {
    let dir = tempfile::tempdir().unwrap();
    let affine = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let v = Volume::new((0..40_000).map(|i| (i % 200) as f32).collect(), [40_000, 1, 1], 1, affine).unwrap();
    let path = dir.path().join("long.nii");
    write_nifti(&v, &path, OutputType::U8).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], &540i32.to_le_bytes());
    assert_eq!(&bytes[4..8], b"n+2\0");
    assert_eq!(bits(read(&path).unwrap().data()), bits(v.data()));
}

#[test]
fn write_errors() {
    let dir = tempfile::tempdir().unwrap();
    let v = sample_volume(1, |i| if i == 7 { 256.0 } else { 1.0 });
    let path = dir.path().join("labels.nii.gz");
    let e = write_nifti(&v, &path, OutputType::U8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("voxel 7 has value 256"), "{e}");
    assert!(!path.exists());
    let negative = sample_volume(1, |i| -(i as f32));
    assert_eq!(write_nifti(&negative, &path, OutputType::U16).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let e = write_nifti(&v, &dir.path().join("labels.nrrd"), OutputType::F32).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = write_nifti(&v, &dir.path().join("missing/labels.nii"), OutputType::F32).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("labels.nii"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing may be left behind");
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn refuses_missing_short_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nii");
    assert_error(read(&missing), ErrorKind::Io, "cannot open", &missing);

    let short = dir.path().join("short.nii");
    std::fs::write(&short, b"ab").unwrap();
    assert_error(read(&short), ErrorKind::Format, "not a NIfTI file", &short);

    let text = dir.path().join("text.nii");
    std::fs::write(&text, "this is not an image at all, just some text ".repeat(20)).unwrap();
    assert_error(read(&text), ErrorKind::Format, "not a NIfTI file", &text);

    let nii = fresh_nii(dir.path());
    let cut_header = dir.path().join("cut_header.nii");
    std::fs::write(&cut_header, &nii[..200]).unwrap();
    assert_error(read(&cut_header), ErrorKind::Format, "too short for a NIfTI-1 header", &cut_header);

    let bad_magic = patched(dir.path(), "bad_magic.nii", &nii, &[(MAGIC, b"xyz\0".to_vec())]);
    assert_error(read(&bad_magic), ErrorKind::Format, "not a NIfTI file", &bad_magic);

    let pair = patched(dir.path(), "pair.nii", &nii, &[(MAGIC, b"ni1\0".to_vec())]);
    assert_error(read(&pair), ErrorKind::Unsupported, ".hdr/.img pair", &pair);

    let hdr = patched(dir.path(), "image.hdr", &nii, &[]);
    assert_error(read(&hdr), ErrorKind::Unsupported, ".hdr/.img pair", &hdr);
}

#[test]
fn refuses_truncated_and_corrupt_data() {
    let dir = tempfile::tempdir().unwrap();
    let nii = fresh_nii(dir.path());
    let truncated = dir.path().join("truncated.nii");
    std::fs::write(&truncated, &nii[..nii.len() - 10]).unwrap();
    let e = assert_error(read(&truncated), ErrorKind::Format, "truncated", &truncated);
    assert!(e.message().contains("110 bytes of the 120 bytes"), "{e}");

    let gz = gzip(&nii);
    let truncated_gz = dir.path().join("truncated.nii.gz");
    std::fs::write(&truncated_gz, &gz[..gz.len() / 2]).unwrap();
    assert_error(read(&truncated_gz), ErrorKind::Format, "gzip", &truncated_gz);

    // Cut exactly after the voxels' compressed bytes: only the CRC/size trailer is missing.
    let no_trailer = dir.path().join("no_trailer.nii.gz");
    std::fs::write(&no_trailer, &gz[..gz.len() - 8]).unwrap();
    assert_error(read(&no_trailer), ErrorKind::Format, "gzip", &no_trailer);

    let mut bad_crc = gz.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0xff;
    let bad_crc_path = dir.path().join("bad_crc.nii.gz");
    std::fs::write(&bad_crc_path, bad_crc).unwrap();
    assert_error(read(&bad_crc_path), ErrorKind::Format, "corrupt or truncated gzip stream", &bad_crc_path);

    // A gzip stream whose content is too short for the header's dims.
    let short_content = dir.path().join("short_content.nii.gz");
    std::fs::write(&short_content, gzip(&nii[..nii.len() - 4])).unwrap();
    assert_error(read(&short_content), ErrorKind::Format, "116 bytes of the 120 bytes", &short_content);

    let vox_offset = patched(dir.path(), "vox_offset.nii", &nii, &[(VOX_OFFSET, f32s(&[100.0]))]);
    assert_error(read(&vox_offset), ErrorKind::Format, "vox_offset = 100", &vox_offset);
    let far_offset = patched(dir.path(), "far_offset.nii", &nii, &[(VOX_OFFSET, f32s(&[4000.0]))]);
    assert_error(read(&far_offset), ErrorKind::Format, "truncated", &far_offset);
}

#[test]
fn refuses_unsupported_datatypes() {
    let dir = tempfile::tempdir().unwrap();
    let nii = fresh_nii(dir.path());
    for (code, name) in
        [(32, "complex64"), (128, "RGB24"), (1536, "float128"), (1, "binary"), (2304, "RGBA32"), (1792, "complex128")]
    {
        let path = patched(dir.path(), &format!("type{code}.nii"), &nii, &[(DATATYPE, i16s(&[code]))]);
        let e = assert_error(read(&path), ErrorKind::Unsupported, name, &path);
        assert!(e.message().contains(&code.to_string()), "{e}");
    }
}

#[test]
fn refuses_bad_dims_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let nii = fresh_nii(dir.path());
    for (dims, phrase) in [
        (vec![0i16], "dim[0] = 0"),
        (vec![8], "dim[0] = 8"),
        (vec![3, 5, 0], "dim[2] = 0"),
        (vec![3, 5, 4, -3], "dim[3] = -3"),
    ] {
        let path = patched(dir.path(), "bad_dim.nii", &nii, &[(DIM, i16s(&dims))]);
        assert_error(read(&path), ErrorKind::InvalidData, phrase, &path);
    }
    // 32767^3 voxels claimed by a 472-byte file: refused on the count, nothing allocated.
    let huge = patched(dir.path(), "huge.nii", &nii, &[(DIM, i16s(&[3, 32767, 32767, 32767]))]);
    let e = assert_error(read(&huge), ErrorKind::TooLarge, "35181150961663 voxels", &huge);
    assert!(e.message().contains("2147483648") && e.message().contains("max_voxels"), "{e}");
    let seven =
        patched(dir.path(), "seven.nii", &nii, &[(DIM, i16s(&[7, 32767, 32767, 32767, 32767, 32767, 32767, 32767]))]);
    assert_error(read(&seven), ErrorKind::TooLarge, "more than 2^64", &seven);
    // Within the limit but longer than the file: refused on the file size.
    let long = patched(dir.path(), "long.nii", &nii, &[(DIM, i16s(&[3, 1000, 1000, 100]))]);
    assert_error(read(&long), ErrorKind::Format, "truncated", &long);

    let path = dir.path().join("fresh.nii");
    let small_limit = ReadOptions { max_voxels: 59, ..Default::default() };
    let e = read_nifti(&path, &small_limit).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    assert!(e.message().contains("60 voxels") && e.message().contains("limit of 59"), "{e}");
}

#[test]
fn refuses_bad_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let nii = fresh_nii(dir.path());
    let no_sform = (SFORM_CODE, i16s(&[0]));
    // The qform uses pixdim[1..3].
    for (value, phrase) in [(0.0, "pixdim[2] = 0"), (-1.0, "pixdim[2] = -1"), (f32::NAN, "pixdim[2] = NaN")] {
        let path = patched(dir.path(), "pixdim.nii", &nii, &[no_sform.clone(), (PIXDIM + 8, f32s(&[value]))]);
        assert_error(read(&path), ErrorKind::InvalidData, phrase, &path);
    }
    let zero_column = patched(
        dir.path(),
        "zero_col.nii",
        &nii,
        &[(SROW_X, f32s(&[0.0])), (SROW_X + 16, f32s(&[0.0])), (SROW_X + 32, f32s(&[0.0]))],
    );
    assert_error(read(&zero_column), ErrorKind::InvalidData, "zero spacing along voxel axis 0", &zero_column);
    // Voxel axes 1 and 2 made parallel.
    let singular =
        patched(dir.path(), "singular.nii", &nii, &[(SROW_X + 24, f32s(&[1.9])), (SROW_X + 40, f32s(&[0.32]))]);
    let e = assert_error(read(&singular), ErrorKind::InvalidData, "singular", &singular);
    assert!(e.message().contains("sform"), "{e}");
    let nan = patched(dir.path(), "nan_srow.nii", &nii, &[(SROW_X + 12, f32s(&[f32::NAN]))]);
    assert_error(read(&nan), ErrorKind::InvalidData, "NaN", &nan);
    let unit_quaternion = patched(dir.path(), "quaternion.nii", &nii, &[no_sform, (256, f32s(&[0.9, 0.9, 0.0]))]);
    assert_error(read(&unit_quaternion), ErrorKind::InvalidData, "not a unit quaternion", &unit_quaternion);
}

#[test]
fn applies_scaling_and_fallback_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let nii = fresh_nii(dir.path());
    let scaled = patched(dir.path(), "scaled.nii", &nii, &[(SCL_SLOPE, f32s(&[2.5, -1.0]))]);
    let original = read(&dir.path().join("fresh.nii")).unwrap();
    let v = read(&scaled).unwrap();
    assert!(v.data().iter().zip(original.data()).all(|(s, o)| *s == o * 2.5 - 1.0));
    let unscaled = patched(dir.path(), "unscaled.nii", &nii, &[(SCL_SLOPE, f32s(&[0.0, 7.0]))]);
    assert_eq!(bits(read(&unscaled).unwrap().data()), bits(original.data()));

    // No sform and no qform: nibabel's base affine, diag(-pixdim1, pixdim2, pixdim3) centred.
    let base = patched(dir.path(), "base.nii", &nii, &[(252, i16s(&[0, 0])), (PIXDIM, f32s(&[1.0, 2.0, 3.0, 4.0]))]);
    let expected = [[-2.0, 0.0, 0.0, 4.0], [0.0, 3.0, 0.0, -4.5], [0.0, 0.0, 4.0, -4.0], [0.0, 0.0, 0.0, 1.0]];
    assert_eq!(read(&base).unwrap().affine(), expected);
}

// ---------------------------------------------------------------------------------------------
// Buffers from callers

fn buffer_of(dtype: DataType, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            DataType::U8 => vec![v as u8],
            DataType::I8 => vec![v as i8 as u8],
            DataType::U16 => (v as u16).to_ne_bytes().to_vec(),
            DataType::I16 => (v as i16).to_ne_bytes().to_vec(),
            DataType::U32 => (v as u32).to_ne_bytes().to_vec(),
            DataType::I32 => (v as i32).to_ne_bytes().to_vec(),
            DataType::U64 => (v as u64).to_ne_bytes().to_vec(),
            DataType::I64 => (v as i64).to_ne_bytes().to_vec(),
            DataType::F32 => (v as f32).to_ne_bytes().to_vec(),
            DataType::F64 => v.to_ne_bytes().to_vec(),
        })
        .collect()
}

#[test]
fn from_buffer_every_type_and_convention() {
    let lps = [[0.8, 0.0, 0.0, -10.0], [0.0, 0.8, 0.0, 20.0], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]];
    for dtype in DataType::ALL {
        let signed = !matches!(dtype, DataType::U8 | DataType::U16 | DataType::U32 | DataType::U64);
        let values: Vec<f64> = (0..24).map(|i| if signed && i % 2 == 1 { -(i as f64) } else { i as f64 }).collect();
        let bytes = buffer_of(dtype, &values);
        assert_eq!(bytes.len(), 24 * dtype.size_bytes());
        let v = Volume::from_buffer(&bytes, dtype, [2, 3, 2], 2, Some([0.8, 0.8, 2.5]), lps, Convention::Lps).unwrap();
        assert_eq!(v.data(), values.iter().map(|&x| x as f32).collect::<Vec<_>>().as_slice(), "{dtype:?}");
        assert_eq!(v.channel(1)[0], values[12] as f32);
        assert_eq!(v.affine()[0], [-0.8, 0.0, 0.0, 10.0]);
        assert_eq!(v.affine()[1], [0.0, -0.8, 0.0, -20.0]);
        assert_eq!(v.affine()[2], lps[2]);
        assert_eq!(v.affine_in(Convention::Lps), lps);
        let ras = Volume::from_buffer(&bytes, dtype, [2, 3, 2], 2, None, lps, Convention::Ras).unwrap();
        assert_eq!(ras.affine(), lps);
        assert!(!ras.same_grid(&v));
        assert_eq!(ras.check_same_grid(&v, "image vs label").unwrap_err().kind(), ErrorKind::GeometryMismatch);
        let e = Volume::from_buffer(&bytes[1..], dtype, [2, 3, 2], 2, None, lps, Convention::Ras).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{dtype:?}");
    }
    // Canonical of the LPS-declared volume flips x and y (LPS -> RAS voxel order).
    let bytes = buffer_of(DataType::U8, &(0..12).map(f64::from).collect::<Vec<_>>());
    let v = Volume::from_buffer(&bytes, DataType::U8, [2, 3, 2], 1, None, lps, Convention::Lps).unwrap();
    let (c, o) = v.to_canonical();
    assert_eq!(c.data()[0], 5.0);
    assert!(affine_close(c.affine(), [[0.8, 0.0, 0.0, 9.2], [0.0, 0.8, 0.0, -21.6], lps[2], lps[3]], 1e-12));
    let back = o.undo(&c).unwrap();
    assert_eq!(back.data(), v.data());
    assert!(affine_close(back.affine(), v.affine(), 1e-12));
    let e = Volume::from_buffer(&bytes, DataType::U8, [2, 3, 2], 1, Some([1.0, 1.0, 1.0]), lps, Convention::Lps)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::GeometryMismatch);
}

#[test]
fn reading_from_memory_equals_reading_the_file() {
    for name in ["example4d.nii.gz", "anatomical.nii", "example_nifti2.nii.gz"] {
        let path = nibabel_file(name);
        let bytes = std::fs::read(&path).unwrap();
        let from_memory = asfda::volume::read_nifti_bytes(&bytes, &ReadOptions::default()).unwrap();
        assert!(from_memory == read(&path).unwrap(), "{name}");
        // Truncated in memory: the same refusal as a truncated file.
        let cut = asfda::volume::read_nifti_bytes(&bytes[..bytes.len() - 100], &ReadOptions::default()).unwrap_err();
        assert_eq!(cut.kind(), ErrorKind::Format, "{name}: {cut}");
    }
}
