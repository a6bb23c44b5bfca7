//! `nn-local`: exports `edgeinfer:nn/infer` and wasi:nn and runs ONNX models inside the
//! component with tract, a pure-Rust inference engine: no native library, CPU only, slower than
//! the edgeinfer host's ONNX Runtime, fully self-contained. Plugged into a handler as a spin.toml
//! dependency (`"edgeinfer:nn/infer@0.1.0"`), it lets a runtime without models of its own
//! (`spin up`) serve the app.
//!
//! Naming convention: model NAME (`compute(NAME, ..)`, `load-by-name(NAME)`) is
//! `$NN_LOCAL_DIR/NAME/model.onnx` (default
//! directory `/nn`), so a `files` mount `{ source = "models/x", destination = "/nn/NAME" }` makes a
//! graph NAME. Graphs are loaded once per instance and kept.

wit_bindgen::generate!({
    world: "nn-provider",
    path: "../../wit",
    generate_all,
});

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tract_onnx::prelude::*;

use exports::edgeinfer::nn::infer::{self, Tensor};
use exports::wasi::nn::errors::{self, ErrorCode, GuestError};
use exports::wasi::nn::graph::{self, ExecutionTarget, GraphBuilder, GraphEncoding, GuestGraph};
use exports::wasi::nn::inference::{self, GuestGraphExecutionContext, NamedTensor};
use exports::wasi::nn::tensor::{self, GuestTensor, TensorType};

type Plan = std::sync::Arc<TypedRunnableModel>;

thread_local! {
    /// Optimised models by graph name, shared by every graph handle of this instance.
    static LOADED: RefCell<HashMap<String, Rc<Loaded>>> = RefCell::new(HashMap::new());
}

/// A model ready to run, with its input and output names in order.
struct Loaded {
    plan: Plan,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

struct Provider;

/// A wasi:nn error: its code and a message.
pub struct Error {
    code: ErrorCode,
    message: String,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Error {
    Error { code, message: message.into() }
}

/// The same failure as `infer`'s error.
fn infer_error(e: Error) -> infer::Error {
    match e.code {
        ErrorCode::NotFound => infer::Error::NotFound(e.message),
        ErrorCode::InvalidArgument | ErrorCode::UnsupportedOperation => {
            infer::Error::InvalidArgument(e.message)
        }
        // A model file tract cannot load will not serve until it is replaced.
        ErrorCode::InvalidEncoding => infer::Error::Unavailable(e.message),
        _ => infer::Error::Runtime(e.message),
    }
}

/// A loaded graph.
pub struct Graph {
    loaded: Rc<Loaded>,
}

/// Execution contexts share the graph's plan.
pub struct Context {
    loaded: Rc<Loaded>,
}

/// A wasi:nn tensor is held as infer's tensor record: one tensor type for both interfaces.
impl tensor::Guest for Provider {
    type Tensor = Tensor;
}

impl GuestTensor for Tensor {
    fn new(dimensions: Vec<u32>, ty: TensorType, data: Vec<u8>) -> Self {
        Tensor { dimensions, ty, data }
    }
    fn dimensions(&self) -> Vec<u32> {
        self.dimensions.clone()
    }
    fn ty(&self) -> TensorType {
        self.ty
    }
    fn data(&self) -> Vec<u8> {
        self.data.clone()
    }
}

impl errors::Guest for Provider {
    type Error = Error;
}

impl GuestError for Error {
    fn code(&self) -> ErrorCode {
        self.code
    }
    fn data(&self) -> String {
        self.message.clone()
    }
}

fn load(name: &str) -> Result<Rc<Loaded>, Error> {
    if let Some(loaded) = LOADED.with(|l| l.borrow().get(name).cloned()) {
        return Ok(loaded);
    }
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
        return Err(error(ErrorCode::InvalidArgument, format!("{name:?} is not a graph name")));
    }
    let dir = std::env::var("NN_LOCAL_DIR").unwrap_or_else(|_| "/nn".into());
    let path = format!("{dir}/{name}/model.onnx");
    if std::fs::metadata(&path).is_err() {
        return Err(error(ErrorCode::NotFound, format!("no graph {name:?}: {path} does not exist")));
    }
    let failed = |e: TractError| error(ErrorCode::InvalidEncoding, format!("cannot load {path}: {e:#}"));
    let model = tract_onnx::onnx().model_for_path(&path).map_err(failed)?;
    let model = model.into_optimized().map_err(failed)?;
    let inputs =
        model.input_outlets().map_err(failed)?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let outputs = model
        .output_outlets()
        .map_err(failed)?
        .iter()
        .map(|o| model.outlet_label(*o).map(String::from).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();
    let plan = model.into_runnable().map_err(failed)?;
    let loaded = Rc::new(Loaded { plan, inputs, outputs });
    LOADED.with(|l| l.borrow_mut().insert(name.to_string(), loaded.clone()));
    Ok(loaded)
}

impl graph::Guest for Provider {
    type Graph = Graph;

    fn load(
        _builder: Vec<GraphBuilder>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> Result<graph::Graph, errors::Error> {
        Err(errors::Error::new(error(
            ErrorCode::UnsupportedOperation,
            "nn-local loads graphs by name from mounted files",
        )))
    }

    fn load_by_name(name: String) -> Result<graph::Graph, errors::Error> {
        Ok(graph::Graph::new(Graph { loaded: load(&name).map_err(errors::Error::new)? }))
    }
}

impl GuestGraph for Graph {
    fn init_execution_context(&self) -> Result<inference::GraphExecutionContext, errors::Error> {
        Ok(inference::GraphExecutionContext::new(Context { loaded: self.loaded.clone() }))
    }
}

impl inference::Guest for Provider {
    type GraphExecutionContext = Context;
}

/// A wasi:nn tensor as a tract tensor; its bytes must be exactly its shape's elements.
fn to_tract(name: &str, t: &Tensor) -> Result<tract_onnx::prelude::Tensor, Error> {
    let shape: Vec<usize> = t.dimensions.iter().map(|&d| d as usize).collect();
    let invalid = |e: TractError| error(ErrorCode::InvalidArgument, format!("input {name:?}: {e}"));
    let width = match t.ty {
        TensorType::U8 => 1,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
        TensorType::Fp16 | TensorType::Bf16 => {
            return Err(error(ErrorCode::UnsupportedOperation, "FP16 and BF16 tensors are not supported"));
        }
    };
    let expected = shape.iter().try_fold(width, |bytes: usize, &d| bytes.checked_mul(d));
    if expected != Some(t.data.len()) {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!("input {name:?}: {} bytes for shape {shape:?} of {width}-byte elements", t.data.len()),
        ));
    }
    // Decoded element by element (little-endian, as wasi:nn lays them out): no unsafe cast, and
    // `t.data` needs no alignment.
    let tensor = match t.ty {
        TensorType::Fp32 => from_le(&shape, &t.data, f32::from_le_bytes),
        TensorType::Fp64 => from_le(&shape, &t.data, f64::from_le_bytes),
        TensorType::I64 => from_le(&shape, &t.data, i64::from_le_bytes),
        TensorType::I32 => from_le(&shape, &t.data, i32::from_le_bytes),
        TensorType::U8 => from_le(&shape, &t.data, u8::from_le_bytes),
        TensorType::Fp16 | TensorType::Bf16 => unreachable!("refused above"),
    };
    tensor.map_err(invalid)
}

/// A tensor of `shape` whose elements `decode` reads from consecutive `N`-byte chunks of `data`.
fn from_le<T: Datum + Copy, const N: usize>(
    shape: &[usize],
    data: &[u8],
    decode: fn([u8; N]) -> T,
) -> TractResult<tract_onnx::prelude::Tensor> {
    let elements: Vec<T> =
        data.chunks_exact(N).map(|chunk| decode(chunk.try_into().expect("chunks of N bytes"))).collect();
    tract_onnx::prelude::Tensor::from_shape(shape, &elements)
}

/// A tract output as a wasi:nn tensor.
fn from_tract(name: &str, value: &tract_onnx::prelude::Tensor) -> Result<Tensor, Error> {
    let ty = match value.datum_type() {
        DatumType::F32 => TensorType::Fp32,
        DatumType::F64 => TensorType::Fp64,
        DatumType::I64 => TensorType::I64,
        DatumType::I32 => TensorType::I32,
        DatumType::U8 => TensorType::U8,
        other => return Err(error(ErrorCode::UnsupportedOperation, format!("output {name:?} is {other:?}"))),
    };
    let data = value.as_bytes().to_vec();
    Ok(Tensor { dimensions: value.shape().iter().map(|&d| d as u32).collect(), ty, data })
}

/// Runs `model` on named inputs; the `wanted` outputs (every output when none is named), by
/// name, in the model's order.
fn run(
    model: &Loaded,
    inputs: &[(String, &Tensor)],
    wanted: &[String],
) -> Result<Vec<(String, Tensor)>, Error> {
    // Checked before the run, which is slow here.
    if let Some(missing) = wanted.iter().find(|name| !model.outputs.contains(name)) {
        return Err(error(ErrorCode::InvalidArgument, format!("the model has no output {missing:?}")));
    }
    let mut ordered = TVec::new();
    for name in &model.inputs {
        let (_, tensor) = inputs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| error(ErrorCode::InvalidArgument, format!("missing model input {name:?}")))?;
        ordered.push(to_tract(name, tensor)?.into_tvalue());
    }
    if let Some((unknown, _)) = inputs.iter().find(|(n, _)| !model.inputs.contains(n)) {
        return Err(error(ErrorCode::InvalidArgument, format!("the model has no input {unknown:?}")));
    }
    let outputs = model.plan.run(ordered).map_err(|e| error(ErrorCode::RuntimeError, format!("{e:#}")))?;
    model
        .outputs
        .iter()
        .zip(outputs.iter())
        .filter(|(name, _)| wanted.is_empty() || wanted.contains(name))
        .map(|(name, value)| Ok((name.clone(), from_tract(name, value)?)))
        .collect()
}

impl GuestGraphExecutionContext for Context {
    fn compute(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, errors::Error> {
        let inputs: Vec<(String, &Tensor)> =
            inputs.iter().map(|(n, t)| (n.clone(), t.get::<Tensor>())).collect();
        let outputs = run(&self.loaded, &inputs, &[]).map_err(errors::Error::new)?;
        Ok(outputs.into_iter().map(|(name, tensor)| (name, tensor::Tensor::new(tensor))).collect())
    }
}

impl infer::Guest for Provider {
    /// tract runs to the end once called, on the caller's thread: unlike the edgeinfer host's
    /// native `compute`, the handler's other requests wait for it.
    async fn compute(
        model: String,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
    ) -> Result<Vec<(String, Tensor)>, infer::Error> {
        let loaded = load(&model).map_err(infer_error)?;
        let borrowed: Vec<(String, &Tensor)> = inputs.iter().map(|(n, t)| (n.clone(), t)).collect();
        run(&loaded, &borrowed, &outputs).map_err(infer_error)
    }
}

export!(Provider);
