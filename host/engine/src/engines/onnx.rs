//! ONNX Runtime engine, loaded dynamically from the shared library the provisioner fetched.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, ValueType};
use ort::value::{PrimitiveTensorElementType, TensorElementType};

use super::{ElementType, Engine, EngineError, TensorData, TensorSpec, check_inputs};
use edgeinfer_config::runtime_config::{Device, GraphOptimization, ModelConfig};

/// The library is process-global in ONNX Runtime: one environment for the process.
static RUNTIME: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads `libonnxruntime` from `library` (once per process) and builds the environment that
/// every session uses.
pub fn init_runtime(library: &Path) -> Result<&'static Environment> {
    let result = RUNTIME.get_or_init(|| {
        // A missing file is a panic inside `ort`: check first and say which file.
        if !library.is_file() {
            return Err(format!("ONNX Runtime library not found at {}", library.display()));
        }
        let builder =
            ort::init_from(library).map_err(|e| format!("cannot load {}: {e}", library.display()))?;
        // Built before the first session, or the CUDA provider cannot register.
        builder.with_name("edgeinfer").build().map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    });
    result.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn environment() -> Result<&'static Environment> {
    match RUNTIME.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(e)) => bail!("{e}"),
        None => bail!("ONNX Runtime is not initialised"),
    }
}

/// One ONNX model in one session.
pub struct OnnxEngine {
    /// `Session::run` takes `&mut`; concurrent calls queue here (the batcher will feed it).
    session: Mutex<Session>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OnnxEngine {
    /// Builds a session for `path` with the model's options; `init_runtime` must have succeeded.
    pub fn load(path: &Path, config: &ModelConfig) -> Result<OnnxEngine> {
        let mut builder =
            Session::builder(environment()?).context("cannot create an ONNX Runtime session builder")?;
        builder = builder
            .with_optimization_level(optimization_level(config.graph_optimization))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(n) = config.intra_threads {
            builder = builder.with_intra_threads(n).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some(n) = config.inter_threads {
            builder = builder.with_inter_threads(n).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Device::Cuda(id) = config.device()? {
            // Never fall back to CPU silently: a model configured for CUDA runs there or not at all.
            let cuda = ep::CUDA::default().with_device_id(id as i32).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                anyhow::anyhow!("CUDA execution provider failed to register on cuda:{id}: {e}")
            })?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot load ONNX model {}: {e}", path.display()))?;
        let inputs = session.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect();
        Ok(OnnxEngine { session: Mutex::new(session), inputs, outputs })
    }
}

impl Engine for OnnxEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<(String, TensorData)>) -> Result<Vec<(String, TensorData)>, EngineError> {
        check_inputs(&inputs, &self.inputs)?;
        let values: Vec<(String, DynValue)> = inputs
            .into_iter()
            .map(|(name, tensor)| Ok((name, to_ort(tensor)?)))
            .collect::<Result<_, EngineError>>()?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(values).map_err(|e| EngineError::Runtime(e.to_string()))?;
        outputs.iter().map(|(name, value)| Ok((name.to_string(), from_ort(&value)?))).collect()
    }
}

fn optimization_level(level: GraphOptimization) -> GraphOptimizationLevel {
    match level {
        GraphOptimization::Disable => GraphOptimizationLevel::Disable,
        GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        GraphOptimization::Extended => GraphOptimizationLevel::Level2,
        GraphOptimization::All => GraphOptimizationLevel::All,
    }
}

fn spec(name: &str, dtype: &ValueType) -> TensorSpec {
    match dtype {
        ValueType::Tensor { ty, shape, dimension_symbols } => TensorSpec {
            name: name.to_string(),
            ty: element_type(*ty),
            shape: shape.iter().copied().collect(),
            symbols: dimension_symbols.iter().cloned().collect(),
        },
        _ => TensorSpec { name: name.to_string(), ty: None, shape: vec![], symbols: vec![] },
    }
}

fn element_type(ty: TensorElementType) -> Option<ElementType> {
    Some(match ty {
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Bfloat16 => ElementType::BF16,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        _ => return None,
    })
}

fn to_ort(tensor: TensorData) -> Result<DynValue, EngineError> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    let bytes = &tensor.bytes;
    let runtime = |e: ort::Error| EngineError::Runtime(e.to_string());
    Ok(match tensor.ty {
        ElementType::F32 => {
            Tensor::from_array((shape, decode(bytes, f32::from_le_bytes))).map_err(runtime)?.into_dyn()
        }
        ElementType::F64 => {
            Tensor::from_array((shape, decode(bytes, f64::from_le_bytes))).map_err(runtime)?.into_dyn()
        }
        ElementType::I32 => {
            Tensor::from_array((shape, decode(bytes, i32::from_le_bytes))).map_err(runtime)?.into_dyn()
        }
        ElementType::I64 => {
            Tensor::from_array((shape, decode(bytes, i64::from_le_bytes))).map_err(runtime)?.into_dyn()
        }
        ElementType::U8 => Tensor::from_array((shape, bytes.clone())).map_err(runtime)?.into_dyn(),
        ElementType::F16 | ElementType::BF16 => {
            return Err(EngineError::invalid(format!("{:?} tensors are not supported yet", tensor.ty)));
        }
    })
}

fn from_ort(value: &DynValue) -> Result<TensorData, EngineError> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(EngineError::Runtime("model output is not a tensor".into()));
    };
    let runtime = |e: ort::Error| EngineError::Runtime(e.to_string());
    let (ty, shape, bytes) = match ty {
        TensorElementType::Float32 => extract(value, ElementType::F32, f32::to_le_bytes).map_err(runtime)?,
        TensorElementType::Float64 => extract(value, ElementType::F64, f64::to_le_bytes).map_err(runtime)?,
        TensorElementType::Int32 => extract(value, ElementType::I32, i32::to_le_bytes).map_err(runtime)?,
        TensorElementType::Int64 => extract(value, ElementType::I64, i64::to_le_bytes).map_err(runtime)?,
        TensorElementType::Uint8 => extract(value, ElementType::U8, u8::to_le_bytes).map_err(runtime)?,
        other => return Err(EngineError::Runtime(format!("model output type {other:?} is not supported"))),
    };
    Ok(TensorData { shape, ty, bytes })
}

fn extract<T: PrimitiveTensorElementType + Copy, const N: usize>(
    value: &DynValue,
    ty: ElementType,
    to_bytes: fn(T) -> [u8; N],
) -> ort::Result<(ElementType, Vec<u32>, Vec<u8>)> {
    let (shape, data) = value.try_extract_tensor::<T>()?;
    let shape = shape.iter().map(|&d| d as u32).collect();
    Ok((ty, shape, data.iter().flat_map(|&v| to_bytes(v)).collect()))
}

fn decode<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| from(c.try_into().expect("chunk of N bytes"))).collect()
}

/// Fails unless `path` holds a file: used before loading to give a clear error.
pub fn check_model_file(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("model file {} does not exist", path.display());
    }
    Ok(())
}
