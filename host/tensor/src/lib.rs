//! Tensors as edgeinfer moves them between components, the batcher, engines and the network:
//! dense, row-major, little-endian elements in shared [`Bytes`], so that handing a tensor on or
//! cutting a batch into requests does not copy it. [`kserve`] is the JSON codec of the Open
//! Inference Protocol, used by the host's KServe API and by the `nn-remote` component alike.

pub mod kserve;

use bytes::Bytes;

// Tensor bytes are the machine's own element layout, viewed in place by engines.
#[cfg(target_endian = "big")]
compile_error!("edgeinfer tensors are little-endian; big-endian targets are not supported");

/// Element types a tensor can carry: those of wasi:nn's `tensor-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    F16,
    F32,
    F64,
    BF16,
    U8,
    I32,
    I64,
}

/// The one table of element types: size and the Open Inference Protocol's datatype name.
const TABLE: [(ElementType, usize, &str); 7] = [
    (ElementType::F16, 2, "FP16"),
    (ElementType::F32, 4, "FP32"),
    (ElementType::F64, 8, "FP64"),
    (ElementType::BF16, 2, "BF16"),
    (ElementType::U8, 1, "UINT8"),
    (ElementType::I32, 4, "INT32"),
    (ElementType::I64, 8, "INT64"),
];

impl ElementType {
    /// Every element type.
    pub const ALL: [ElementType; 7] = [
        ElementType::F16,
        ElementType::F32,
        ElementType::F64,
        ElementType::BF16,
        ElementType::U8,
        ElementType::I32,
        ElementType::I64,
    ];

    fn row(self) -> &'static (ElementType, usize, &'static str) {
        TABLE.iter().find(|(ty, _, _)| *ty == self).expect("every type is in the table")
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
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
    pub fn validate(&self) -> Result<(), String> {
        let expected = Self::elements(&self.shape)
            .and_then(|n| n.checked_mul(self.ty.size()))
            .ok_or_else(|| format!("tensor shape {:?} is too large", self.shape))?;
        if expected != self.bytes.len() {
            return Err(format!(
                "tensor of shape {:?} and type {:?} needs {expected} bytes, got {}",
                self.shape,
                self.ty,
                self.bytes.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_type_once() {
        for ty in ElementType::ALL {
            assert_eq!(ElementType::from_datatype(ty.datatype()), Some(ty));
        }
        assert_eq!(ElementType::from_datatype("BYTES"), None);
        assert_eq!(ElementType::I64.size(), 8);
        assert_eq!(ElementType::BF16.size(), 2);
    }

    #[test]
    fn validate_checks_byte_length() {
        let t = TensorData::new(vec![2, 3], ElementType::I64, vec![0; 48]);
        assert!(t.validate().is_ok());
        let t = TensorData::new(vec![2, 3], ElementType::I64, vec![0; 47]);
        assert!(t.validate().unwrap_err().contains("needs 48 bytes, got 47"));
        let huge = TensorData::new(vec![u32::MAX, u32::MAX, u32::MAX], ElementType::F64, vec![]);
        assert!(huge.validate().unwrap_err().contains("too large"));
    }
}
