//! The host's own `wasi:nn` (0.2.0-rc-2024-10-28) for wasmtime components, in the shape of
//! wasmtime-wasi-nn: per-instance state ([`NnCtx`]) plus the store's resource table ([`NnView`]).
//! Which models exist and how they run is a [`ModelProvider`]'s business (the host's model
//! registry and batchers, or a fake in tests); this crate holds the guest-facing rules:
//! `load` from bytes is refused, `load-by-name` is limited to the component's models, owned
//! inputs are taken without a copy, and each failure has its wasi:nn error code. The same models
//! and rules are offered as `edgeinfer:nn/infer` ([`infer`]), whose `compute` is an
//! `async func` that lets the caller's instance serve other requests while it waits.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::Instrument;
use wasmtime::component::{GuestTaskId, HasData, Linker, Resource, ResourceTable};

pub use edgeinfer_tensor::{ElementType, TensorData};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/wasi-nn",
        world: "ml",
        with: {
            "wasi:nn/graph.graph": super::GraphHandle,
            "wasi:nn/tensor.tensor": edgeinfer_tensor::TensorData,
            "wasi:nn/inference.graph-execution-context": super::ExecutionContext,
            "wasi:nn/errors.error": super::NnError,
        },
        imports: {
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            default: trappable,
        },
    });
}

use bindings::wasi::nn::{errors, graph, inference, tensor};
pub use errors::ErrorCode;

/// Named tensors: a compute call's inputs or outputs.
pub type Tensors = Vec<(String, TensorData)>;

/// Why a model cannot be had or cannot run; each becomes a wasi:nn error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// No model of that name.
    NotFound(String),
    /// The model exists but cannot serve now (e.g. it failed to load).
    Unavailable(String),
    /// Wrong input names, types or shapes.
    InvalidArgument(String),
    /// The model's queue is full: the guest should answer "retry later".
    Overloaded(String),
    /// The engine failed while running.
    Runtime(String),
}

/// The future of one compute call.
pub type ComputeFuture<'a> = Pin<Box<dyn Future<Output = Result<Tensors, ModelError>> + Send + 'a>>;

/// How the guest waits for a compute call: the model's batcher may wait for more requests only
/// when the caller's instance can still let them through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An async call (edgeinfer:nn/infer): the instance serves its other requests meanwhile.
    Waits,
    /// A synchronous call (wasi:nn, Spin's LLM interface): the instance does nothing else until
    /// it is answered.
    BlocksItsInstance,
}

/// A model a guest holds a graph of.
pub trait Model: Send + Sync {
    /// Runs one inference on named inputs, returning every output by name. `caller` says whether
    /// the calling instance can serve other requests meanwhile (see `Caller`).
    fn compute(&self, inputs: Tensors, caller: Caller) -> ComputeFuture<'_>;
}

/// A host call that gets a span of its own in the request's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracedCall {
    /// A model computation (wasi:nn, edgeinfer:nn/infer, Spin's LLM interface).
    Compute,
    /// Tokenization on the host (Spin's LLM interface).
    Tokenize,
}

/// How a host call finds the trace of the request it serves: an instance may run several
/// requests at once (WASI 0.3), so the call names the guest task it came from (the root of its
/// async call stack), when the binding can tell it.
pub trait RequestTraces: Send + Sync {
    /// A span for `call` on `model` under the request that guest task `root` serves; with no
    /// `root`, under the instance's only running request. A disabled span when tracing is off or
    /// the request cannot be told.
    fn span(&self, root: Option<GuestTaskId>, call: TracedCall, model: &str) -> tracing::Span;
}

/// Where models come from.
pub trait ModelProvider: Send + Sync {
    /// The model named `name`.
    fn model(&self, name: &str) -> Result<Arc<dyn Model>, ModelError>;
}

/// A graph handed to a guest.
pub struct GraphHandle(Arc<dyn Model>);

/// An execution context: the model it runs.
pub struct ExecutionContext(Arc<dyn Model>);

/// A wasi:nn error resource.
#[derive(Debug)]
pub struct NnError {
    code: ErrorCode,
    message: String,
}

/// Per-instance wasi:nn state: the models and which of them this component may load.
#[derive(Clone)]
pub struct NnCtx {
    models: Arc<dyn ModelProvider>,
    allowed_models: Arc<BTreeSet<String>>,
    /// The traces of the requests the instance runs, when it has them.
    traces: Option<Arc<dyn RequestTraces>>,
}

impl NnCtx {
    /// State for an instance of a component whose `ai_models` are `allowed_models`.
    pub fn new(models: Arc<dyn ModelProvider>, allowed_models: Arc<BTreeSet<String>>) -> NnCtx {
        NnCtx { models, allowed_models, traces: None }
    }

    /// The same, with compute calls traced under their requests.
    pub fn with_traces(self, traces: Arc<dyn RequestTraces>) -> NnCtx {
        NnCtx { traces: Some(traces), ..self }
    }

    /// The span of a compute call on `model` by guest task `root` (see `RequestTraces`).
    fn compute_span(&self, root: Option<GuestTaskId>, model: &str) -> tracing::Span {
        match &self.traces {
            Some(traces) if tracing::span_enabled!(tracing::Level::INFO) => {
                traces.span(root, TracedCall::Compute, model)
            }
            _ => tracing::Span::none(),
        }
    }

    /// The model `name`, when the component's `ai_models` lists it.
    fn model(&self, name: &str) -> Result<Arc<dyn Model>, Denied> {
        if !self.allowed_models.contains(name) {
            return Err(Denied::NotInAiModels(format!(
                "model {name:?} is not in this component's ai_models"
            )));
        }
        self.models.model(name).map_err(Denied::Model)
    }
}

/// Why a component cannot have a model.
enum Denied {
    /// The component's `ai_models` does not list it.
    NotInAiModels(String),
    /// The provider has no such model, or it cannot serve.
    Model(ModelError),
}

/// What the wasi:nn host functions see of the store.
pub struct NnView<'a> {
    pub ctx: &'a mut NnCtx,
    pub table: &'a mut ResourceTable,
}

/// Store data that carries wasi:nn state.
pub trait NnStoreView: Send {
    fn nn(&mut self) -> NnView<'_>;
}

/// Marker tying the generated traits to `NnView`.
struct WasiNn;

impl HasData for WasiNn {
    type Data<'a> = NnView<'a>;
}

/// Adds wasi:nn and `edgeinfer:nn/infer` to the linker.
pub fn add_to_linker<T: NnStoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::Ml::add_to_linker::<T, WasiNn>(linker, T::nn)?;
    infer::add_to_linker(linker)
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    fn error<T>(&mut self, code: ErrorCode, message: impl Into<String>) -> NnResult<T> {
        let message = message.into();
        tracing::debug!(?code, %message, "wasi:nn error");
        Ok(Err(self.table.push(NnError { code, message })?))
    }

    fn model_error<T>(&mut self, error: ModelError) -> NnResult<T> {
        match error {
            ModelError::NotFound(m) => self.error(ErrorCode::NotFound, m),
            ModelError::Unavailable(m) | ModelError::Runtime(m) => self.error(ErrorCode::RuntimeError, m),
            ModelError::InvalidArgument(m) => self.error(ErrorCode::InvalidArgument, m),
            // wasi:nn has no "busy" code: a full queue is a runtime error whose data starts with
            // `overloaded:`, which handlers answer as 503 Overloaded (components/text-handler).
            ModelError::Overloaded(m) => self.error(ErrorCode::RuntimeError, format!("overloaded: {m}")),
        }
    }
}

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<GraphHandle>> {
        // Models come from the operator's configuration, never from guest bytes.
        self.error(ErrorCode::Security, "loading graphs from bytes is disabled; use load-by-name")
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<GraphHandle>> {
        match self.ctx.model(&name) {
            Ok(model) => Ok(Ok(self.table.push(GraphHandle(model))?)),
            Err(Denied::NotInAiModels(message)) => self.error(ErrorCode::Security, message),
            Err(Denied::Model(e)) => self.model_error(e),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<GraphHandle>,
    ) -> NnResult<Resource<ExecutionContext>> {
        let model = self.table.get(&graph)?.0.clone();
        Ok(Ok(self.table.push(ExecutionContext(model))?))
    }

    fn drop(&mut self, graph: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    /// Runs the inference where the provider sends it: the calling instance waits (its call into
    /// wasi:nn is synchronous), the async runtime and every other instance keep going.
    async fn compute(
        &mut self,
        context: Resource<ExecutionContext>,
        inputs: Vec<(String, Resource<TensorData>)>,
    ) -> NnResult<Vec<(String, Resource<TensorData>)>> {
        // The inputs are owned (`list<named-tensor>`): the call takes them out of the table, with
        // no copy, and nothing of them stays behind in a long-lived instance.
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            tensors.push((name, self.table.delete(tensor)?));
        }
        let model = self.table.get(&context)?.0.clone();
        // A synchronous binding does not say which guest task called: the instance's only
        // running request, when it has one.
        let span = self.ctx.compute_span(None, "wasi:nn");
        match model.compute(tensors, Caller::BlocksItsInstance).instrument(span).await {
            Ok(outputs) if outputs.iter().any(|(_, t)| t.ty == ElementType::Bytes) => {
                let name = outputs.iter().find(|(_, t)| t.ty == ElementType::Bytes).map(|(n, _)| n.clone());
                let message =
                    format!("output {name:?} is BYTES (strings), which wasi:nn tensors cannot carry");
                self.error(ErrorCode::InvalidArgument, message)
            }
            Ok(outputs) => {
                let mut handles = Vec::with_capacity(outputs.len());
                for (name, tensor) in outputs {
                    handles.push((name, self.table.push(tensor)?));
                }
                Ok(Ok(handles))
            }
            Err(e) => self.model_error(e),
        }
    }

    fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: tensor::TensorDimensions,
        ty: tensor::TensorType,
        data: tensor::TensorData,
    ) -> wasmtime::Result<Resource<TensorData>> {
        Ok(self.table.push(TensorData::new(dimensions, element_type(ty), data))?)
    }

    fn dimensions(&mut self, tensor: Resource<TensorData>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.shape.clone())
    }

    fn ty(&mut self, tensor: Resource<TensorData>) -> wasmtime::Result<tensor::TensorType> {
        Ok(tensor_type(self.table.get(&tensor)?.ty).expect("compute hands no BYTES tensor to the guest"))
    }

    /// The one copy of an output on its way to the guest: `list<u8>` is returned by value.
    fn data(&mut self, tensor: Resource<TensorData>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.bytes.to_vec())
    }

    fn drop(&mut self, tensor: Resource<TensorData>) -> wasmtime::Result<()> {
        self.table.delete(tensor)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

/// The engine's element type of a wasi:nn (and edgeinfer:nn/infer) tensor type.
fn element_type(ty: tensor::TensorType) -> ElementType {
    match ty {
        tensor::TensorType::Fp16 => ElementType::F16,
        tensor::TensorType::Fp32 => ElementType::F32,
        tensor::TensorType::Fp64 => ElementType::F64,
        tensor::TensorType::Bf16 => ElementType::BF16,
        tensor::TensorType::U8 => ElementType::U8,
        tensor::TensorType::I32 => ElementType::I32,
        tensor::TensorType::I64 => ElementType::I64,
    }
}

/// The wasi:nn tensor type of an element type; none for BYTES, which wasi:nn cannot carry.
fn tensor_type(ty: ElementType) -> Option<tensor::TensorType> {
    Some(match ty {
        ElementType::F16 => tensor::TensorType::Fp16,
        ElementType::F32 => tensor::TensorType::Fp32,
        ElementType::F64 => tensor::TensorType::Fp64,
        ElementType::BF16 => tensor::TensorType::Bf16,
        ElementType::U8 => tensor::TensorType::U8,
        ElementType::I32 => tensor::TensorType::I32,
        ElementType::I64 => tensor::TensorType::I64,
        ElementType::Bytes => return None,
    })
}

mod infer;

#[cfg(test)]
mod tests;
