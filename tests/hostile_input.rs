//! Hostile input never takes the host down: each case runs in a child process (this test binary
//! re-run with one case named) under an address-space limit (`setrlimit(RLIMIT_AS)`), with the
//! hostile file made at test time. The child must return an error, never abort: a failed
//! allocation would kill it with SIGABRT ("memory allocation of N bytes failed"), which the parent
//! sees as a non-zero exit.

use asfda::volume::{read_nifti, write_nifti, Convention, DataType, OutputType, ReadOptions, Volume};
use asfda::ErrorKind;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming the case a child runs (and the folder it works in).
const CASE_ENV: &str = "ASFDA_HOSTILE_CASE";
const DIR_ENV: &str = "ASFDA_HOSTILE_DIR";

const GIB: u64 = 1 << 30;

/// Runs `case` in a child under an address-space limit of `limit` bytes and returns the
/// error kind it reported. Fails the test if the child died (signal, abort) or reported success.
fn in_child(test_name: &str, case: &str, dir: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env(CASE_ENV, case)
        .env(DIR_ENV, dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "case {case}: the child died ({:?}); stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints "test NAME ... " without a newline before the case runs.
    let result = stdout.split("CASE-RESULT ").nth(1).and_then(|rest| rest.lines().next());
    result.unwrap_or_else(|| panic!("case {case}: no result line; stdout:\n{stdout}")).to_string()
}

/// Child side: limits the address space, runs the case, prints its outcome and exits.
fn child_mode(limit: u64, run: impl FnOnce(&Path) -> asfda::Result<()>) {
    if std::env::var_os(CASE_ENV).is_none() {
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: setrlimit with a valid struct pointer.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0, "setrlimit failed");
    let outcome = match run(&dir) {
        Ok(()) => "Ok".to_string(),
        Err(e) => format!("{:?}: {}", e.kind(), e.message()),
    };
    println!("CASE-RESULT {outcome}");
    std::process::exit(0);
}

/// A NIfTI-1 header (348 bytes + 4 extension bytes) declaring `dims` of u8 voxels, written by
/// asfda for a tiny volume and then patched, so everything but the dims is valid.
fn header_declaring(dims: [i16; 3], dir: &Path) -> Vec<u8> {
    let small = Volume::new(vec![0.0; 8], [2, 2, 2], 1, diag()).unwrap();
    let path = dir.join("small.nii");
    write_nifti(&small, &path, OutputType::U8).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(352);
    for (i, d) in dims.iter().enumerate() {
        let at = 42 + 2 * i; // dim[1..=3], little-endian i16
        bytes[at..at + 2].copy_from_slice(&d.to_le_bytes());
    }
    bytes
}

fn diag() -> [[f64; 4]; 4] {
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
}

/// 2048 x 1024 x 1024 = 2^31 u8 voxels: within the default `max_voxels`, 8 GiB as f32.
const HUGE: [i16; 3] = [2048, 1024, 1024];

/// Writes a `.nii.gz` of `header` followed by `zeros` zero bytes (which compress ~1000:1).
fn gzip_bomb(path: &Path, header: &[u8], zeros: u64) {
    let mut gz = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::fast());
    gz.write_all(header).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        gz.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    gz.finish().unwrap();
}

fn read_default(path: &Path) -> asfda::Result<()> {
    read_nifti(path, &ReadOptions::default()).map(|_| ())
}

#[test]
fn a_small_gzip_declaring_two_gib_of_voxels_is_refused_before_allocating() {
    child_mode(4 * GIB, |dir| {
        let path = dir.join("bomb.nii.gz");
        gzip_bomb(&path, &header_declaring(HUGE, dir), 64 << 20);
        assert!(std::fs::metadata(&path).unwrap().len() < 2 << 20, "the bomb is small");
        read_default(&path)
    });
    let dir = tempfile::tempdir().unwrap();
    let got = in_child("a_small_gzip_declaring_two_gib_of_voxels_is_refused_before_allocating", "bomb", dir.path());
    assert!(got.starts_with("TooLarge") && got.contains("max_bytes"), "{got}");
}

#[test]
fn a_truncated_gzip_declaring_two_gib_is_refused() {
    child_mode(4 * GIB, |dir| {
        let path = dir.join("truncated.nii.gz");
        gzip_bomb(&path, &header_declaring(HUGE, dir), 8 << 20);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        read_default(&path)
    });
    let dir = tempfile::tempdir().unwrap();
    let got = in_child("a_truncated_gzip_declaring_two_gib_is_refused", "truncated", dir.path());
    assert!(got.starts_with("TooLarge"), "{got}");
}

#[test]
fn a_sparse_two_gib_nii_is_refused() {
    child_mode(4 * GIB, |dir| {
        let path = dir.join("sparse.nii");
        std::fs::write(&path, header_declaring(HUGE, dir)).unwrap();
        // Passes the file-size check: the file really is 352 + 2^31 bytes long (sparse on disk).
        std::fs::File::options().write(true).open(&path).unwrap().set_len(352 + (2 * GIB)).unwrap();
        read_default(&path)
    });
    let dir = tempfile::tempdir().unwrap();
    let got = in_child("a_sparse_two_gib_nii_is_refused", "sparse", dir.path());
    assert!(got.starts_with("TooLarge") && got.contains("8589934592 bytes"), "{got}");
}

/// With the byte limit lifted, the allocation itself fails under the address-space limit: the
/// reader grows its buffer fallibly and reports `TooLarge` instead of aborting.
#[test]
fn an_allocation_failure_is_an_error_not_an_abort() {
    child_mode(GIB, |dir| {
        let path = dir.join("inflating.nii.gz");
        // 2^28 u8 voxels = 1 GiB as f32; 512 MiB of them are really there, so the buffer must
        // grow past the 1 GiB address-space limit before the data ends.
        gzip_bomb(&path, &header_declaring([1024, 512, 512], dir), 512 << 20);
        read_nifti(&path, &ReadOptions { max_bytes: u64::MAX, ..Default::default() }).map(|_| ())
    });
    let dir = tempfile::tempdir().unwrap();
    let got = in_child("an_allocation_failure_is_an_error_not_an_abort", "alloc", dir.path());
    assert!(got.starts_with("TooLarge") && got.contains("cannot allocate"), "{got}");
}

#[test]
fn a_two_gib_caller_buffer_is_refused_by_the_byte_limit() {
    child_mode(4 * GIB, |_| {
        let bytes = vec![0u8; 2 * GIB as usize]; // calloc: pages untouched until read
        let dims = [2048, 1024, 1024];
        Volume::from_buffer(&bytes, DataType::U8, dims, 1, None, diag(), Convention::Ras).map(|_| ())
    });
    let dir = tempfile::tempdir().unwrap();
    let got = in_child("a_two_gib_caller_buffer_is_refused_by_the_byte_limit", "buffer", dir.path());
    assert!(got.starts_with("TooLarge") && got.contains("max_bytes"), "{got}");
}

#[test]
fn dims_that_overflow_are_too_large_not_a_panic() {
    let byte = [0u8; 1];
    for dims in [[usize::MAX, 1, 1], [usize::MAX / 2, 3, 1], [1 << 40, 1, 1]] {
        let e = Volume::from_buffer(&byte, DataType::U8, dims, 1, None, diag(), Convention::Ras).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{dims:?}: {e}");
    }
    // Within the limits, a wrong length is still the caller's argument error.
    let e = Volume::from_buffer(&byte, DataType::U8, [2, 1, 1], 1, None, diag(), Convention::Ras).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

#[test]
fn the_byte_limit_is_an_option() {
    let bytes = vec![7u8; 64];
    let small = ReadOptions { max_bytes: 255, ..Default::default() };
    let e = Volume::from_buffer_with_options(&bytes, DataType::U8, [4, 4, 4], 1, None, diag(), Convention::Ras, &small)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    assert!(e.message().contains("256 bytes") && e.message().contains("255"), "names needed and limit: {e}");
    let exact = ReadOptions { max_bytes: 256, ..Default::default() };
    let v = Volume::from_buffer_with_options(&bytes, DataType::U8, [4, 4, 4], 1, None, diag(), Convention::Ras, &exact)
        .unwrap();
    assert_eq!(v.data()[0], 7.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.nii.gz");
    write_nifti(&v, &path, OutputType::U8).unwrap();
    assert_eq!(read_nifti(&path, &small).unwrap_err().kind(), ErrorKind::TooLarge);
    assert_eq!(read_nifti(&path, &exact).unwrap().data(), v.data());
}

#[test]
fn a_gzip_stream_continuing_far_past_its_voxels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = header_declaring([2, 2, 2], dir.path());
    header.extend_from_slice(&[1u8; 8]);
    let path = dir.path().join("tail.nii.gz");
    gzip_bomb(&path, &header, 17 << 20);
    let e = read_nifti(&path, &ReadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Format, "{e}");
    assert!(e.message().contains("after the voxel data"), "{e}");
    // A little trailing data (within 16 MiB) is tolerated, as nibabel does.
    gzip_bomb(&path, &header, 1 << 20);
    assert_eq!(read_nifti(&path, &ReadOptions::default()).unwrap().data(), &[1.0; 8]);
}

#[path = "common/dicom.rs"]
mod dicom_file;

/// A DICOM slice written by dicom-rs, then patched: `f` edits the bytes.
fn patched_dicom(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = dicom_file::Slice::new(4, 4, 0.0).bytes();
    f(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// dicom-rs's parser reserves and zero-fills the length an element claims before reading it: a
/// 400-byte file claiming a 4 GiB pixel data element must be refused by asfda's length walk
/// (src/volume/dicom/guard.rs) before the parser sees it. Under a 1 GiB address-space limit.
#[test]
fn a_dicom_element_claiming_four_gib_is_refused_before_the_parser_allocates() {
    child_mode(GIB, |dir| {
        let path = patched_dicom(dir, "claims.dcm", |b| {
            // (7FE0,0010) OW: 2 reserved bytes, then the 4-byte length.
            let at = dicom_file::find(b, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']) + 8;
            b[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        });
        asfda::volume::read_dicom_series(&[path], &ReadOptions::default()).map(|_| ())
    });
    let dir = tempfile::tempdir().unwrap();
    let got =
        in_child("a_dicom_element_claiming_four_gib_is_refused_before_the_parser_allocates", "claims", dir.path());
    assert!(
        got.starts_with("Format") && got.contains("claims 4294967280 bytes") && got.contains("claims.dcm"),
        "{got}"
    );
}

/// A small file declaring 32768 x 32768 pixels (4 GiB as f32, within the default limits) is
/// refused because its pixel data cannot hold them, before the voxels are allocated.
#[test]
fn a_dicom_slice_declaring_more_pixels_than_it_holds_is_refused_before_allocating() {
    child_mode(GIB, |dir| {
        let path = patched_dicom(dir, "wide.dcm", |b| {
            for tag in [[0x28u8, 0x00, 0x10, 0x00], [0x28, 0x00, 0x11, 0x00]] {
                // Rows / Columns: US, 2-byte length, value.
                let at = dicom_file::find(b, &[&tag[..], b"US"].concat()) + 8;
                b[at..at + 2].copy_from_slice(&32768u16.to_le_bytes());
            }
        });
        asfda::volume::read_dicom_series(&[path], &ReadOptions::default()).map(|_| ())
    });
    let dir = tempfile::tempdir().unwrap();
    let got =
        in_child("a_dicom_slice_declaring_more_pixels_than_it_holds_is_refused_before_allocating", "wide", dir.path());
    assert!(got.starts_with("Format") && got.contains("32768x32768") && got.contains("wide.dcm"), "{got}");
}

#[test]
fn dicom_pixel_formats_written_by_dicom_rs_read_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ReadOptions::default();
    let write = |name: &str, slice: dicom_file::Slice| {
        let path = dir.path().join(name);
        std::fs::write(&path, slice.bytes()).unwrap();
        path
    };
    // MONOCHROME1 (unsigned 16 bits stored): inverted to 65535 - v.
    let mut s = dicom_file::Slice::new(2, 2, 0.0);
    s.photometric = "MONOCHROME1";
    let v = asfda::volume::read_dicom_series(&[write("m1.dcm", s)], &opts).unwrap();
    assert_eq!(v.data(), &[65535.0, 65534.0, 65533.0, 65532.0]);
    // Signed 16-bit, implicit VR little endian and explicit VR big endian.
    for (name, ts) in [("ivr.dcm", "1.2.840.10008.1.2"), ("be.dcm", "1.2.840.10008.1.2.2")] {
        let mut s = dicom_file::Slice::new(2, 2, 0.0);
        s.signed = true;
        s.pixels = vec![0xFFFF, 1, 0x8000, 7];
        s.transfer_syntax = ts;
        let v = asfda::volume::read_dicom_series(&[write(name, s)], &opts).unwrap();
        assert_eq!(v.data(), &[-1.0, 1.0, -32768.0, 7.0], "{name}");
    }
    // Two slices of two series in one folder: refused naming both UIDs; one can be chosen.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    let mut a = dicom_file::Slice::new(2, 2, 0.0);
    a.series = "1.2.3.1";
    let mut b = dicom_file::Slice::new(2, 2, 1.0);
    b.series = "1.2.3.2";
    std::fs::write(mixed.join("a"), a.bytes()).unwrap();
    std::fs::write(mixed.join("b"), b.bytes()).unwrap();
    std::fs::write(mixed.join("README.txt"), b"not DICOM: skipped in a folder").unwrap();
    let e = asfda::volume::read_dicom_series(&[&mixed], &opts).unwrap_err();
    assert!(e.message().contains("1.2.3.1 (1 files), 1.2.3.2 (1 files)"), "{e}");
    let one = asfda::volume::read_dicom_series_uid(&[&mixed], &opts, "1.2.3.2").unwrap();
    assert_eq!(one.dims(), [2, 2, 1]);
    // A named file that is not DICOM is a Format error naming it.
    let e = asfda::volume::read_dicom_series(&[mixed.join("README.txt")], &opts).unwrap_err();
    assert!(e.kind() == ErrorKind::Format && e.message().contains("README.txt"), "{e}");
}

/// dicom-rs makes one `String` (24 bytes and up) of each backslash-separated value: 4 MiB of
/// backslashes would take over 100 MB parsed. asfda counts them first and charges 128 bytes each
/// against max_bytes, so the parse is refused before it runs.
#[test]
fn a_dicom_string_of_millions_of_values_is_charged_against_max_bytes() {
    let mut s = dicom_file::Slice::new(2, 2, 0.0);
    s.image_type = "\\".repeat(4 << 20);
    // Implicit VR: a 4-byte length (explicit CS has 2), and the split found through the dictionary.
    s.transfer_syntax = "1.2.840.10008.1.2";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.dcm");
    std::fs::write(&path, s.bytes()).unwrap();
    let opts = ReadOptions { max_bytes: 256 << 20, ..ReadOptions::default() };
    let e = asfda::volume::read_dicom_series(&[&path], &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    let count: u64 = e.message().split("parsing its ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(count > 4 << 20 && e.message().contains("max_bytes"), "{e}");
    // With room for them, the same file reads.
    let roomy = ReadOptions { max_bytes: 1 << 30, ..ReadOptions::default() };
    assert!(asfda::volume::read_dicom_series(&[&path], &roomy).is_ok());
}
