//! The host's own `wasi:nn` (0.2.0-rc-2024-10-28) for wasmtime components, in the shape of
//! wasmtime-wasi-nn: per-instance state ([`NnCtx`]) plus the store's resource table ([`NnView`]).
//! Which models exist and how they run is a [`ModelProvider`]'s business (the host's model
//! registry and batchers, or a fake in tests); this crate holds the guest-facing rules:
//! `load` from bytes is refused, `load-by-name` is limited to the component's models, owned
//! inputs are taken without a copy, and each failure has its wasi:nn error code. The same models
//! and rules are offered as `edgeinfer:nn/infer` ([`infer`]), whose `compute` is an
//! `async func` that lets the caller's instance serve other requests while it waits.

mod infer;
mod provider;
mod wasi_nn;

use wasmtime::component::Linker;

pub use edgeinfer_tensor::{ElementType, TensorData};
pub use provider::{
    Caller, ComputeFuture, Model, ModelError, ModelProvider, NnCtx, NnStoreView, NnView, RequestTraces,
    Tensors, TracedCall,
};
pub use wasi_nn::{ErrorCode, ExecutionContext, GraphHandle, NnError};

/// Adds wasi:nn and `edgeinfer:nn/infer` to the linker.
pub fn add_to_linker<T: NnStoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasi_nn::add_to_linker(linker)?;
    infer::add_to_linker(linker)
}

#[cfg(test)]
mod tests;
