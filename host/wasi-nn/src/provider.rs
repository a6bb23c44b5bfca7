//! What the host's model interfaces run on: models from a [`ModelProvider`], the component's
//! allowed models and its request traces ([`NnCtx`]), and the store's view of them ([`NnView`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::component::{GuestTaskId, HasData, ResourceTable};

use edgeinfer_tensor::TensorData;

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
    pub(crate) fn compute_span(&self, root: Option<GuestTaskId>, model: &str) -> tracing::Span {
        match &self.traces {
            Some(traces) if tracing::span_enabled!(tracing::Level::INFO) => {
                traces.span(root, TracedCall::Compute, model)
            }
            _ => tracing::Span::none(),
        }
    }

    /// The model `name`, when the component's `ai_models` lists it.
    pub(crate) fn model(&self, name: &str) -> Result<Arc<dyn Model>, Denied> {
        if !self.allowed_models.contains(name) {
            return Err(Denied::NotInAiModels(format!(
                "model {name:?} is not in this component's ai_models"
            )));
        }
        self.models.model(name).map_err(Denied::Model)
    }
}

/// Why a component cannot have a model.
pub(crate) enum Denied {
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
pub(crate) struct WasiNn;

impl HasData for WasiNn {
    type Data<'a> = NnView<'a>;
}
