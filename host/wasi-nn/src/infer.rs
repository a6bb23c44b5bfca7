//! `edgeinfer:nn/infer` (wit/text.wit): the same models and rules as wasi:nn, behind one
//! `async func`. A guest's call is lowered asynchronously, so the calling task waits for the
//! model while its instance takes other requests: one instance serves every request waiting on a
//! model instead of one instance each.

use wasmtime::component::{Accessor, Linker};

use crate::{ElementType, ModelError, NnStoreView, NnView, TensorData, WasiNn};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        inline: "package edgeinfer:host; world infer-host { import edgeinfer:nn/infer@0.1.0; }",
        imports: { default: trappable },
    });
}

use bindings::edgeinfer::nn::infer::{self, Error, Tensor, TensorType};

/// Adds `edgeinfer:nn/infer` to the linker.
pub fn add_to_linker<T: NnStoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    infer::add_to_linker::<T, WasiNn>(linker, T::nn)
}

impl infer::Host for NnView<'_> {}

impl<U> infer::HostWithStore<U> for WasiNn {
    async fn compute(
        store: &Accessor<U, Self>,
        model: String,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Tensor)>, Error>> {
        let found = store.with(|mut access| {
            let view = access.get();
            if !view.ctx.allowed_models.contains(&model) {
                return Err(Error::Security(format!("model {model:?} is not in this component's ai_models")));
            }
            view.ctx.models.model(&model).map_err(error)
        });
        let found = match found {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        // The inputs were lifted into host memory once; the engine takes them without a copy.
        let inputs = inputs
            .into_iter()
            .map(|(name, t)| (name, TensorData::new(t.dimensions, element_type(t.ty), t.data)));
        let computed = match found.compute(inputs.collect()).await {
            Ok(computed) => computed,
            Err(e) => return Ok(Err(error(e))),
        };
        if let Some(missing) = outputs.iter().find(|name| !computed.iter().any(|(n, _)| n == *name)) {
            return Ok(Err(Error::InvalidArgument(format!("model {model:?} has no output {missing:?}"))));
        }
        let mut answered =
            Vec::with_capacity(if outputs.is_empty() { computed.len() } else { outputs.len() });
        for (name, tensor) in computed {
            if !outputs.is_empty() && !outputs.contains(&name) {
                continue;
            }
            let Some(ty) = tensor_type(tensor.ty) else {
                let message = format!("output {name:?} is BYTES (strings), which infer tensors cannot carry");
                return Ok(Err(Error::InvalidArgument(message)));
            };
            // The one copy of an output on its way to the guest.
            answered.push((name, Tensor { dimensions: tensor.shape, ty, data: tensor.bytes.to_vec() }));
        }
        Ok(Ok(answered))
    }
}

fn error(error: ModelError) -> Error {
    match error {
        ModelError::NotFound(m) => Error::NotFound(m),
        ModelError::Unavailable(m) => Error::Unavailable(m),
        ModelError::InvalidArgument(m) => Error::InvalidArgument(m),
        ModelError::Overloaded(m) => Error::Overloaded(m),
        ModelError::Runtime(m) => Error::Runtime(m),
    }
}

fn element_type(ty: TensorType) -> ElementType {
    match ty {
        TensorType::Fp16 => ElementType::F16,
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::Bf16 => ElementType::BF16,
        TensorType::U8 => ElementType::U8,
        TensorType::I32 => ElementType::I32,
        TensorType::I64 => ElementType::I64,
    }
}

fn tensor_type(ty: ElementType) -> Option<TensorType> {
    Some(match ty {
        ElementType::F16 => TensorType::Fp16,
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::BF16 => TensorType::Bf16,
        ElementType::U8 => TensorType::U8,
        ElementType::I32 => TensorType::I32,
        ElementType::I64 => TensorType::I64,
        ElementType::Bytes => return None,
    })
}
