//! Voxel datatypes and their conversion to f32.

use crate::error::{Error, Result};

/// Voxel datatypes a caller buffer / NIfTI file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    /// Every supported datatype.
    pub const ALL: [DataType; 10] = [
        DataType::U8,
        DataType::I8,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];
}

/// Reads one `$t` from an `[u8; N]` in the given byte order, widened to f64.
macro_rules! widen {
    ($t:ty, $big:expr) => {
        |b| (if $big { <$t>::from_be_bytes(b) } else { <$t>::from_le_bytes(b) }) as f64
    };
}

impl DataType {
    pub fn size_bytes(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    /// The NIfTI `datatype` code (NIFTI_TYPE_*).
    pub fn nifti_code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I16 => 4,
            DataType::I32 => 8,
            DataType::F32 => 16,
            DataType::F64 => 64,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::U32 => 768,
            DataType::I64 => 1024,
            DataType::U64 => 1280,
        }
    }

    /// The type for a NIfTI `datatype` code; `Unsupported` names any other code and its type.
    pub fn from_nifti_code(code: i16) -> Result<DataType> {
        Self::ALL.into_iter().find(|d| d.nifti_code() == code).ok_or_else(|| {
            Error::unsupported(format!(
                "NIfTI datatype {code} ({}) is not supported; asfda reads real scalar voxels: \
                 uint8, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64",
                unsupported_type_name(code)
            ))
        })
    }

    /// Appends the f32 value of each element of `bytes` to `out`, as `raw * slope + inter` when
    /// `scale` is given. The arithmetic is done in f64, then rounded once to f32, which is what
    /// nibabel's `get_fdata()` followed by a cast to float32 gives. A trailing partial element
    /// (only possible in a truncated file, which is an error anyway) is ignored.
    pub(super) fn decode_into(self, bytes: &[u8], big_endian: bool, scale: Option<(f64, f64)>, out: &mut Vec<f32>) {
        let be = big_endian;
        match self {
            DataType::U8 => decode::<1>(bytes, scale, out, |b: [u8; 1]| f64::from(b[0])),
            DataType::I8 => decode::<1>(bytes, scale, out, |b: [u8; 1]| f64::from(b[0] as i8)),
            DataType::U16 => decode::<2>(bytes, scale, out, widen!(u16, be)),
            DataType::I16 => decode::<2>(bytes, scale, out, widen!(i16, be)),
            DataType::U32 => decode::<4>(bytes, scale, out, widen!(u32, be)),
            DataType::I32 => decode::<4>(bytes, scale, out, widen!(i32, be)),
            DataType::U64 => decode::<8>(bytes, scale, out, widen!(u64, be)),
            DataType::I64 => decode::<8>(bytes, scale, out, widen!(i64, be)),
            DataType::F32 => decode::<4>(bytes, scale, out, widen!(f32, be)),
            DataType::F64 => decode::<8>(bytes, scale, out, widen!(f64, be)),
        }
    }
}

fn decode<const N: usize>(bytes: &[u8], scale: Option<(f64, f64)>, out: &mut Vec<f32>, widen: impl Fn([u8; N]) -> f64) {
    let values = bytes.chunks_exact(N).map(|chunk| {
        let mut b = [0u8; N];
        b.copy_from_slice(chunk);
        widen(b)
    });
    match scale {
        // Multiply then add, unfused, like numpy.
        Some((slope, inter)) => out.extend(values.map(|v| (v * slope + inter) as f32)),
        None => out.extend(values.map(|v| v as f32)),
    }
}

/// Names the NIfTI datatype codes asfda refuses, for error messages.
fn unsupported_type_name(code: i16) -> &'static str {
    match code {
        0 => "unknown/unset",
        1 => "binary, 1 bit per voxel",
        32 => "complex64",
        128 => "RGB24",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "RGBA32",
        _ => "not a NIfTI datatype code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_nifti_code(d.nifti_code()).unwrap(), d);
        }
        for (code, name) in
            [(32, "complex64"), (128, "RGB24"), (1536, "float128"), (1, "binary"), (2304, "RGBA32"), (7, "not a")]
        {
            let e = DataType::from_nifti_code(code).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported);
            assert!(e.message().contains(name) && e.message().contains(&code.to_string()), "{e}");
        }
    }

    #[test]
    fn decodes_both_endiannesses_and_scales() {
        let mut out = Vec::new();
        DataType::I16.decode_into(&[0xff, 0xfe, 0x01, 0x00], true, None, &mut out);
        assert_eq!(out, [-2.0, 256.0]);
        out.clear();
        DataType::I16.decode_into(&[0xfe, 0xff, 0x01], false, Some((0.5, 10.0)), &mut out);
        assert_eq!(out, [9.0]);
        out.clear();
        DataType::F64.decode_into(&1e300f64.to_le_bytes(), false, None, &mut out);
        assert_eq!(out, [f32::INFINITY]);
        out.clear();
        DataType::I8.decode_into(&[0x80, 0x7f], false, None, &mut out);
        assert_eq!(out, [-128.0, 127.0]);
    }
}
