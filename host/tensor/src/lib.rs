//! Tensors as edgeinfer moves them between components, the batcher, engines and the network:
//! dense, row-major, little-endian elements in shared [`Bytes`], so that handing a tensor on or
//! cutting a batch into requests does not copy it. [`kserve`] is the JSON codec of the Open
//! Inference Protocol, used by the host's KServe API and by the `nn-remote` component alike.

pub mod kserve;

use bytes::Bytes;

/// Tensor data, or a KServe message, that does not hold together: what is wrong, said for whoever
/// sent it (at the HTTP boundary, the request's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TensorError(pub String);

impl From<String> for TensorError {
    fn from(message: String) -> TensorError {
        TensorError(message)
    }
}

// Tensor bytes are the machine's own element layout, viewed in place by engines.
#[cfg(target_endian = "big")]
compile_error!("edgeinfer tensors are little-endian; big-endian targets are not supported");

/// Element types a tensor can carry: those of wasi:nn's `tensor-type`, and byte strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    F16,
    F32,
    F64,
    BF16,
    U8,
    I32,
    I64,
    /// Byte strings (text), of any length each: the tensor's bytes are its elements one after
    /// another, each after its length as a 4-byte little-endian integer (the Open Inference
    /// Protocol's layout of BYTES). wasi:nn cannot carry them; ONNX Runtime takes them as strings.
    Bytes,
}

/// The one table of element types: size (`None`: each element says its own) and the Open
/// Inference Protocol's datatype name.
const TABLE: [(ElementType, Option<usize>, &str); 8] = [
    (ElementType::F16, Some(2), "FP16"),
    (ElementType::F32, Some(4), "FP32"),
    (ElementType::F64, Some(8), "FP64"),
    (ElementType::BF16, Some(2), "BF16"),
    (ElementType::U8, Some(1), "UINT8"),
    (ElementType::I32, Some(4), "INT32"),
    (ElementType::I64, Some(8), "INT64"),
    (ElementType::Bytes, None, "BYTES"),
];

impl ElementType {
    /// Every element type.
    pub const ALL: [ElementType; 8] = [
        ElementType::F16,
        ElementType::F32,
        ElementType::F64,
        ElementType::BF16,
        ElementType::U8,
        ElementType::I32,
        ElementType::I64,
        ElementType::Bytes,
    ];

    fn row(self) -> &'static (ElementType, Option<usize>, &'static str) {
        TABLE.iter().find(|(ty, _, _)| *ty == self).expect("every type is in the table")
    }

    /// Bytes per element; `None` for `Bytes`, whose elements each have their own length.
    pub fn size(self) -> Option<usize> {
        self.row().1
    }

    /// The Open Inference Protocol's datatype name (`"FP32"`, `"INT64"`, ...).
    pub fn datatype(self) -> &'static str {
        self.row().2
    }

    /// The type a protocol datatype name stands for, if a tensor of ours can carry it.
    pub fn from_datatype(name: &str) -> Option<ElementType> {
        TABLE.iter().find(|(_, _, n)| *n == name).map(|(ty, _, _)| *ty)
    }
}

/// A dense row-major tensor; `bytes` are its little-endian elements. Cloning shares the bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub shape: Vec<u32>,
    pub ty: ElementType,
    pub bytes: Bytes,
}

impl TensorData {
    /// A tensor of `shape` and `ty` over `bytes` (taken without a copy from a `Vec<u8>`).
    pub fn new(shape: Vec<u32>, ty: ElementType, bytes: impl Into<Bytes>) -> TensorData {
        TensorData { shape, ty, bytes: bytes.into() }
    }

    /// Elements in `shape`, or `None` when the count overflows.
    pub fn elements(shape: &[u32]) -> Option<usize> {
        shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
    }

    /// Checks that `bytes` holds exactly `shape`'s elements of `ty`; the error says what is wrong.
    pub fn validate(&self) -> Result<(), TensorError> {
        let Some(size) = self.ty.size() else {
            let elements = Self::elements(&self.shape)
                .ok_or_else(|| format!("tensor shape {:?} is too large", self.shape))?;
            let found = count_byte_strings(&self.bytes)?;
            if found != elements {
                return Err(
                    format!("shape {:?} needs {elements} byte strings, got {found}", self.shape).into()
                );
            }
            return Ok(());
        };
        let expected = Self::elements(&self.shape)
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| format!("tensor shape {:?} is too large", self.shape))?;
        if expected != self.bytes.len() {
            return Err(format!(
                "tensor of shape {:?} and type {:?} needs {expected} bytes, got {}",
                self.shape,
                self.ty,
                self.bytes.len()
            )
            .into());
        }
        Ok(())
    }
}

/// The outputs a caller asked for, by name, in the model's order (every output when it named
/// none); the error names an output the model does not have.
pub fn select_outputs<T>(
    computed: Vec<(String, T)>,
    wanted: &[String],
) -> Result<Vec<(String, T)>, TensorError> {
    if let Some(missing) = wanted.iter().find(|name| !computed.iter().any(|(n, _)| n == *name)) {
        return Err(format!("the model has no output {missing:?}").into());
    }
    Ok(computed.into_iter().filter(|(name, _)| wanted.is_empty() || wanted.contains(name)).collect())
}

/// The elements of a `Bytes` tensor's bytes (each after its 4-byte little-endian length); the error
/// says where the layout breaks.
pub fn byte_strings(bytes: &[u8]) -> Result<Vec<&[u8]>, TensorError> {
    let mut elements = Vec::new();
    walk_byte_strings(bytes, |element| elements.push(element))?;
    Ok(elements)
}

/// How many elements a `Bytes` tensor's bytes hold, checking their layout (nothing collected).
pub fn count_byte_strings(bytes: &[u8]) -> Result<usize, TensorError> {
    let mut count = 0;
    walk_byte_strings(bytes, |_| count += 1)?;
    Ok(count)
}

fn walk_byte_strings<'a>(bytes: &'a [u8], mut each: impl FnMut(&'a [u8])) -> Result<(), TensorError> {
    let mut index = 0usize;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(
                format!("BYTES element {index}: {} bytes left, too few for its length", rest.len()).into()
            );
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > tail.len() {
            return Err(format!(
                "BYTES element {index}: length {length} is past the end ({} bytes left)",
                tail.len()
            )
            .into());
        }
        let (element, tail) = tail.split_at(length);
        each(element);
        index += 1;
        rest = tail;
    }
    Ok(())
}

/// The layout of a `Bytes` tensor over `elements`.
pub fn encode_byte_strings<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for element in elements {
        let length = u32::try_from(element.len()).expect("a BYTES element under 4 GiB");
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(element);
    }
    bytes
}

#[cfg(test)]
mod tests {
    #[test]
    fn outputs_are_selected_by_name_in_the_model_s_order() {
        let computed = || vec![("a".to_string(), 1), ("b".to_string(), 2), ("c".to_string(), 3)];
        assert_eq!(super::select_outputs(computed(), &[]).unwrap().len(), 3);
        let picked = super::select_outputs(computed(), &["c".into(), "a".into()]).unwrap();
        assert_eq!(picked, [("a".to_string(), 1), ("c".to_string(), 3)]);
        let error = super::select_outputs(computed(), &["d".into()]).unwrap_err().0;
        assert!(error.contains("no output \"d\""), "{error}");
    }

    use super::*;

    #[test]
    fn the_table_names_every_type_once() {
        for ty in ElementType::ALL {
            assert_eq!(ElementType::from_datatype(ty.datatype()), Some(ty));
        }
        assert_eq!(ElementType::from_datatype("BYTES"), Some(ElementType::Bytes));
        assert_eq!(ElementType::from_datatype("STRING"), None);
        assert_eq!(ElementType::I64.size(), Some(8));
        assert_eq!(ElementType::BF16.size(), Some(2));
        assert_eq!(ElementType::Bytes.size(), None);
    }

    #[test]
    fn byte_strings_round_trip_and_bad_layouts_are_refused() {
        let bytes = encode_byte_strings([&b"hello"[..], b"", "wörld".as_bytes()]);
        assert_eq!(&bytes[..9], b"\x05\0\0\0hello");
        assert_eq!(byte_strings(&bytes).unwrap(), [&b"hello"[..], b"", "wörld".as_bytes()]);
        assert!(TensorData::new(vec![3], ElementType::Bytes, bytes.clone()).validate().is_ok());
        let e = TensorData::new(vec![2], ElementType::Bytes, bytes.clone()).validate().unwrap_err().0;
        assert!(e.contains("needs 2 byte strings, got 3"), "{e}");
        let e = byte_strings(&bytes[..bytes.len() - 1]).unwrap_err().0;
        assert!(e.contains("BYTES element 2: length 6 is past the end (5 bytes left)"), "{e}");
        let e = byte_strings(&[1, 0]).unwrap_err().0;
        assert!(e.contains("too few for its length"), "{e}");
    }

    #[test]
    fn validate_checks_byte_length() {
        let t = TensorData::new(vec![2, 3], ElementType::I64, vec![0; 48]);
        assert!(t.validate().is_ok());
        let t = TensorData::new(vec![2, 3], ElementType::I64, vec![0; 47]);
        assert!(t.validate().unwrap_err().0.contains("needs 48 bytes, got 47"));
        let huge = TensorData::new(vec![u32::MAX, u32::MAX, u32::MAX], ElementType::F64, vec![]);
        assert!(huge.validate().unwrap_err().0.contains("too large"));
    }
}
