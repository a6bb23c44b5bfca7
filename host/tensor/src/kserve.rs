//! The JSON codec of the Open Inference Protocol (KServe v2) `infer` call: requests and responses
//! both ways. Tensor data goes straight between JSON text and little-endian bytes, with no JSON
//! value tree in between; flat and nested (row-major) `data` are both accepted.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{ElementType, TensorData};

/// A decoded `POST /v2/models/{name}/infer` body.
#[derive(Debug)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// Named input tensors, in request order.
    pub inputs: Vec<(String, TensorData)>,
    /// The outputs asked for by name; `None` asks for all.
    pub outputs: Option<Vec<String>>,
}

/// Deepest nesting of `data` arrays accepted.
const MAX_DEPTH: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestIn<'a> {
    #[serde(default)]
    id: Option<String>,
    // Accepted as the protocol allows; none is acted on.
    #[serde(default, rename = "parameters")]
    _parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<TensorIn<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorIn<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default, rename = "parameters")]
    _parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default, rename = "parameters")]
    _parameters: Option<Map<String, Value>>,
}

/// A response's outputs, read leniently: servers add fields of their own.
#[derive(Deserialize)]
struct ResponseIn<'a> {
    #[serde(borrow)]
    outputs: Vec<TensorOut<'a>>,
}

#[derive(Deserialize)]
struct TensorOut<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Decodes an inference request; the error says which input is wrong and how.
pub fn decode_request(body: &[u8]) -> Result<InferRequest, String> {
    let request: RequestIn =
        serde_json::from_slice(body).map_err(|e| format!("invalid inference request: {e}"))?;
    let inputs = request
        .inputs
        .into_iter()
        .map(|t| {
            let tensor = decode_tensor("input", &t.name, &t.datatype, &t.shape, t.data)?;
            Ok((t.name, tensor))
        })
        .collect::<Result<_, String>>()?;
    let outputs = request.outputs.map(|o| o.into_iter().map(|o| o.name).collect());
    Ok(InferRequest { id: request.id, inputs, outputs })
}

/// Decodes the outputs of an inference response.
pub fn decode_response(body: &[u8]) -> Result<Vec<(String, TensorData)>, String> {
    let response: ResponseIn = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    response
        .outputs
        .into_iter()
        .map(|t| {
            let tensor = decode_tensor("output", &t.name, &t.datatype, &t.shape, t.data)?;
            Ok((t.name, tensor))
        })
        .collect()
}

/// Encodes an inference request over `inputs`; fails on a tensor whose bytes do not fit its shape.
pub fn encode_request(inputs: &[(&str, &TensorData)]) -> Result<Vec<u8>, String> {
    for (name, tensor) in inputs {
        tensor.validate().map_err(|e| format!("input {name:?}: {e}"))?;
    }
    #[derive(Serialize)]
    struct RequestOut<'a> {
        inputs: Vec<TensorJson<'a>>,
    }
    let inputs = inputs.iter().map(|(name, tensor)| TensorJson::new(name, tensor)).collect();
    Ok(serde_json::to_vec(&RequestOut { inputs }).expect("tensors serialise"))
}

/// Encodes an inference response of model `model_name` (tensors checked by whoever made them).
pub fn encode_response(model_name: &str, id: Option<&str>, outputs: &[(&str, &TensorData)]) -> Vec<u8> {
    #[derive(Serialize)]
    struct ResponseOut<'a> {
        model_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<TensorJson<'a>>,
    }
    let outputs = outputs.iter().map(|(name, tensor)| TensorJson::new(name, tensor)).collect();
    serde_json::to_vec(&ResponseOut { model_name, id, outputs }).expect("tensors serialise")
}

/// A tensor as the protocol writes it.
#[derive(Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u32],
    data: Elements<'a>,
}

impl<'a> TensorJson<'a> {
    fn new(name: &'a str, tensor: &'a TensorData) -> TensorJson<'a> {
        TensorJson { name, datatype: tensor.ty.datatype(), shape: &tensor.shape, data: Elements(tensor) }
    }
}

/// A tensor's elements as a flat JSON array of numbers (half floats widened to `f32`).
struct Elements<'a>(&'a TensorData);

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let size = tensor.ty.size();
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
            }
        }
        seq.end()
    }
}

/// Turns one JSON tensor into bytes, checking its datatype, shape and values.
fn decode_tensor(
    role: &str,
    name: &str,
    datatype: &str,
    shape: &[u64],
    data: &RawValue,
) -> Result<TensorData, String> {
    let ty = ElementType::from_datatype(datatype).ok_or_else(|| {
        let known: Vec<&str> = ElementType::ALL.iter().map(|t| t.datatype()).collect();
        format!("{role} {name:?}: datatype {datatype:?} is not supported ({} are)", known.join(", "))
    })?;
    let shape: Vec<u32> = shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("{role} {name:?}: dimension {d} is too large")))
        .collect::<Result<_, _>>()?;
    let expected = TensorData::elements(&shape)
        .filter(|n| n.checked_mul(ty.size()).is_some())
        .ok_or_else(|| format!("{role} {name:?}: shape {shape:?} is too large"))?;
    // A lying shape must not reserve memory: no more than the text can hold (≥ 2 bytes a value).
    let capacity = expected.min(data.get().len() / 2 + 1) * ty.size();
    let mut sink = Sink { ty, bytes: Vec::with_capacity(capacity), values: 0, expected };
    let mut reader = serde_json::Deserializer::from_str(data.get());
    Flatten { sink: &mut sink, depth: 0 }
        .deserialize(&mut reader)
        .map_err(|e| format!("{role} {name:?}: {e}"))?;
    if sink.values != expected {
        return Err(format!(
            "{role} {name:?}: shape {shape:?} needs {expected} values, data has {}",
            sink.values
        ));
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
            Some((min, max)) => E::custom(format!("{shown} is not an integer in [{min}, {max}]")),
            None => E::custom(format!("{shown} is not a number")),
        }
    }

    fn push_float(&mut self, v: f64) {
        match self.ty {
            ElementType::F32 => self.bytes.extend((v as f32).to_le_bytes()),
            ElementType::F64 => self.bytes.extend(v.to_le_bytes()),
            ElementType::F16 => self.bytes.extend(half::f16::from_f64(v).to_le_bytes()),
            ElementType::BF16 => self.bytes.extend(half::bf16::from_f64(v).to_le_bytes()),
            ElementType::I64 | ElementType::I32 | ElementType::U8 => {
                unreachable!("integers are checked first")
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
        Err(self.sink.refuse(format!("{v:?}")))
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
        decode_request(body.as_bytes())
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
        let e = decode_request(br#"{"inputs": [], "extra": 1}"#).unwrap_err();
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
        let request = decode_request(&encode_request(&named).unwrap()).unwrap();
        assert_eq!(request.inputs, tensors, "a request carries every type exactly");
        let response = encode_response("m", Some("id-1"), &named);
        let answer: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(answer["model_name"], "m");
        assert_eq!(answer["id"], "id-1");
        assert_eq!(answer["outputs"][0]["datatype"], "FP32");
        assert_eq!(answer["outputs"][0]["data"][0], serde_json::json!(0.1), "f32 written shortest");
        assert_eq!(decode_response(&response).unwrap(), tensors, "a response carries every type exactly");
    }

    #[test]
    fn a_tensor_whose_bytes_do_not_fit_is_not_sent() {
        let bad = TensorData::new(vec![2], ElementType::I64, vec![0; 9]);
        let e = encode_request(&[("ids", &bad)]).unwrap_err();
        assert!(e.contains("input \"ids\"") && e.contains("needs 16 bytes, got 9"), "{e}");
    }

    #[test]
    fn outputs_asked_for_by_name() {
        let body =
            br#"{"inputs": [], "outputs": [{"name": "logits"}, {"name": "pooled", "parameters": {}}]}"#;
        let request = decode_request(body).unwrap();
        assert_eq!(request.outputs, Some(vec!["logits".to_string(), "pooled".to_string()]));
    }
}
