//! Pure tensor plumbing of the batcher: merge requests along the batch axis (padding the sequence
//! axis with each input's pad value) and split the model's outputs back, padding removed.

use std::collections::BTreeMap;

use crate::engines::{ElementType, EngineError, TensorData, TensorSpec};

/// Named tensors: one request's inputs or outputs.
pub type Tensors = Vec<(String, TensorData)>;

/// Where one request sits in a merged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// First row of the request in the batch.
    pub row: u32,
    /// Rows (axis 0) the request sent.
    pub rows: u32,
    /// Its own sequence length (axis 1) before padding.
    pub seq: u32,
}

/// The batch axis and sequence axis of a request: every input is `[rows, seq, ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub rows: u32,
    pub seq: u32,
    /// What must be equal for two requests to share a batch: names, types, trailing dims.
    pub key: Vec<(String, ElementType, Vec<u32>)>,
}

/// Checks a request against the model's inputs and returns its batch shape, or why it cannot be
/// batched (the request may still be valid to run alone).
pub fn batch_shape(inputs: &Tensors) -> Option<Shape> {
    let mut rows_seq = None;
    let mut key = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        // Byte strings have no fixed size to pad to: such requests run alone.
        tensor.ty.size()?;
        let [rows, seq, rest @ ..] = tensor.shape.as_slice() else { return None };
        match rows_seq {
            None => rows_seq = Some((*rows, *seq)),
            Some(rs) if rs != (*rows, *seq) => return None,
            Some(_) => {}
        }
        key.push((name.clone(), tensor.ty, rest.to_vec()));
    }
    key.sort_by(|a, b| a.0.cmp(&b.0));
    let (rows, seq) = rows_seq?;
    Some(Shape { rows, seq, key })
}

/// Merges requests that share a `Shape::key` into one set of inputs.
pub fn merge(
    requests: &[&Tensors],
    pad_values: &BTreeMap<String, f64>,
) -> Result<(Tensors, Vec<Slot>), EngineError> {
    let shapes: Vec<Shape> = requests
        .iter()
        .map(|r| batch_shape(r).ok_or_else(|| EngineError::invalid("request cannot be batched")))
        .collect::<Result<_, _>>()?;
    let total_rows: u32 = shapes.iter().map(|s| s.rows).sum();
    let max_seq = shapes.iter().map(|s| s.seq).max().unwrap_or(0);
    let mut slots = Vec::with_capacity(requests.len());
    let mut row = 0;
    for shape in &shapes {
        slots.push(Slot { row, rows: shape.rows, seq: shape.seq });
        row += shape.rows;
    }
    let mut merged = Vec::with_capacity(requests[0].len());
    for (name, first) in requests[0].iter() {
        let ty = first.ty;
        let trailing: usize = first.shape[2..].iter().map(|&d| d as usize).product();
        let element = ty.size().ok_or_else(|| EngineError::invalid("BYTES inputs are not batched"))?;
        let pad = pad_bytes(ty, pad_values.get(name).copied().unwrap_or(0.0));
        let step = trailing * element;
        let mut bytes = Vec::with_capacity(total_rows as usize * max_seq as usize * step);
        for (request, shape) in requests.iter().zip(&shapes) {
            let tensor = &request.iter().find(|(n, _)| n == name).expect("same key, same names").1;
            let row_bytes = shape.seq as usize * step;
            for r in 0..shape.rows as usize {
                bytes.extend_from_slice(&tensor.bytes[r * row_bytes..(r + 1) * row_bytes]);
                for _ in 0..(max_seq - shape.seq) as usize * trailing {
                    bytes.extend_from_slice(&pad);
                }
            }
        }
        let mut shape = vec![total_rows, max_seq];
        shape.extend_from_slice(&first.shape[2..]);
        merged.push((name.clone(), TensorData::new(shape, ty, bytes)));
    }
    Ok((merged, slots))
}

/// Cuts one request of `rows` rows into parts of at most `part_rows` rows each (axis 0 of every
/// input), in order, without copying.
pub fn cut_rows(inputs: &Tensors, rows: u32, part_rows: u32) -> Vec<Tensors> {
    let part_rows = part_rows.max(1);
    (0..rows)
        .step_by(part_rows as usize)
        .map(|first| {
            let count = part_rows.min(rows - first);
            inputs
                .iter()
                .map(|(name, tensor)| {
                    let row_bytes = tensor.bytes.len() / rows as usize;
                    let start = first as usize * row_bytes;
                    let bytes = tensor.bytes.slice(start..start + count as usize * row_bytes);
                    let mut shape = tensor.shape.clone();
                    shape[0] = count;
                    (name.clone(), TensorData::new(shape, tensor.ty, bytes))
                })
                .collect()
        })
        .collect()
}

/// Joins the outputs of the parts of one request (`cut_rows`), each with its row count, along
/// axis 0, in order; an output whose axis 0 is not the part's rows is an error.
pub fn join_rows(parts: Vec<(u32, Tensors)>) -> Result<Tensors, EngineError> {
    let mismatch = |name: &str| {
        EngineError::Runtime(format!(
            "output {name} of a request run in parts has no batch axis matching its rows: it cannot be joined"
        ))
    };
    let mut joined: Vec<(String, Vec<u32>, crate::engines::ElementType, Vec<u8>)> = Vec::new();
    for (index, (rows, part)) in parts.into_iter().enumerate() {
        if index == 0 {
            for (name, tensor) in part {
                if tensor.shape.first() != Some(&rows) {
                    return Err(mismatch(&name));
                }
                joined.push((name, tensor.shape, tensor.ty, tensor.bytes.to_vec()));
            }
            continue;
        }
        for (name, shape, ty, bytes) in &mut joined {
            let tensor = part.iter().find(|(n, _)| n == name).map(|(_, t)| t);
            let Some(tensor) = tensor.filter(|t| t.ty == *ty && t.shape.get(1..) == shape.get(1..)) else {
                return Err(mismatch(name));
            };
            if tensor.shape.first() != Some(&rows) {
                return Err(mismatch(name));
            }
            shape[0] += rows;
            bytes.extend_from_slice(&tensor.bytes);
        }
    }
    Ok(joined.into_iter().map(|(name, shape, ty, bytes)| (name, TensorData::new(shape, ty, bytes))).collect())
}

/// Splits merged outputs back per request. Axis 0 is the batch axis; axis 1 is cut back to each
/// request's own length when the model declares it dynamic (a sequence axis).
pub fn split(outputs: Tensors, slots: &[Slot], specs: &[TensorSpec]) -> Result<Vec<Tensors>, EngineError> {
    let total_rows: u32 = slots.iter().map(|s| s.rows).sum();
    let max_seq = slots.iter().map(|s| s.seq).max().unwrap_or(0);
    let mut per_request: Vec<Tensors> = vec![Vec::with_capacity(outputs.len()); slots.len()];
    for (name, tensor) in outputs {
        if tensor.shape.first() != Some(&total_rows) {
            return Err(EngineError::Runtime(format!(
                "output {name:?} has shape {:?}, without the batch axis; disable batching for this model",
                tensor.shape
            )));
        }
        let declared = specs.iter().find(|s| s.name == name).map(|s| s.shape.as_slice()).unwrap_or(&[]);
        let has_seq_axis =
            tensor.shape.len() >= 2 && declared.get(1) == Some(&-1) && tensor.shape[1] == max_seq;
        let Some(element) = tensor.ty.size() else {
            per_request_strings(&name, &tensor, slots, has_seq_axis, &mut per_request)?;
            continue;
        };
        let row_elements: usize = tensor.shape[1..].iter().map(|&d| d as usize).product();
        let row_bytes = row_elements * element;
        for (slot, out) in slots.iter().zip(per_request.iter_mut()) {
            let mut shape = tensor.shape.clone();
            shape[0] = slot.rows;
            let start = slot.row as usize * row_bytes;
            let bytes = if has_seq_axis && slot.seq != max_seq {
                // Padding cut off the end of each row: the rows are copied together.
                let step = tensor.shape[2..].iter().map(|&d| d as usize).product::<usize>() * element;
                shape[1] = slot.seq;
                let kept = slot.seq as usize * step;
                let mut bytes = Vec::with_capacity(slot.rows as usize * kept);
                for r in 0..slot.rows as usize {
                    bytes.extend_from_slice(&tensor.bytes[start + r * row_bytes..][..kept]);
                }
                bytes.into()
            } else {
                // The request's rows are one run of the batch's bytes: shared, not copied.
                tensor.bytes.slice(start..start + slot.rows as usize * row_bytes)
            };
            out.push((name.clone(), TensorData { shape, ty: tensor.ty, bytes }));
        }
    }
    Ok(per_request)
}

/// Splits a BYTES output by rows: each request's elements are one run of the batch's bytes
/// (shared), unless padding is cut off its rows (copied).
fn per_request_strings(
    name: &str,
    tensor: &TensorData,
    slots: &[Slot],
    has_seq_axis: bool,
    per_request: &mut [Tensors],
) -> Result<(), EngineError> {
    let corrupt = |e: String| EngineError::Runtime(format!("output {name:?}: {e}"));
    // Where each element starts, and the end.
    let mut offsets = Vec::new();
    let mut at = 0usize;
    for element in edgeinfer_tensor::byte_strings(&tensor.bytes).map_err(|e| corrupt(e.0))? {
        offsets.push(at);
        at += 4 + element.len();
    }
    offsets.push(at);
    let row_elements: usize = tensor.shape[1..].iter().map(|&d| d as usize).product();
    if offsets.len() - 1 != tensor.shape[0] as usize * row_elements {
        return Err(corrupt(format!("{} elements for shape {:?}", offsets.len() - 1, tensor.shape)));
    }
    for (slot, out) in slots.iter().zip(per_request.iter_mut()) {
        let mut shape = tensor.shape.clone();
        shape[0] = slot.rows;
        let first = slot.row as usize * row_elements;
        let bytes = if has_seq_axis && slot.seq != tensor.shape[1] {
            let step: usize = tensor.shape[2..].iter().map(|&d| d as usize).product();
            shape[1] = slot.seq;
            let mut bytes = Vec::new();
            for r in 0..slot.rows as usize {
                let start = first + r * row_elements;
                bytes.extend_from_slice(
                    &tensor.bytes[offsets[start]..offsets[start + slot.seq as usize * step]],
                );
            }
            bytes.into()
        } else {
            let end = first + slot.rows as usize * row_elements;
            tensor.bytes.slice(offsets[first]..offsets[end])
        };
        out.push((name.to_string(), TensorData { shape, ty: ElementType::Bytes, bytes }));
    }
    Ok(())
}

/// One element of `value` as little-endian bytes of `ty`.
fn pad_bytes(ty: ElementType, value: f64) -> Vec<u8> {
    match ty {
        ElementType::F32 => (value as f32).to_le_bytes().to_vec(),
        ElementType::F64 => value.to_le_bytes().to_vec(),
        ElementType::I32 => (value as i32).to_le_bytes().to_vec(),
        ElementType::I64 => (value as i64).to_le_bytes().to_vec(),
        ElementType::U8 => vec![value as u8],
        ElementType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        ElementType::BF16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        ElementType::Bytes => unreachable!("BYTES inputs are not batched"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(rows: &[&[i64]]) -> Tensors {
        let seq = rows[0].len() as u32;
        let bytes: Vec<u8> = rows.iter().flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes())).collect();
        vec![("ids".into(), TensorData::new(vec![rows.len() as u32, seq], ElementType::I64, bytes))]
    }

    fn values(t: &TensorData) -> Vec<i64> {
        t.bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn byte_string_inputs_run_alone_and_outputs_split_by_rows() {
        let strings = |s: &[&str]| edgeinfer_tensor::encode_byte_strings(s.iter().map(|s| s.as_bytes()));
        let text = TensorData::new(vec![1, 2], ElementType::Bytes, strings(&["a", "bc"]));
        assert!(batch_shape(&vec![("s".into(), text)]).is_none(), "BYTES inputs run alone");
        // A batch of 3 rows: request 0 has rows 0-1 at full length, request 1 row 2 of length 1.
        let out = TensorData::new(vec![3, 2], ElementType::Bytes, strings(&["a", "b", "cc", "", "d", "pad"]));
        let slots = [Slot { row: 0, rows: 2, seq: 2 }, Slot { row: 2, rows: 1, seq: 1 }];
        let spec = TensorSpec {
            name: "t".into(),
            ty: Some(ElementType::Bytes),
            shape: vec![-1, -1],
            symbols: vec![],
        };
        let split = split(vec![("t".into(), out.clone())], &slots, &[spec]).unwrap();
        assert_eq!(
            split[0][0].1,
            TensorData::new(vec![2, 2], ElementType::Bytes, strings(&["a", "b", "cc", ""]))
        );
        assert_eq!(
            split[1][0].1,
            TensorData::new(vec![1, 1], ElementType::Bytes, strings(&["d"])),
            "padding cut"
        );
        assert_eq!(
            split[0][0].1.bytes.as_ptr(),
            out.bytes.as_ptr(),
            "whole rows are a slice of the batch's bytes"
        );
    }

    #[test]
    fn half_floats_pad_with_their_own_encoding_of_the_pad_value() {
        assert_eq!(pad_bytes(ElementType::F16, 1.0), half::f16::ONE.to_le_bytes());
        assert_eq!(pad_bytes(ElementType::BF16, -2.0), half::bf16::from_f32(-2.0).to_le_bytes());
        assert_eq!(pad_bytes(ElementType::F16, 0.0), [0, 0]);
    }

    #[test]
    fn merge_pads_the_sequence_axis_with_the_pad_value() {
        let a = ids(&[&[1, 2, 3]]);
        let b = ids(&[&[4], &[5]]);
        let pads = BTreeMap::from([("ids".to_string(), 9.0)]);
        let (merged, slots) = merge(&[&a, &b], &pads).unwrap();
        assert_eq!(merged[0].1.shape, vec![3, 3]);
        assert_eq!(values(&merged[0].1), vec![1, 2, 3, 4, 9, 9, 5, 9, 9]);
        assert_eq!(slots, vec![Slot { row: 0, rows: 1, seq: 3 }, Slot { row: 1, rows: 2, seq: 1 }]);
    }

    #[test]
    fn a_request_cut_into_parts_joins_back_to_the_same_tensors() {
        let rows = 5u32;
        let ids: Vec<u8> = (0..rows * 3).flat_map(|v| (v as i64).to_le_bytes()).collect();
        let inputs: Tensors =
            vec![("ids".into(), TensorData::new(vec![rows, 3], ElementType::I64, ids.clone()))];
        let parts = cut_rows(&inputs, rows, 2);
        let shapes: Vec<Vec<u32>> = parts.iter().map(|p| p[0].1.shape.clone()).collect();
        assert_eq!(shapes, [vec![2, 3], vec![2, 3], vec![1, 3]]);
        let joined = join_rows(parts.into_iter().map(|p| (p[0].1.shape[0], p)).collect()).unwrap();
        assert_eq!((joined[0].1.shape.clone(), joined[0].1.bytes.to_vec()), (vec![rows, 3], ids));
        let tensor = |shape: Vec<u32>| {
            let bytes = vec![0u8; shape.iter().product::<u32>() as usize * 4];
            vec![("h".to_string(), TensorData::new(shape, ElementType::F32, bytes))]
        };
        assert!(
            join_rows(vec![(1, tensor(vec![1, 2])), (1, tensor(vec![1, 3]))]).is_err(),
            "trailing dims differ"
        );
        assert!(join_rows(vec![(2, tensor(vec![1, 4])), (2, tensor(vec![1, 4]))]).is_err(), "no batch axis");
        assert!(join_rows(vec![(1, tensor(vec![]))]).is_err(), "a scalar output");
    }

    #[test]
    fn split_removes_padding_on_dynamic_sequence_axes_only() {
        let slots = [Slot { row: 0, rows: 1, seq: 3 }, Slot { row: 1, rows: 1, seq: 1 }];
        let i64s = |v: [i64; 6]| v.map(i64::to_le_bytes).concat();
        let hidden = TensorData::new(vec![2, 3], ElementType::I64, i64s([1, 2, 3, 4, -1, -1]));
        let fixed = TensorData::new(vec![2, 3], ElementType::I64, i64s([7, 7, 7, 8, 8, 8]));
        let specs = [
            TensorSpec {
                name: "hidden".into(),
                ty: Some(ElementType::I64),
                shape: vec![-1, -1],
                symbols: vec![],
            },
            TensorSpec {
                name: "logits".into(),
                ty: Some(ElementType::I64),
                shape: vec![-1, 3],
                symbols: vec![],
            },
        ];
        let out = split(vec![("hidden".into(), hidden), ("logits".into(), fixed)], &slots, &specs).unwrap();
        assert_eq!(out[0][0].1.shape, vec![1, 3]);
        assert_eq!(values(&out[0][0].1), vec![1, 2, 3]);
        assert_eq!(out[1][0].1.shape, vec![1, 1]);
        assert_eq!(values(&out[1][0].1), vec![4]);
        assert_eq!(values(&out[1][1].1), vec![8, 8, 8], "a fixed axis is not cut");
    }

    #[test]
    fn shapes_that_cannot_share_a_batch() {
        assert!(batch_shape(&ids(&[&[1, 2]])).is_some());
        let mut mismatched = ids(&[&[1, 2]]);
        mismatched.push(("mask".into(), TensorData::new(vec![1, 3], ElementType::I64, vec![0; 24])));
        assert!(batch_shape(&mismatched).is_none(), "inputs disagree on the sequence length");
        let scalar = vec![("x".into(), TensorData::new(vec![4], ElementType::F32, vec![0; 16]))];
        assert!(batch_shape(&scalar).is_none(), "rank 1 has no sequence axis");
    }
}
