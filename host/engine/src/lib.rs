//! The engine room: how a model runs (`engines`: the `Engine` trait, tensors, ONNX Runtime), how
//! concurrent calls share a run (`batching`: per-model queue, bounded, with engine threads), and
//! which models exist (`registry`: load at start, failures kept, reloads). Callers above (wasi:nn,
//! the KServe API) only queue tensors and await their share of a batch.

pub mod batching;
pub mod engines;
pub mod registry;

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The sha256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
