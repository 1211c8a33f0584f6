//! Just enough of the protobuf wire format to read and rewrite ONNX models without an ONNX
//! dependency: the one walker behind reading a graph's input and output names when a bundle is
//! validated ([`graph_io`], used by `bundle`) and baking fine-tuned weights into an inference
//! model (`finetune::onnx_weights`).
//!
//! The onnx.proto field numbers used here: `ModelProto.graph` = 7; `GraphProto.initializer` = 5
//! (a `TensorProto`), `input` = 11, `output` = 12 (`ValueInfoProto`); `ValueInfoProto.name` = 1;
//! `TensorProto`: dims 1, data_type 2, float_data 4, name 8, raw_data 9, data_location 14.

use crate::error::{Error, ErrorKind};

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_FIXED64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_FIXED32: u8 = 5;

/// `ModelProto.graph`.
pub const MODEL_GRAPH: u64 = 7;
/// `GraphProto.initializer`.
pub const GRAPH_INITIALIZER: u64 = 5;
/// `GraphProto.input`.
pub const GRAPH_INPUT: u64 = 11;
/// `GraphProto.output`.
pub const GRAPH_OUTPUT: u64 = 12;
/// `ValueInfoProto.name`.
pub const VALUE_INFO_NAME: u64 = 1;
/// `TensorProto.name`.
pub const TENSOR_NAME: u64 = 8;

/// Why bytes are not a well-formed protobuf message (`truncated varint`, `truncated field`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DecodeError {
    fn from(what: &str) -> Self {
        DecodeError(what.to_string())
    }
}

/// A `Format` error: "the ONNX model is not a valid protobuf: ...".
impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::new(ErrorKind::Format, format!("the ONNX model is not a valid protobuf: {}", e.0))
    }
}

pub type DecodeResult<T> = std::result::Result<T, DecodeError>;

/// One field of a protobuf message: its number, wire type, the whole field's bytes (tag
/// included), the payload (the bytes of a length-delimited or fixed-width field; empty for a
/// varint) and the value of a varint field (0 otherwise).
pub struct Field<'a> {
    pub number: u64,
    pub wire: u8,
    pub raw: &'a [u8],
    pub payload: &'a [u8],
    pub value: u64,
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field, `None` for other wire types.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        (self.wire == WIRE_LEN).then_some(self.payload)
    }
}

/// Reads a varint at `*pos`, advancing it.
pub fn varint(buf: &[u8], pos: &mut usize) -> DecodeResult<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field.
pub fn put_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | u64::from(WIRE_LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Every field of one message, in order.
pub fn fields(buf: &[u8]) -> DecodeResult<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        let (payload, value) = match wire {
            WIRE_VARINT => {
                let v = varint(buf, &mut pos)?;
                (&buf[pos..pos], v)
            }
            WIRE_FIXED64 | WIRE_FIXED32 | WIRE_LEN => {
                let len = match wire {
                    WIRE_FIXED64 => 8,
                    WIRE_FIXED32 => 4,
                    _ => usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length overflows")?,
                };
                let end = pos.checked_add(len).filter(|&e| e <= buf.len()).ok_or("truncated field")?;
                let p = &buf[pos..end];
                pos = end;
                (p, 0)
            }
            w => return Err(DecodeError(format!("unsupported protobuf wire type {w} (field {number})"))),
        };
        out.push(Field { number, wire, raw: &buf[start..pos], payload, value });
    }
    Ok(out)
}

/// The string in field `number` of a message (empty when absent).
fn string(message: &[u8], number: u64) -> DecodeResult<String> {
    let raw = fields(message)?.into_iter().find(|f| f.number == number).and_then(|f| f.bytes()).unwrap_or(b"");
    String::from_utf8(raw.to_vec()).map_err(|_| "a name is not UTF-8".into())
}

/// (inputs without initializers, outputs) of a serialised ModelProto's main graph: the names
/// ONNX Runtime reports, read without creating a session.
pub fn graph_io(model: &[u8]) -> DecodeResult<(Vec<String>, Vec<String>)> {
    let graph = fields(model)?
        .into_iter()
        .find(|f| f.number == MODEL_GRAPH && f.wire == WIRE_LEN)
        .map(|f| f.payload)
        .ok_or("no graph")?;
    let (mut inputs, mut outputs, mut initializers) = (Vec::new(), Vec::new(), Vec::new());
    for f in fields(graph)? {
        let Some(m) = f.bytes() else { continue };
        match f.number {
            GRAPH_INPUT => inputs.push(string(m, VALUE_INFO_NAME)?),
            GRAPH_OUTPUT => outputs.push(string(m, VALUE_INFO_NAME)?),
            GRAPH_INITIALIZER => initializers.push(string(m, TENSOR_NAME)?),
            _ => {}
        }
    }
    inputs.retain(|i| !initializers.contains(i));
    Ok((inputs, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_refuses_garbage() {
        // ModelProto { graph (7): GraphProto { input (11) {name "x"}, input {name "w"},
        // initializer (5) {name (8) "w"}, output (12) {name "y"} } }
        let vi = |f: u8, n: &[u8]| [&[f << 3 | 2, n.len() as u8 + 2, 1 << 3 | 2, n.len() as u8][..], n].concat();
        let init = [&[5 << 3 | 2, 3, 8 << 3 | 2, 1][..], b"w"].concat();
        let graph = [vi(11, b"x"), vi(11, b"w"), init, vi(12, b"y")].concat();
        let model = [&[1 << 3, 8, 7 << 3 | 2, graph.len() as u8][..], &graph].concat();
        let (inputs, outputs) = graph_io(&model).unwrap();
        assert_eq!((inputs, outputs), (vec!["x".to_string()], vec!["y".to_string()]));
        assert!(graph_io(&model[..model.len() - 1]).unwrap_err().0.contains("truncated"));
        assert!(graph_io(b"not a model").is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(varint(&buf, &mut pos).unwrap(), v);
            assert_eq!(pos, buf.len());
        }
        assert_eq!(varint(&[0x80], &mut 0).unwrap_err().0, "truncated varint");
    }
}
