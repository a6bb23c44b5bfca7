//! wasi:nn (0.2.0-rc-2024-10-28) over the provider's models: its resources, its host functions
//! and one table between its tensor types and the engine's element types.

use std::sync::Arc;

use tracing::Instrument;
use wasmtime::component::{Linker, Resource};

use edgeinfer_tensor::{ElementType, TensorData};

use crate::provider::{Caller, Denied, Model, ModelError, NnStoreView, NnView, WasiNn};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/wasi-nn",
        world: "ml",
        with: {
            "wasi:nn/graph.graph": crate::wasi_nn::GraphHandle,
            "wasi:nn/tensor.tensor": edgeinfer_tensor::TensorData,
            "wasi:nn/inference.graph-execution-context": crate::wasi_nn::ExecutionContext,
            "wasi:nn/errors.error": crate::wasi_nn::NnError,
        },
        imports: {
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            default: trappable,
        },
    });
}

pub(crate) use bindings::wasi::nn::tensor;
use bindings::wasi::nn::{errors, graph, inference};
pub use errors::ErrorCode;

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
pub(crate) fn element_type(ty: tensor::TensorType) -> ElementType {
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
pub(crate) fn tensor_type(ty: ElementType) -> Option<tensor::TensorType> {
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
