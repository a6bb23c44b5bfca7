//! `edgeinfer:nn/infer` (wit/deps/edgeinfer-nn/nn.wit): the same models and rules as wasi:nn, behind one
//! `async func`. A guest's call is lowered asynchronously, so the calling task waits for the
//! model while its instance takes other requests: one instance serves every request waiting on a
//! model instead of one instance each.

use tracing::Instrument;
use wasmtime::AsContextMut;
use wasmtime::component::{Accessor, Linker};

use crate::provider::{Caller, Denied, ModelError, NnCtx, NnStoreView, NnView, WasiNn};
use crate::wasi_nn::{element_type, tensor_type};
use edgeinfer_tensor::TensorData;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        inline: "package edgeinfer:host; world infer-host { import edgeinfer:nn/infer@0.1.0; }",
        imports: { default: trappable },
        // infer's `tensor-type` is wasi:nn's: the one binding of it, and its one conversion.
        with: { "wasi:nn/tensor": crate::wasi_nn::bindings::wasi::nn::tensor },
    });
}

use bindings::edgeinfer::nn::infer::{self, Error, Tensor};

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
        // The instance's state is copied out (a few `Arc`s): the wait below holds no store access.
        // The root of the caller's async call stack is the task of the request it serves.
        let (ctx, root) = store.with(|mut access| {
            let root = access.as_context_mut().async_call_stack().ok().and_then(|stack| stack.last());
            (access.get().ctx.clone(), root)
        });
        let span = ctx.compute_span(root, &model);
        Ok(compute(&ctx, &model, inputs, outputs).instrument(span).await)
    }
}

/// One `compute` call of a component with state `ctx`.
async fn compute(
    ctx: &NnCtx,
    model: &str,
    inputs: Vec<(String, Tensor)>,
    outputs: Vec<String>,
) -> Result<Vec<(String, Tensor)>, Error> {
    let found = ctx.model(model).map_err(|denied| match denied {
        Denied::NotInAiModels(message) => Error::Security(message),
        Denied::Model(e) => error(e),
    });
    let found = found.inspect_err(|e| tracing::debug!(?e, "infer error"))?;
    // The inputs were lifted into host memory once; the engine takes them without a copy.
    let inputs =
        inputs.into_iter().map(|(name, t)| (name, TensorData::new(t.dimensions, element_type(t.ty), t.data)));
    // An async call: the instance serves its other requests while this one waits.
    let computed = found.compute(inputs.collect(), Caller::Waits).await.map_err(error)?;
    let selected = edgeinfer_tensor::select_outputs(computed, &outputs)
        .map_err(|m| Error::InvalidArgument(format!("model {model:?}: {m}")))?;
    selected
        .into_iter()
        .map(|(name, tensor)| match tensor_type(tensor.ty) {
            // The one copy of an output on its way to the guest.
            Some(ty) => Ok((name, Tensor { dimensions: tensor.shape, ty, data: tensor.bytes.to_vec() })),
            None => Err(Error::InvalidArgument(format!(
                "output {name:?} is BYTES (strings), which infer tensors cannot carry"
            ))),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::tests::provider;

    fn tensor(bytes: Vec<u8>) -> Tensor {
        Tensor {
            dimensions: vec![1, bytes.len() as u32],
            ty: crate::wasi_nn::tensor::TensorType::U8,
            data: bytes,
        }
    }

    #[tokio::test]
    async fn compute_runs_a_listed_model_and_answers_the_outputs_asked_for() {
        let ctx = NnCtx::new(provider(), Arc::new(["echo".to_string()].into()));
        let inputs = || vec![("a".to_string(), tensor(vec![1, 2])), ("b".to_string(), tensor(vec![3]))];
        let all = compute(&ctx, "echo", inputs(), vec![]).await.unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a-out", "b-out"]);
        assert_eq!((all[0].1.dimensions.clone(), all[0].1.data.clone()), (vec![2], vec![1, 2]));
        let one = compute(&ctx, "echo", inputs(), vec!["b-out".into()]).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].0.as_str(), one[0].1.data.clone()), ("b-out", vec![3]));
        let missing = compute(&ctx, "echo", inputs(), vec!["c-out".into()]).await.unwrap_err();
        assert!(
            matches!(&missing, Error::InvalidArgument(m) if m.contains("no output \"c-out\"")),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn each_refusal_has_its_case() {
        let allowed = ["busy", "picky", "broken", "gone"].map(String::from);
        let ctx = NnCtx::new(provider(), Arc::new(allowed.into()));
        let call =
            |model: &'static str| compute(&ctx, model, vec![("x".to_string(), tensor(vec![0]))], vec![]);
        assert!(matches!(call("echo").await, Err(Error::Security(m)) if m.contains("ai_models")));
        assert!(matches!(call("busy").await, Err(Error::Overloaded(m)) if m == "queue full"));
        assert!(matches!(call("picky").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(call("broken").await, Err(Error::Unavailable(m)) if m.contains("failed to load")));
        assert!(matches!(call("gone").await, Err(Error::NotFound(_))));
    }
}
