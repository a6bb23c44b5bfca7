//! The host's own `wasi:nn` (0.2.0-rc-2024-10-28): graphs come from the shared registry,
//! `load-by-name` is limited to the component's `ai_models`, `compute` goes through the model's
//! batcher.

use std::collections::BTreeSet;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use edgeinfer_engine::engines::{ElementType, EngineError, TensorData};
use edgeinfer_engine::registry::{GraphRegistry, ModelSlot};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasi-nn",
        world: "ml",
        with: {
            "wasi:nn/graph.graph": super::GraphHandle,
            "wasi:nn/tensor.tensor": edgeinfer_engine::engines::TensorData,
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
use errors::ErrorCode;

/// A graph handed to a guest: the model, whose serving graph is looked up at each compute so that
/// a reloaded model serves handles taken before the reload.
pub struct GraphHandle(Arc<ModelSlot>);

/// An execution context: the model it runs.
pub struct ExecutionContext(Arc<ModelSlot>);

/// A wasi:nn error resource.
pub struct NnError {
    code: ErrorCode,
    message: String,
}

/// Per-instance wasi:nn state: the shared registry and what this component may load.
pub struct NnCtx {
    registry: Arc<GraphRegistry>,
    allowed_models: Arc<BTreeSet<String>>,
}

impl NnCtx {
    pub fn new(registry: Arc<GraphRegistry>, allowed_models: Arc<BTreeSet<String>>) -> NnCtx {
        NnCtx { registry, allowed_models }
    }
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
pub struct WasiNn;

impl HasData for WasiNn {
    type Data<'a> = NnView<'a>;
}

/// Adds wasi:nn to the linker.
pub fn add_to_linker<T: NnStoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::Ml::add_to_linker::<T, WasiNn>(linker, T::nn)
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    fn error<T>(&mut self, code: ErrorCode, message: impl Into<String>) -> NnResult<T> {
        let message = message.into();
        tracing::debug!(?code, %message, "wasi:nn error");
        Ok(Err(self.table.push(NnError { code, message })?))
    }
}

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<GraphHandle>> {
        // Models come from the operator's runtime config, never from guest bytes.
        self.error(ErrorCode::Security, "loading graphs from bytes is disabled; use load-by-name")
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<GraphHandle>> {
        if !self.ctx.allowed_models.contains(&name) {
            return self
                .error(ErrorCode::Security, format!("model {name:?} is not in this component's ai_models"));
        }
        if let Some(failed) = self.ctx.registry.failure(&name) {
            let message = format!("model {name:?} is unavailable: it failed to load: {}", failed.error);
            return self.error(ErrorCode::RuntimeError, message);
        }
        let Some(slot) = self.ctx.registry.slot(&name).cloned() else {
            return self.error(ErrorCode::NotFound, format!("no model named {name:?} is loaded"));
        };
        Ok(Ok(self.table.push(GraphHandle(slot))?))
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<GraphHandle>,
    ) -> NnResult<Resource<ExecutionContext>> {
        let graph = self.table.get(&graph)?.0.clone();
        Ok(Ok(self.table.push(ExecutionContext(graph))?))
    }

    fn drop(&mut self, graph: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    /// Queues the inference on the model's batcher: the calling instance waits (its call into
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
        let slot = self.table.get(&context)?.0.clone();
        let Some(graph) = slot.graph() else {
            return self.error(ErrorCode::RuntimeError, format!("model {:?} is unavailable", slot.name));
        };
        let result = graph.batcher.compute(tensors).await;
        match result {
            Ok(outputs) => {
                let mut handles = Vec::with_capacity(outputs.len());
                for (name, tensor) in outputs {
                    handles.push((name, self.table.push(tensor)?));
                }
                Ok(Ok(handles))
            }
            Err(EngineError::InvalidArgument(m)) => self.error(ErrorCode::InvalidArgument, m),
            Err(EngineError::Runtime(m)) => self.error(ErrorCode::RuntimeError, m),
            // wasi:nn has no "busy" code: a full queue is a runtime error whose data starts with
            // `overloaded:`, which handlers answer as 503 Overloaded (components/text-handler).
            Err(e @ EngineError::Overloaded(_)) => self.error(ErrorCode::RuntimeError, e.to_string()),
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
        let tensor = TensorData::new(dimensions, element_type(ty), data);
        Ok(self.table.push(tensor)?)
    }

    fn dimensions(&mut self, tensor: Resource<TensorData>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.shape.clone())
    }

    fn ty(&mut self, tensor: Resource<TensorData>) -> wasmtime::Result<tensor::TensorType> {
        Ok(wit_type(self.table.get(&tensor)?.ty))
    }

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

fn wit_type(ty: ElementType) -> tensor::TensorType {
    match ty {
        ElementType::F16 => tensor::TensorType::Fp16,
        ElementType::F32 => tensor::TensorType::Fp32,
        ElementType::F64 => tensor::TensorType::Fp64,
        ElementType::BF16 => tensor::TensorType::Bf16,
        ElementType::U8 => tensor::TensorType::U8,
        ElementType::I32 => tensor::TensorType::I32,
        ElementType::I64 => tensor::TensorType::I64,
    }
}
