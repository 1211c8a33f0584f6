//! Bakes new weights into an ONNX model's initializers, for a standalone adapted inference model
//! that any ONNX Runtime (or other ONNX consumer) runs without asfda.
//!
//! The protobuf walker of `crate::onnx_proto` instead of an ONNX dependency: only three
//! messages are touched, everything else is copied byte for byte.
//! - `ModelProto.graph` is field 7; `GraphProto.initializer` is field 5 (a `TensorProto`);
//! - `TensorProto`: dims 1 (int64, packed or not), data_type 2 (1 = FLOAT), float_data 4,
//!   name 8, raw_data 9, external_data 13, data_location 14 (1 = EXTERNAL).
//!
//! A replaced initializer keeps every field except its data (float_data / raw_data), and gets
//! the new values as little-endian `raw_data` appended at the end (field order does not matter
//! to protobuf parsers).

use std::collections::HashMap;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::onnx_proto::{
    fields, put_len_field, varint, DecodeError, GRAPH_INITIALIZER, MODEL_GRAPH, TENSOR_NAME, WIRE_LEN, WIRE_VARINT,
};

fn corrupt(what: &str) -> Error {
    DecodeError(what.to_string()).into()
}

/// `model` (the bytes of an ONNX ModelProto) with the initializers named in `weights` replaced.
/// Every name must be a FLOAT initializer of the main graph with the same shape, stored inside
/// the model (not as external data).
pub fn bake_weights(model: &[u8], weights: &[(&str, &ArrayD<f32>)]) -> Result<Vec<u8>> {
    let wanted: HashMap<&str, &ArrayD<f32>> = weights.iter().copied().collect();
    let mut found = Vec::new();
    let mut out = Vec::with_capacity(model.len());
    let mut graphs = 0;
    for f in fields(model)? {
        if f.number == MODEL_GRAPH && f.wire == WIRE_LEN {
            graphs += 1;
            let graph = rewrite_graph(f.payload, &wanted, &mut found)?;
            put_len_field(&mut out, MODEL_GRAPH, &graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if graphs != 1 {
        return Err(corrupt(&format!("expected one graph (field 7), found {graphs}")));
    }
    if let Some(missing) = weights.iter().find(|(n, _)| !found.iter().any(|f| f == n)) {
        return Err(Error::invalid_argument(format!(
            "'{}' is not an initializer of the model's main graph, so it cannot be replaced",
            missing.0
        )));
    }
    Ok(out)
}

fn rewrite_graph(graph: &[u8], wanted: &HashMap<&str, &ArrayD<f32>>, found: &mut Vec<String>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(graph.len());
    for f in fields(graph)? {
        if f.number == GRAPH_INITIALIZER && f.wire == WIRE_LEN {
            match rewrite_tensor(f.payload, wanted)? {
                Some((name, tensor)) => {
                    found.push(name);
                    put_len_field(&mut out, GRAPH_INITIALIZER, &tensor);
                }
                None => out.extend_from_slice(f.raw),
            }
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

/// The new TensorProto bytes if this initializer is one to replace.
fn rewrite_tensor(tensor: &[u8], wanted: &HashMap<&str, &ArrayD<f32>>) -> Result<Option<(String, Vec<u8>)>> {
    let parsed = fields(tensor)?;
    let Some(name) = parsed.iter().find(|f| f.number == TENSOR_NAME && f.wire == WIRE_LEN) else { return Ok(None) };
    let name = std::str::from_utf8(name.payload).map_err(|_| corrupt("initializer name is not UTF-8"))?;
    let Some(value) = wanted.get(name) else { return Ok(None) };
    let mut dims = Vec::new();
    for f in parsed.iter().filter(|f| f.number == 1) {
        if f.wire == WIRE_VARINT {
            dims.push(f.value as usize);
        } else {
            let mut pos = 0;
            while pos < f.payload.len() {
                dims.push(varint(f.payload, &mut pos)? as usize);
            }
        }
    }
    let data_type = parsed.iter().find(|f| f.number == 2 && f.wire == WIRE_VARINT).map_or(0, |f| f.value);
    if data_type != 1 {
        return Err(Error::unsupported(format!("initializer '{name}' has ONNX data type {data_type}, not FLOAT (1)")));
    }
    if parsed.iter().any(|f| f.number == 14 && f.value == 1) {
        return Err(Error::unsupported(format!("initializer '{name}' is stored as external data")));
    }
    if dims != value.shape() {
        return Err(Error::invalid_argument(format!(
            "weight '{name}' has shape {:?}; the model's initializer is {dims:?}",
            value.shape()
        )));
    }
    let mut out = Vec::with_capacity(tensor.len());
    for f in &parsed {
        if f.number != 4 && f.number != 9 {
            out.extend_from_slice(f.raw);
        }
    }
    let raw: Vec<u8> = value.iter().flat_map(|v| v.to_le_bytes()).collect();
    put_len_field(&mut out, 9, &raw);
    Ok(Some((name.to_string(), out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::onnx_proto::put_varint;

    /// A hand-built ModelProto: ir_version, a graph with one FLOAT initializer "w" [2] in
    /// float_data and one untouched initializer "b".
    fn model() -> Vec<u8> {
        let tensor = |name: &str, data: &[f32]| {
            let mut t = Vec::new();
            put_varint(&mut t, 1 << 3);
            put_varint(&mut t, data.len() as u64);
            put_varint(&mut t, 2 << 3);
            put_varint(&mut t, 1);
            let floats: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            put_len_field(&mut t, 4, &floats);
            put_len_field(&mut t, 8, name.as_bytes());
            t
        };
        let mut graph = Vec::new();
        put_len_field(&mut graph, 1, b"node-bytes");
        put_len_field(&mut graph, 5, &tensor("w", &[1.0, 2.0]));
        put_len_field(&mut graph, 5, &tensor("b", &[3.0]));
        let mut m = Vec::new();
        put_varint(&mut m, 1 << 3);
        put_varint(&mut m, 8);
        put_len_field(&mut m, 7, &graph);
        m
    }

    #[test]
    fn replaces_named_initializer_and_keeps_the_rest() {
        let w = ArrayD::from_shape_vec(vec![2], vec![5.0f32, -6.0]).unwrap();
        let out = bake_weights(&model(), &[("w", &w)]).unwrap();
        let top = fields(&out).unwrap();
        assert_eq!(top[0].number, 1);
        let graph = fields(top[1].payload).unwrap();
        assert_eq!(graph[0].payload, b"node-bytes");
        let t = fields(graph[1].payload).unwrap();
        assert!(t.iter().all(|f| f.number != 4), "old float_data must go");
        let raw = t.iter().find(|f| f.number == 9).unwrap().payload;
        assert_eq!(raw, [5.0f32.to_le_bytes(), (-6.0f32).to_le_bytes()].concat());
        assert_eq!(graph[2].raw, fields(fields(&model()).unwrap()[1].payload).unwrap()[2].raw);
    }

    #[test]
    fn rejects_unknown_names_wrong_shapes_and_garbage() {
        let w = ArrayD::from_shape_vec(vec![3], vec![0.0f32; 3]).unwrap();
        assert_eq!(bake_weights(&model(), &[("w", &w)]).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(bake_weights(&model(), &[("nope", &w)]).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(bake_weights(&[0x3a, 0xff], &[]).unwrap_err().kind(), ErrorKind::Format);
    }
}
