//! The Open Inference Protocol (KServe v2) `infer` call: requests and responses both ways, in JSON
//! and with the binary tensor data extension. JSON tensor data goes straight between text and
//! little-endian bytes, with no JSON value tree in between; flat and nested (row-major) `data` are
//! both accepted. Binary tensors follow the JSON header (whose length the
//! `Inference-Header-Content-Length` HTTP header gives) in input order, each
//! `parameters.binary_data_size` bytes long; a request's binary inputs are views of its body.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ElementType, TensorData, TensorError};

/// The HTTP header that gives the length of the JSON header of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded `POST /v2/models/{name}/infer` body.
#[derive(Debug)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// Named input tensors, in request order.
    pub inputs: Vec<(String, TensorData)>,
    /// The outputs asked for by name; `None` asks for all.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// The request's `binary_data_output`: outputs that do not say otherwise come back binary.
    pub binary_data_output: bool,
}

/// An output asked for by name.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: OutputParameters,
}

/// The parameters of a requested output that the protocol defines.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct OutputParameters {
    /// Whether the output comes back in the binary section; the request's default when absent.
    pub binary_data: Option<bool>,
    /// Triton's classification extension (top-k labels): refused, the models here have no labels.
    #[serde(default)]
    pub classification: u64,
    /// Triton's shared-memory extension: refused (the data travels in the body).
    #[serde(default)]
    shared_memory_region: Option<de::IgnoredAny>,
}

impl InferRequest {
    /// Whether output `name` goes into the binary section of the response.
    pub fn binary_output(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .flatten()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.binary_data)
            .unwrap_or(self.binary_data_output)
    }

    /// Whether output `name` is in the response: asked for by name, or every one when none is.
    pub fn wants(&self, name: &str) -> bool {
        self.outputs.as_ref().is_none_or(|outputs| outputs.iter().any(|o| o.name == name))
    }
}

/// Deepest nesting of `data` arrays accepted.
const MAX_DEPTH: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestIn<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: RequestParameters,
    #[serde(borrow)]
    inputs: Vec<StrictTensorIn<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

/// Request parameters the protocol defines; others (`priority`, `timeout`, ...) are accepted.
#[derive(Default, Deserialize)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: bool,
}

/// A tensor as it arrives: JSON `data`, or `binary_data_size` bytes of the binary section.
/// Responses are read by the same type (servers add fields of their own, which are skipped there).
#[derive(Deserialize)]
struct TensorIn<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: TensorParameters,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Default, Deserialize)]
struct TensorParameters {
    binary_data_size: Option<u64>,
    /// Triton's shared-memory extension: refused (the data travels in the body).
    shared_memory_region: Option<de::IgnoredAny>,
}

/// Inputs are read strictly: a misspelt field is an error, not an ignored tensor.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictTensorIn<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: TensorParameters,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

impl<'a> From<StrictTensorIn<'a>> for TensorIn<'a> {
    fn from(t: StrictTensorIn<'a>) -> TensorIn<'a> {
        TensorIn {
            name: t.name,
            shape: t.shape,
            datatype: t.datatype,
            parameters: t.parameters,
            data: t.data,
        }
    }
}

/// A response's outputs, read leniently: servers add fields of their own.
#[derive(Deserialize)]
struct ResponseIn<'a> {
    #[serde(borrow)]
    outputs: Vec<TensorIn<'a>>,
}

/// The JSON header of a body and what follows it; `header_length` is the
/// `Inference-Header-Content-Length` header's value, absent for an all-JSON body.
fn split(body: &Bytes, header_length: Option<usize>) -> Result<(&[u8], Binary), TensorError> {
    match header_length {
        None => Ok((body, Binary { rest: Bytes::new(), expected: false })),
        Some(length) if length > body.len() => Err(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )
        .into()),
        Some(length) => Ok((&body[..length], Binary { rest: body.slice(length..), expected: true })),
    }
}

/// The binary section not yet taken by a tensor.
struct Binary {
    rest: Bytes,
    /// Whether the body has a binary section at all.
    expected: bool,
}

impl Binary {
    /// The next `size` bytes, for tensor `name`.
    fn take(&mut self, role: &str, name: &str, size: u64) -> Result<Bytes, TensorError> {
        if !self.expected {
            return Err(format!(
                "{role} {name:?} has binary_data_size but the request has no Inference-Header-Content-Length header"
            ).into());
        }
        let available = self.rest.len();
        match usize::try_from(size).ok().filter(|&size| size <= available) {
            Some(size) => Ok(self.rest.split_to(size)),
            None => Err(format!(
                "{role} {name:?}: binary_data_size {size} is past the end of the body ({available} bytes left)"
            ).into()),
        }
    }

    /// Fails when bytes are left that no tensor claimed.
    fn finish(self) -> Result<(), TensorError> {
        match self.rest.len() {
            0 => Ok(()),
            left => {
                Err(format!("{left} bytes of binary data follow the last tensor's binary_data_size").into())
            }
        }
    }
}

/// Decodes an inference request, JSON or with binary tensors (`header_length` from the
/// `Inference-Header-Content-Length` header); the error says which input is wrong and how.
pub fn decode_request(body: &Bytes, header_length: Option<usize>) -> Result<InferRequest, TensorError> {
    let (json, mut binary) = split(body, header_length)?;
    let request: RequestIn =
        serde_json::from_slice(json).map_err(|e| format!("invalid inference request: {e}"))?;
    let inputs = request
        .inputs
        .into_iter()
        .map(|t| {
            let t = TensorIn::from(t);
            let tensor = decode_tensor("input", &t, &mut binary)?;
            Ok((t.name, tensor))
        })
        .collect::<Result<_, TensorError>>()?;
    binary.finish()?;
    if let Some(output) = request.outputs.iter().flatten().find(|o| o.parameters.classification != 0) {
        return Err(format!(
            "output {:?}: the classification extension is not supported; ask for the tensor",
            output.name
        )
        .into());
    }
    if let Some(output) =
        request.outputs.iter().flatten().find(|o| o.parameters.shared_memory_region.is_some())
    {
        return Err(format!(
            "output {:?}: the shared memory extension is not supported; the answer carries the data",
            output.name
        )
        .into());
    }
    Ok(InferRequest {
        id: request.id,
        inputs,
        outputs: request.outputs,
        binary_data_output: request.parameters.binary_data_output,
    })
}

/// Decodes the outputs of an inference response, JSON or with binary tensors.
pub fn decode_response(
    body: &Bytes,
    header_length: Option<usize>,
) -> Result<Vec<(String, TensorData)>, TensorError> {
    let (json, mut binary) = split(body, header_length)?;
    let response: ResponseIn = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let outputs = response
        .outputs
        .into_iter()
        .map(|t| {
            let tensor = decode_tensor("output", &t, &mut binary)?;
            Ok((t.name, tensor))
        })
        .collect::<Result<_, TensorError>>()?;
    binary.finish()?;
    Ok(outputs)
}

/// Encodes an inference request over `inputs` in JSON, asking for the `outputs` named (every
/// output when none is); fails on a tensor whose bytes do not fit its shape.
pub fn encode_request(inputs: &[(&str, &TensorData)], outputs: &[String]) -> Result<Vec<u8>, TensorError> {
    for (name, tensor) in inputs {
        tensor.validate().map_err(|e| format!("input {name:?}: {e}"))?;
    }
    #[derive(Serialize)]
    struct OutputOut<'a> {
        name: &'a str,
    }
    #[derive(Serialize)]
    struct RequestOut<'a> {
        inputs: Vec<TensorJson<'a>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<OutputOut<'a>>,
    }
    let inputs = inputs.iter().map(|(name, tensor)| TensorJson::new(name, tensor, false)).collect();
    let outputs = outputs.iter().map(|name| OutputOut { name }).collect();
    Ok(serde_json::to_vec(&RequestOut { inputs, outputs }).expect("tensors serialise"))
}

/// An encoded response body: the JSON header, then the binary outputs' bytes if any.
#[derive(Debug)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    /// The `Inference-Header-Content-Length` to send: `Some` when binary tensors follow the JSON.
    pub header_length: Option<usize>,
}

/// Encodes an inference response of model `model_name` (tensors checked by whoever made them);
/// outputs flagged `true` go into the binary section.
pub fn encode_response(
    model_name: &str,
    id: Option<&str>,
    outputs: &[(&str, &TensorData, bool)],
) -> EncodedResponse {
    #[derive(Serialize)]
    struct ResponseOut<'a> {
        model_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<TensorJson<'a>>,
    }
    let json: Vec<TensorJson> =
        outputs.iter().map(|&(name, tensor, binary)| TensorJson::new(name, tensor, binary)).collect();
    let mut body =
        serde_json::to_vec(&ResponseOut { model_name, id, outputs: json }).expect("tensors serialise");
    let binary: Vec<&TensorData> = outputs.iter().filter(|o| o.2).map(|o| o.1).collect();
    if binary.is_empty() {
        return EncodedResponse { body, header_length: None };
    }
    let header_length = body.len();
    body.reserve_exact(binary.iter().map(|t| t.bytes.len()).sum());
    for tensor in binary {
        body.extend_from_slice(&tensor.bytes);
    }
    EncodedResponse { body, header_length: Some(header_length) }
}

/// A tensor as the protocol writes it: `data` in JSON, or its size when its bytes are binary.
#[derive(Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u32],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Elements<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

impl<'a> TensorJson<'a> {
    fn new(name: &'a str, tensor: &'a TensorData, binary: bool) -> TensorJson<'a> {
        let (parameters, data) = match binary {
            true => (Some(BinarySize { binary_data_size: tensor.bytes.len() }), None),
            false => (None, Some(Elements(tensor))),
        };
        TensorJson { name, datatype: tensor.ty.datatype(), shape: &tensor.shape, parameters, data }
    }
}

/// A tensor's elements as a flat JSON array of numbers (half floats widened to `f32`), or of
/// strings for BYTES (bytes that are not UTF-8 written with U+FFFD: binary data keeps them).
struct Elements<'a>(&'a TensorData);

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let Some(size) = tensor.ty.size() else {
            // Well formed: whoever made the tensor validated it.
            let elements = crate::byte_strings(&tensor.bytes).unwrap_or_default();
            let mut seq = serializer.serialize_seq(Some(elements.len()))?;
            for element in elements {
                seq.serialize_element(&String::from_utf8_lossy(element))?;
            }
            return seq.end();
        };
        let mut seq = serializer.serialize_seq(Some(tensor.bytes.len() / size))?;
        for c in tensor.bytes.chunks_exact(size) {
            match tensor.ty {
                ElementType::F32 => seq.serialize_element(&f32::from_le_bytes([c[0], c[1], c[2], c[3]]))?,
                ElementType::F64 => {
                    seq.serialize_element(&f64::from_le_bytes(c.try_into().expect("8 bytes")))?
                }
                ElementType::I64 => {
                    seq.serialize_element(&i64::from_le_bytes(c.try_into().expect("8 bytes")))?
                }
                ElementType::I32 => seq.serialize_element(&i32::from_le_bytes([c[0], c[1], c[2], c[3]]))?,
                ElementType::U8 => seq.serialize_element(&c[0])?,
                ElementType::F16 => {
                    seq.serialize_element(&half::f16::from_le_bytes([c[0], c[1]]).to_f32())?
                }
                ElementType::BF16 => {
                    seq.serialize_element(&half::bf16::from_le_bytes([c[0], c[1]]).to_f32())?
                }
                ElementType::Bytes => unreachable!("BYTES has no fixed size"),
            }
        }
        seq.end()
    }
}

/// A tensor's datatype and shape as a request states them (JSON's unsigned dimensions, gRPC's
/// signed ones), checked: its element type, its shape and its element count. The error names
/// `role` and `name`.
pub fn tensor_header<D: Copy + Into<i128> + fmt::Display>(
    role: &str,
    name: &str,
    datatype: &str,
    dims: &[D],
) -> Result<(ElementType, Vec<u32>, usize), TensorError> {
    let ty = ElementType::from_datatype(datatype).ok_or_else(|| {
        let known: Vec<&str> = ElementType::ALL.iter().map(|t| t.datatype()).collect();
        format!("{role} {name:?}: datatype {datatype:?} is not supported ({} are)", known.join(", "))
    })?;
    let shape: Vec<u32> = dims
        .iter()
        .map(|&d| match u32::try_from(d.into()) {
            Ok(size) => Ok(size),
            Err(_) if d.into() < 0 => {
                Err(TensorError::from(format!("{role} {name:?}: dimension {d} is not a size")))
            }
            Err(_) => Err(TensorError::from(format!("{role} {name:?}: dimension {d} is too large"))),
        })
        .collect::<Result<_, TensorError>>()?;
    let elements = TensorData::elements(&shape)
        .filter(|n| n.checked_mul(ty.size().unwrap_or(4)).is_some())
        .ok_or_else(|| format!("{role} {name:?}: shape {shape:?} is too large"))?;
    Ok((ty, shape, elements))
}

/// Turns one tensor into bytes: its JSON `data`, or its part of the binary section.
fn decode_tensor(role: &str, tensor: &TensorIn, binary: &mut Binary) -> Result<TensorData, TensorError> {
    let name = &tensor.name;
    let datatype = &tensor.datatype;
    let (ty, shape, expected) = tensor_header(role, name, datatype, &tensor.shape)?;
    if tensor.parameters.shared_memory_region.is_some() {
        return Err(
            format!("{role} {name:?}: the shared memory extension is not supported; send the data").into()
        );
    }
    let data = match (tensor.data, tensor.parameters.binary_data_size) {
        (Some(data), None) => data,
        (None, Some(size)) => {
            let bytes = binary.take(role, name, size)?;
            let Some(element) = ty.size() else {
                let tensor = TensorData::new(shape, ty, bytes);
                tensor.validate().map_err(|e| format!("{role} {name:?}: {e}"))?;
                return Ok(tensor);
            };
            if bytes.len() != expected * element {
                return Err(format!(
                    "{role} {name:?}: shape {shape:?} of {datatype} needs {} bytes, binary_data_size is {size}",
                    expected * element
                ).into());
            }
            return Ok(TensorData::new(shape, ty, bytes));
        }
        (Some(_), Some(_)) => {
            return Err(format!("{role} {name:?} has both data and binary_data_size").into());
        }
        (None, None) => return Err(format!("{role} {name:?} has neither data nor binary_data_size").into()),
    };
    // A lying shape must not reserve memory: no more than the text can hold (≥ 2 bytes a value).
    let capacity = match ty.size() {
        Some(size) => expected.min(data.get().len() / 2 + 1) * size,
        // Each string's text is at least as long as its bytes; 4 more for its length.
        None => data.get().len() + 4 * expected.min(data.get().len() / 2 + 1),
    };
    let mut sink = Sink { ty, bytes: Vec::with_capacity(capacity), values: 0, expected };
    let mut reader = serde_json::Deserializer::from_str(data.get());
    Flatten { sink: &mut sink, depth: 0 }
        .deserialize(&mut reader)
        .map_err(|e| format!("{role} {name:?}: {e}"))?;
    if sink.values != expected {
        return Err(format!(
            "{role} {name:?}: shape {shape:?} needs {expected} values, data has {}",
            sink.values
        )
        .into());
    }
    Ok(TensorData::new(shape, ty, sink.bytes))
}

/// Where decoded values go.
struct Sink {
    ty: ElementType,
    bytes: Vec<u8>,
    values: usize,
    expected: usize,
}

impl Sink {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        if self.values == self.expected {
            return Err(E::custom(format!("data has more than the shape's {} values", self.expected)));
        }
        self.values += 1;
        Ok(())
    }

    fn integer<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        self.count()?;
        if self.ty == ElementType::Bytes {
            return Err(self.refuse(v));
        }
        let out_of_range =
            |min: i128, max: i128| E::custom(format!("{v} is not an integer in [{min}, {max}]"));
        match self.ty {
            ElementType::I64 => {
                let v = i64::try_from(v).map_err(|_| out_of_range(i64::MIN.into(), i64::MAX.into()))?;
                self.bytes.extend(v.to_le_bytes());
            }
            ElementType::I32 => {
                let v = i32::try_from(v).map_err(|_| out_of_range(i32::MIN.into(), i32::MAX.into()))?;
                self.bytes.extend(v.to_le_bytes());
            }
            ElementType::U8 => self.bytes.push(u8::try_from(v).map_err(|_| out_of_range(0, 255))?),
            _ => self.push_float(v as f64),
        }
        Ok(())
    }

    fn float<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        self.count()?;
        if self.ty == ElementType::Bytes {
            return Err(self.refuse(v));
        }
        if self.integer_bounds().is_some() {
            return Err(self.refuse(v));
        }
        self.push_float(v);
        Ok(())
    }

    /// The range of an integer type; `None` for floats.
    fn integer_bounds(&self) -> Option<(i128, i128)> {
        match self.ty {
            ElementType::I64 => Some((i64::MIN.into(), i64::MAX.into())),
            ElementType::I32 => Some((i32::MIN.into(), i32::MAX.into())),
            ElementType::U8 => Some((0, 255)),
            _ => None,
        }
    }

    /// Why `shown` cannot be an element of this tensor.
    fn refuse<E: de::Error>(&self, shown: impl fmt::Display) -> E {
        match self.integer_bounds() {
            _ if self.ty == ElementType::Bytes => E::custom(format!("{shown} is not a string")),
            Some((min, max)) => E::custom(format!("{shown} is not an integer in [{min}, {max}]")),
            None => E::custom(format!("{shown} is not a number")),
        }
    }

    /// One BYTES element: the string's UTF-8 bytes after their length.
    fn string<E: de::Error>(&mut self, v: &str) -> Result<(), E> {
        self.count()?;
        if self.ty != ElementType::Bytes {
            return Err(self.refuse(format!("{v:?}")));
        }
        let length = u32::try_from(v.len()).map_err(|_| E::custom("a string over 4 GiB"))?;
        self.bytes.extend_from_slice(&length.to_le_bytes());
        self.bytes.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn push_float(&mut self, v: f64) {
        match self.ty {
            ElementType::F32 => self.bytes.extend((v as f32).to_le_bytes()),
            ElementType::F64 => self.bytes.extend(v.to_le_bytes()),
            ElementType::F16 => self.bytes.extend(half::f16::from_f64(v).to_le_bytes()),
            ElementType::BF16 => self.bytes.extend(half::bf16::from_f64(v).to_le_bytes()),
            ElementType::I64 | ElementType::I32 | ElementType::U8 | ElementType::Bytes => {
                unreachable!("integers and strings are checked first")
            }
        }
    }
}

/// Reads a number or nested arrays of numbers into a `Sink`, row-major.
struct Flatten<'s> {
    sink: &'s mut Sink,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers, in a flat or nested array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("data is nested too deeply"));
        }
        let Flatten { sink, depth } = self;
        while seq.next_element_seed(Flatten { sink: &mut *sink, depth: depth + 1 })?.is_some() {}
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.integer(v.into())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.integer(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.float(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.sink.string(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Err(self.sink.refuse(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.sink.refuse("null"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.sink.refuse("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(datatype: &str, shape: &str, data: &str) -> Result<InferRequest, String> {
        let body = format!(
            r#"{{"id": "7", "inputs": [{{"name": "x", "shape": {shape}, "datatype": "{datatype}", "data": {data}}}]}}"#
        );
        decode_request(&Bytes::from(body), None).map_err(|e| e.0)
    }

    fn values_i64(t: &TensorData) -> Vec<i64> {
        t.bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let flat = request("INT64", "[2, 2]", "[1, 2, 3, -4]").unwrap();
        let nested = request("INT64", "[2, 2]", "[[1, 2], [3, -4]]").unwrap();
        assert_eq!(flat.inputs, nested.inputs);
        assert_eq!(values_i64(&flat.inputs[0].1), [1, 2, 3, -4]);
        assert_eq!(flat.id.as_deref(), Some("7"));
        assert_eq!(flat.outputs, None);
    }

    #[test]
    fn bad_tensors_say_what_is_wrong() {
        let cases = [
            ("INT64", "[2, 2]", "[1, 2, 3]", "needs 4 values, data has 3"),
            ("INT64", "[1]", "[1, 2]", "more than the shape's 1 values"),
            ("INT64", "[1]", "[1.5]", "not an integer"),
            ("INT64", "[1]", "[\"1\"]", "\"1\" is not an integer in ["),
            ("UINT8", "[1]", "[256]", "[0, 255]"),
            ("INT32", "[1]", "[2147483648]", "not an integer in [-2147483648, 2147483647]"),
            ("BOOL", "[1]", "[true]", "not supported (FP16, FP32"),
            ("FP32", "[1]", "[\"a\"]", "\"a\" is not a number"),
            ("FP32", "[1]", "[null]", "null is not a number"),
            ("FP32", "[4294967296]", "[1]", "dimension 4294967296 is too large"),
            ("FP64", "[65536, 65536, 65536, 65536]", "[1]", "is too large"),
            ("FP32", "[1]", &format!("{}1{}", "[".repeat(17), "]".repeat(17)), "nested too deeply"),
        ];
        for (datatype, shape, data, expected) in cases {
            let e = request(datatype, shape, data).unwrap_err();
            assert!(e.starts_with("input \"x\": ") && e.contains(expected), "{datatype} {data}: {e}");
        }
        let e = decode_request(&Bytes::from_static(br#"{"inputs": [], "extra": 1}"#), None).unwrap_err().0;
        assert!(e.starts_with("invalid inference request: unknown field `extra`"), "{e}");
    }

    #[test]
    fn every_type_round_trips_through_request_and_response() {
        let tensors: Vec<(String, TensorData)> = vec![
            (
                "f32".into(),
                TensorData::new(
                    vec![3],
                    ElementType::F32,
                    [0.1f32, -2.5, 1e-7].map(f32::to_le_bytes).concat(),
                ),
            ),
            (
                "f64".into(),
                TensorData::new(vec![2], ElementType::F64, [0.1f64, -1e300].map(f64::to_le_bytes).concat()),
            ),
            (
                "i64".into(),
                TensorData::new(
                    vec![1, 2],
                    ElementType::I64,
                    [i64::MIN, i64::MAX].map(i64::to_le_bytes).concat(),
                ),
            ),
            (
                "i32".into(),
                TensorData::new(vec![2], ElementType::I32, [-7i32, 7].map(i32::to_le_bytes).concat()),
            ),
            ("u8".into(), TensorData::new(vec![2, 1], ElementType::U8, vec![0u8, 255])),
            (
                "f16".into(),
                TensorData::new(vec![1], ElementType::F16, half::f16::from_f32(1.5).to_le_bytes().to_vec()),
            ),
            (
                "bf16".into(),
                TensorData::new(
                    vec![1],
                    ElementType::BF16,
                    half::bf16::from_f32(-3.0).to_le_bytes().to_vec(),
                ),
            ),
        ];
        let named: Vec<(&str, &TensorData)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let request = decode_request(&encode_request(&named, &[]).unwrap().into(), None).unwrap();
        assert_eq!(request.inputs, tensors, "a request carries every type exactly");
        assert_eq!(request.outputs, None, "no outputs named: every output");
        let asked = decode_request(&encode_request(&named, &["bf16".into()]).unwrap().into(), None).unwrap();
        let names: Vec<String> = asked.outputs.unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["bf16"]);
        let json: Vec<(&str, &TensorData, bool)> = named.iter().map(|&(n, t)| (n, t, false)).collect();
        let response = encode_response("m", Some("id-1"), &json);
        assert_eq!(response.header_length, None);
        let response = Bytes::from(response.body);
        let answer: serde_json::Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(answer["model_name"], "m");
        assert_eq!(answer["id"], "id-1");
        assert_eq!(answer["outputs"][0]["datatype"], "FP32");
        assert_eq!(answer["outputs"][0]["data"][0], serde_json::json!(0.1), "f32 written shortest");
        assert_eq!(
            decode_response(&response, None).unwrap(),
            tensors,
            "a response carries every type exactly"
        );
        // Binary: every other output in the binary section, read back exactly.
        let mixed: Vec<(&str, &TensorData, bool)> =
            named.iter().enumerate().map(|(i, &(n, t))| (n, t, i % 2 == 0)).collect();
        let response = encode_response("m", None, &mixed);
        let header_length = response.header_length.expect("binary outputs follow the JSON");
        let header: serde_json::Value = serde_json::from_slice(&response.body[..header_length]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 12);
        assert!(header["outputs"][0].get("data").is_none());
        assert_eq!(header["outputs"][1]["data"][0], serde_json::json!(0.1));
        let binary_bytes: usize = mixed.iter().filter(|o| o.2).map(|o| o.1.bytes.len()).sum();
        assert_eq!(response.body.len(), header_length + binary_bytes);
        let decoded = decode_response(&Bytes::from(response.body), Some(header_length)).unwrap();
        assert_eq!(decoded, tensors);
    }

    #[test]
    fn bytes_tensors_travel_as_strings_in_json_and_length_prefixed_in_binary() {
        let request = request("BYTES", "[2, 1]", r#"[["héllo"], [""]]"#).unwrap();
        let expected = crate::encode_byte_strings(["héllo".as_bytes(), b""]);
        assert_eq!(request.inputs[0].1, TensorData::new(vec![2, 1], ElementType::Bytes, expected.clone()));
        for (data, wrong) in [("[1, \"a\"]", "1 is not a string"), ("[\"a\"]", "needs 2 values, data has 1")]
        {
            let e = self::request("BYTES", "[2]", data).unwrap_err();
            assert!(e.contains(wrong), "{data}: {e}");
        }
        let header = format!(
            r#"{{"inputs": [{{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {{"binary_data_size": {}}}}}]}}"#,
            expected.len()
        );
        let (body, length) = binary_request(&header, &[&expected]);
        let decoded = decode_request(&body, Some(length)).unwrap();
        assert_eq!(decoded.inputs[0].1.bytes, expected, "binary BYTES are the protocol's layout as is");
        let (body, length) = binary_request(&header.replace("[2]", "[3]"), &[&expected]);
        let e = decode_request(&body, Some(length)).unwrap_err().0;
        assert!(e.contains("needs 3 byte strings, got 2"), "{e}");
        let broken = [&expected[..expected.len() - 2], &[9, 9]].concat();
        let (body, length) = binary_request(&header, &[&broken]);
        let e = decode_request(&body, Some(length)).unwrap_err().0;
        assert!(e.contains("too few for its length") || e.contains("past the end"), "{e}");
        // Answers: strings in JSON, the layout in binary.
        let tensor = TensorData::new(vec![2], ElementType::Bytes, expected.clone());
        let json = encode_response("m", None, &[("s", &tensor, false)]);
        let answer: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(answer["outputs"][0]["data"], serde_json::json!(["héllo", ""]));
        assert_eq!(answer["outputs"][0]["datatype"], "BYTES");
        let binary = encode_response("m", None, &[("s", &tensor, true)]);
        let back = decode_response(&Bytes::from(binary.body), binary.header_length).unwrap();
        assert_eq!(back[0].1, tensor);
        assert_eq!(decode_response(&Bytes::from(json.body), None).unwrap()[0].1, tensor);
    }

    #[test]
    fn a_tensor_whose_bytes_do_not_fit_is_not_sent() {
        let bad = TensorData::new(vec![2], ElementType::I64, vec![0; 9]);
        let e = encode_request(&[("ids", &bad)], &[]).unwrap_err().0;
        assert!(e.contains("input \"ids\"") && e.contains("needs 16 bytes, got 9"), "{e}");
    }

    #[test]
    fn outputs_asked_for_by_name() {
        let body =
            br#"{"inputs": [], "outputs": [{"name": "logits"}, {"name": "pooled", "parameters": {}}]}"#;
        let request = decode_request(&Bytes::from_static(body), None).unwrap();
        let names: Vec<&str> = request.outputs.iter().flatten().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["logits", "pooled"]);
        assert!(request.wants("pooled") && !request.wants("other"));
        assert!(!request.binary_output("logits"), "JSON unless asked");
    }

    /// A request as tritonclient writes it: JSON header, then each binary input's bytes.
    fn binary_request(header: &str, binary: &[&[u8]]) -> (Bytes, usize) {
        let mut body = header.as_bytes().to_vec();
        for part in binary {
            body.extend_from_slice(part);
        }
        (Bytes::from(body), header.len())
    }

    #[test]
    fn binary_inputs_are_views_of_the_body() {
        let ids = [101i64, 2023, 102].map(i64::to_le_bytes).concat();
        let mask = [1i64, 1, 1].map(i64::to_le_bytes).concat();
        let header = r#"{"inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}},
            {"name": "token_type_ids", "shape": [1, 3], "datatype": "INT64", "data": [[0, 0, 0]]},
            {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}],
            "outputs": [{"name": "a", "parameters": {"binary_data": false}}, {"name": "b"}],
            "parameters": {"binary_data_output": true, "priority": 1}}"#;
        let (body, length) = binary_request(header, &[&ids, &mask]);
        let request = decode_request(&body, Some(length)).unwrap();
        let names: Vec<&str> = request.inputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["input_ids", "token_type_ids", "attention_mask"]);
        assert_eq!(values_i64(&request.inputs[0].1), [101, 2023, 102]);
        assert_eq!(values_i64(&request.inputs[1].1), [0, 0, 0]);
        assert_eq!(values_i64(&request.inputs[2].1), [1, 1, 1]);
        let start = body.as_ptr() as usize;
        let view = request.inputs[0].1.bytes.as_ptr() as usize;
        assert_eq!(view, start + length, "the binary input is the body's own bytes, not a copy");
        assert!(!request.binary_output("a"), "the output's own flag wins");
        assert!(request.binary_output("b"), "the request's binary_data_output is the default");
    }

    #[test]
    fn malformed_binary_requests_say_what_is_wrong() {
        let eight = 7i64.to_le_bytes();
        let input = |size: &str| {
            format!(
                r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "INT64", "parameters": {{"binary_data_size": {size}}}}}]}}"#
            )
        };
        // (JSON header, binary parts, Inference-Header-Content-Length if not the header's, error)
        type Case<'a> = (String, Vec<&'a [u8]>, Option<usize>, &'a str);
        let cases: Vec<Case> = vec![
            (input("8"), vec![&eight], Some(10_000), "Inference-Header-Content-Length is 10000 but the body has only"),
            (input("16"), vec![&eight], None, "past the end of the body (8 bytes left)"),
            (input("4"), vec![&eight], None, "needs 8 bytes, binary_data_size is 4"),
            (input("8"), vec![&eight, &eight], None, "8 bytes of binary data follow"),
            (input("-1"), vec![&eight], None, "invalid inference request"),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1], "parameters": {"binary_data_size": 8}}]}"#.into(),
                vec![&eight], None, "both data and binary_data_size",
            ),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64"}]}"#.into(),
                vec![], None, "neither data nor binary_data_size",
            ),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "STRING", "parameters": {"binary_data_size": 8}}]}"#.into(),
                vec![&eight], None, "datatype \"STRING\" is not supported",
            ),
            (
                r#"{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 3}}]}"#.into(),
                vec![], None, "classification extension is not supported",
            ),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "parameters": {"shared_memory_region": "r"}}]}"#.into(),
                vec![], None, "shared memory extension is not supported",
            ),
            (
                r#"{"inputs": [], "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8}}]}"#.into(),
                vec![], None, "shared memory extension is not supported",
            ),
        ];
        for (header, binary, length, expected) in cases {
            let (body, header_length) = binary_request(&header, &binary);
            let e = decode_request(&body, Some(length.unwrap_or(header_length))).unwrap_err().0;
            assert!(e.contains(expected), "{header}: {e}");
        }
        // binary_data_size in a body without the header: the bytes have nowhere to come from.
        let e = decode_request(&Bytes::from(input("8")), None).unwrap_err().0;
        assert!(e.contains("has no Inference-Header-Content-Length header"), "{e}");
    }
}
