//! The engine room: how a model runs (`engines`: the `Engine` trait, tensors, ONNX Runtime), how
//! concurrent calls share a run (`batching`: per-model queue, bounded, with engine threads), and
//! which models exist (`registry`: load at start, failures kept, reloads). Callers above (wasi:nn,
//! the KServe API) only queue tensors and await their share of a batch. Model files are verified
//! by their sha256 (`digest`: remembered across starts when the host asks).

pub mod batching;
pub mod digest;
pub mod engines;
pub mod registry;

pub use digest::sha256_file;
