//! Inference engines behind one trait: *how* to run a model. Which models exist is the
//! registry's business (`nn::registry`).

pub mod onnx;

pub use edgeinfer_tensor::{ElementType, TensorData};

/// A model input or output as the model declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// `None` for types wasi:nn cannot carry (e.g. strings).
    pub ty: Option<ElementType>,
    /// `-1` marks a dynamic dimension.
    pub shape: Vec<i64>,
    /// The model's name for each dynamic dimension ("batch_size", "sequence_length"; empty when
    /// unnamed): a name shared by several inputs must have one value in a call.
    pub symbols: Vec<String>,
}

/// Checks named inputs against a model's declared inputs: every input known, of the declared type
/// and shape (`-1` = any), with exactly its bytes, and none missing.
pub fn check_inputs(inputs: &[(String, TensorData)], specs: &[TensorSpec]) -> Result<(), EngineError> {
    for (name, tensor) in inputs {
        let spec = specs
            .iter()
            .find(|s| s.name == *name)
            .ok_or_else(|| EngineError::invalid(format!("the model has no input {name:?}")))?;
        tensor.validate().map_err(|e| EngineError::invalid(format!("input {name:?}: {e}")))?;
        if spec.ty != Some(tensor.ty) {
            return Err(EngineError::invalid(format!(
                "input {name:?} must be {:?}, got {:?}",
                spec.ty, tensor.ty
            )));
        }
        let dims_ok = spec.shape.len() == tensor.shape.len()
            && spec.shape.iter().zip(&tensor.shape).all(|(&want, &got)| want < 0 || want == i64::from(got));
        if !dims_ok {
            return Err(EngineError::invalid(format!(
                "input {name:?} must have shape {:?} (-1 = any), got {:?}",
                spec.shape, tensor.shape
            )));
        }
    }
    if let Some(missing) = specs.iter().find(|s| !inputs.iter().any(|(n, _)| *n == s.name)) {
        return Err(EngineError::invalid(format!("missing model input {:?}", missing.name)));
    }
    check_symbols(inputs, specs)
}

/// Named dynamic dimensions agree across inputs (e.g. every input's `sequence_length`).
fn check_symbols(inputs: &[(String, TensorData)], specs: &[TensorSpec]) -> Result<(), EngineError> {
    let mut bound: Vec<(&str, u32, &str)> = Vec::new();
    for (name, tensor) in inputs {
        let Some(spec) = specs.iter().find(|s| s.name == *name) else { continue };
        for (axis, (symbol, &size)) in spec.symbols.iter().zip(&tensor.shape).enumerate() {
            if symbol.is_empty() {
                continue;
            }
            match bound.iter().find(|(s, _, _)| s == symbol) {
                Some(&(_, first, other)) if first != size => {
                    return Err(EngineError::invalid(format!(
                        "inputs must share {symbol:?}: input {name:?} has {size} on axis {axis}, \
                         input {other:?} has {first}"
                    )));
                }
                Some(_) => {}
                None => bound.push((symbol, size, name)),
            }
        }
    }
    Ok(())
}

/// Why an inference failed: the caller's fault, or the engine's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Wrong names, types or shapes.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The engine failed while running.
    #[error("runtime error: {0}")]
    Runtime(String),
    /// The model's queue is full: retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>) -> EngineError {
        EngineError::InvalidArgument(message.into())
    }
}

/// A loaded model that runs inferences. `run` blocks: call it off the async runtime.
pub trait Engine: Send + Sync {
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    /// Runs one inference on named inputs, returning every model output by name.
    fn run(&self, inputs: Vec<(String, TensorData)>) -> Result<Vec<(String, TensorData)>, EngineError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_dimensions_must_agree_across_inputs() {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            ty: Some(ElementType::I64),
            shape: vec![-1, -1],
            symbols: vec!["batch".into(), "sequence".into()],
        };
        let specs = [spec("ids"), spec("mask")];
        let tensor = |shape: Vec<u32>| {
            let bytes = vec![0; shape.iter().product::<u32>() as usize * 8];
            TensorData::new(shape, ElementType::I64, bytes)
        };
        let same = [("ids".to_string(), tensor(vec![2, 4])), ("mask".to_string(), tensor(vec![2, 4]))];
        assert_eq!(check_inputs(&same, &specs), Ok(()));
        let longer = [("ids".to_string(), tensor(vec![2, 4])), ("mask".to_string(), tensor(vec![2, 5]))];
        let Err(EngineError::InvalidArgument(message)) = check_inputs(&longer, &specs) else {
            panic!("unequal sequence lengths must be refused")
        };
        assert!(message.contains("\"sequence\"") && message.contains("\"mask\" has 5"), "{message}");
        // Unnamed dimensions are not tied together.
        let unnamed: Vec<TensorSpec> =
            specs.iter().map(|s| TensorSpec { symbols: vec![], ..s.clone() }).collect();
        assert_eq!(check_inputs(&longer, &unnamed), Ok(()));
    }
}
