//! ONNX Runtime engine, loaded dynamically from the shared library the provisioner fetched.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorRef, ValueType};
use ort::value::{PrimitiveTensorElementType, TensorElementType};

use super::{ElementType, Engine, EngineError, TensorData, TensorSpec, check_inputs};
use edgeinfer_config::runtime_config::{Device, GraphOptimization, ModelConfig};

/// The library is process-global in ONNX Runtime: one environment for the process.
static RUNTIME: OnceLock<std::result::Result<Environment, RuntimeError>> = OnceLock::new();

/// Why ONNX Runtime could not start (kept for the process: the library loads once).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found at {}", .0.display())]
    NotFound(std::path::PathBuf),
    #[error("cannot load {}: {message}", path.display())]
    Load { path: std::path::PathBuf, message: String },
    #[error("cannot start ONNX Runtime: {0}")]
    Start(String),
}

/// Loads `libonnxruntime` from `library` (once per process) and builds the environment that
/// every session uses.
pub fn init_runtime(library: &Path) -> Result<&'static Environment> {
    let result = RUNTIME.get_or_init(|| {
        // A missing file is a panic inside `ort`: check first and say which file.
        if !library.is_file() {
            return Err(RuntimeError::NotFound(library.to_path_buf()));
        }
        let builder = ort::init_from(library)
            .map_err(|e| RuntimeError::Load { path: library.to_path_buf(), message: e.to_string() })?;
        // Built before the first session, or the CUDA provider cannot register.
        builder.with_name("edgeinfer").build().map_err(|e| RuntimeError::Start(e.to_string()))
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

/// `wanted` intra-op threads, at most as many as the cores this process may run on (its affinity
/// mask and cgroup quota, as `taskset` or a container's CPU limit set them): more threads than
/// cores spin and time-slice against each other and against the request path (on one pinned core,
/// 2 threads halved the throughput: BENCHMARKS.md, "A second load generator").
fn usable_threads(wanted: usize) -> usize {
    let usable = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(wanted);
    if wanted > usable {
        tracing::info!(wanted, usable, "intra_threads lowered to the cores this process may use");
    }
    wanted.min(usable)
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
            builder = builder.with_intra_threads(usable_threads(n)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some(n) = config.inter_threads {
            builder = builder.with_inter_threads(n).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some(enable) = config.memory_pattern {
            builder = builder.with_memory_pattern(enable).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Device::Cuda(id) = config.device()? {
            // Never fall back to CPU silently: a model configured for CUDA runs there or not at all.
            let cuda = ep::CUDA::default().with_device_id(id as i32).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                anyhow::anyhow!("CUDA execution provider failed to register on cuda:{id}: {e}")
            })?;
        }
        if let (Some(enable), Device::Cpu) = (config.cpu_arena, config.device()?) {
            let cpu = ep::CPU::default().with_arena_allocator(enable).build();
            builder = builder.with_execution_providers([cpu]).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        // Every input is a view over memory this call owns until it returns: the request's own
        // bytes, or an aligned copy of them in the rare case they are not aligned.
        let copies: Vec<Option<Vec<u64>>> = inputs.iter().map(|(_, t)| aligned_copy(&t.bytes)).collect();
        let sources: Vec<&[u8]> = inputs
            .iter()
            .zip(&copies)
            .map(|((_, t), copy)| match copy {
                Some(words) => &bytemuck::cast_slice::<u64, u8>(words)[..t.bytes.len()],
                None => &t.bytes[..],
            })
            .collect();
        let values: Vec<(&str, SessionInputValue<'_>)> = inputs
            .iter()
            .zip(&sources)
            .map(|((name, tensor), source)| Ok((name.as_str(), to_ort(tensor, source)?)))
            .collect::<Result<_, EngineError>>()?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(values).map_err(|e| EngineError::Runtime(e.to_string()))?;
        // Converted while the inputs still live: an output may be an input's own buffer.
        outputs.into_iter().map(|(name, value)| Ok((name.to_string(), from_ort(value, &sources)?))).collect()
    }
}

/// A copy of `bytes` at an address aligned for every element type, when they are not already.
fn aligned_copy(bytes: &[u8]) -> Option<Vec<u64>> {
    if (bytes.as_ptr() as usize).is_multiple_of(8) {
        return None;
    }
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    Some(words)
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
        TensorElementType::String => ElementType::Bytes,
        _ => return None,
    })
}

/// A session input viewing `source` (the tensor's bytes, aligned): no copy.
fn to_ort<'a>(tensor: &TensorData, source: &'a [u8]) -> Result<SessionInputValue<'a>, EngineError> {
    let runtime = |e: ort::Error| EngineError::Runtime(e.to_string());
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| i64::from(d)).collect();
    match tensor.ty {
        ElementType::F32 => view::<f32>(shape, source).map_err(runtime),
        ElementType::F64 => view::<f64>(shape, source).map_err(runtime),
        ElementType::I32 => view::<i32>(shape, source).map_err(runtime),
        ElementType::I64 => view::<i64>(shape, source).map_err(runtime),
        ElementType::U8 => view::<u8>(shape, source).map_err(runtime),
        ElementType::F16 => view::<half::f16>(shape, source).map_err(runtime),
        ElementType::BF16 => view::<half::bf16>(shape, source).map_err(runtime),
        // ONNX Runtime keeps strings its own way: they are copied in, and must be UTF-8.
        ElementType::Bytes => {
            let elements = edgeinfer_tensor::byte_strings(source).map_err(|e| EngineError::invalid(e.0))?;
            let strings = elements
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let text = String::from_utf8(e.to_vec())
                        .map_err(|_| EngineError::invalid(format!("BYTES element {i} is not UTF-8 text")))?;
                    // ONNX Runtime's strings are C strings.
                    match text.contains('\0') {
                        true => Err(EngineError::invalid(format!("BYTES element {i} holds a NUL byte"))),
                        false => Ok(text),
                    }
                })
                .collect::<Result<Vec<String>, _>>()?;
            Ok(Tensor::from_string_array((shape, &strings[..])).map_err(runtime)?.into())
        }
    }
}

fn view<T: PrimitiveTensorElementType + bytemuck::Pod + fmt::Debug>(
    shape: Vec<i64>,
    source: &[u8],
) -> ort::Result<SessionInputValue<'_>> {
    let values = bytemuck::try_cast_slice::<u8, T>(source)
        .map_err(|e| ort::Error::new(format!("tensor bytes cannot be viewed as elements: {e}")))?;
    Ok(TensorRef::from_array_view((shape, values))?.into())
}

/// An output tensor whose bytes stay in ONNX Runtime's value: handed on, not copied. An output
/// that is one of the inputs' buffers (ONNX Runtime passes an input through that way) is copied:
/// those bytes are not the value's to keep.
fn from_ort(value: DynValue, inputs: &[&[u8]]) -> Result<TensorData, EngineError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(EngineError::Runtime("model output is not a tensor".into()));
    };
    let shape = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| EngineError::Runtime(format!("model output has shape {shape:?}")))?;
    let runtime = |e: ort::Error| EngineError::Runtime(e.to_string());
    let (ty, bytes) = match ty {
        TensorElementType::Float32 => {
            (ElementType::F32, output_bytes::<f32>(value, inputs).map_err(runtime)?)
        }
        TensorElementType::Float64 => {
            (ElementType::F64, output_bytes::<f64>(value, inputs).map_err(runtime)?)
        }
        TensorElementType::Int32 => (ElementType::I32, output_bytes::<i32>(value, inputs).map_err(runtime)?),
        TensorElementType::Int64 => (ElementType::I64, output_bytes::<i64>(value, inputs).map_err(runtime)?),
        TensorElementType::Uint8 => (ElementType::U8, output_bytes::<u8>(value, inputs).map_err(runtime)?),
        TensorElementType::Float16 => {
            (ElementType::F16, output_bytes::<half::f16>(value, inputs).map_err(runtime)?)
        }
        TensorElementType::Bfloat16 => {
            (ElementType::BF16, output_bytes::<half::bf16>(value, inputs).map_err(runtime)?)
        }
        TensorElementType::String => {
            let (_, strings) = value.try_extract_strings().map_err(runtime)?;
            let bytes = edgeinfer_tensor::encode_byte_strings(strings.iter().map(|s| s.as_bytes()));
            (ElementType::Bytes, Bytes::from(bytes))
        }
        other => return Err(EngineError::Runtime(format!("model output type {other:?} is not supported"))),
    };
    Ok(TensorData { shape, ty, bytes })
}

fn output_bytes<T: PrimitiveTensorElementType + bytemuck::Pod>(
    value: DynValue,
    inputs: &[&[u8]],
) -> ort::Result<Bytes> {
    let (_, data) = value.try_extract_tensor::<T>()?;
    let data: &[u8] = bytemuck::cast_slice(data);
    if data.is_empty() {
        return Ok(Bytes::new());
    }
    let range = data.as_ptr_range();
    if inputs.iter().any(|input| {
        let input = input.as_ptr_range();
        range.start < input.end && input.start < range.end
    }) {
        return Ok(Bytes::copy_from_slice(data));
    }
    let (address, len) = (data.as_ptr() as usize, data.len());
    Ok(Bytes::from_owner(OutputBytes { _value: value, address, len }))
}

/// An output value and where its data lies; the data lives, unchanged, as long as the value.
struct OutputBytes {
    _value: DynValue,
    address: usize,
    len: usize,
}

impl AsRef<[u8]> for OutputBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `address..address + len` is the CPU data of `_value` (not an input's buffer:
        // those are copied), which this struct owns and nothing writes to after the run; a
        // value's data does not move when the value does.
        unsafe { std::slice::from_raw_parts(self.address as *const u8, self.len) }
    }
}

/// Fails unless `path` holds a file: used before loading to give a clear error.
pub fn check_model_file(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("model file {} does not exist", path.display());
    }
    Ok(())
}
