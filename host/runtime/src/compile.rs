//! The wasmtime engine and an on-disk cache of compiled components keyed by content hash, so a
//! restart or a redeploy of unchanged bytes skips Cranelift.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use edgeinfer_config::runtime_config::MAX_MEMORY_BYTES;

/// How often the engine's epoch advances: running guests yield this often, and deadlines are
/// checked at this resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine all components share. `metered`: guest code counts fuel (needed when any
/// component has a fuel budget; it makes all guest code somewhat slower, so it is off otherwise).
pub fn engine(metered: bool) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.consume_fuel(metered);
    // Guests that overrun their deadline are interrupted at the next loop header or call.
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    // Bounded up front: instances beyond these wait rather than exhaust the host.
    pool.total_component_instances(256);
    pool.total_memories(512);
    pool.total_tables(512);
    pool.total_core_instances(2048);
    pool.max_memory_size(MAX_MEMORY_BYTES as usize);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(Engine::new(&config)?)
}

/// Advances the engine's epoch every `EPOCH_TICK` until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where compiled components are stored, and whether it was used.
#[derive(Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// How a component was obtained, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl CompileCache {
    pub fn new(dir: PathBuf) -> CompileCache {
        CompileCache { dir }
    }

    /// Compiles `bytes`, or loads the cached artifact compiled earlier by a compatible engine.
    pub fn load(&self, engine: &Engine, name: &str, bytes: &[u8]) -> Result<(Component, CacheOutcome)> {
        let key = cache_key(engine, bytes);
        let path = self.dir.join(format!("{key}.cwasm"));
        let started = Instant::now();
        if path.is_file() {
            // SAFETY: the file was written by `precompile_component` of an engine with the same
            // compatibility hash (part of the key), in a directory only this user writes.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    tracing::info!(
                        component = name,
                        ms = started.elapsed().as_millis() as u64,
                        "compiled component loaded from cache"
                    );
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(e) => {
                    tracing::warn!(component = name, "ignoring unusable cache entry {}: {e}", path.display())
                }
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot compile component {name}"))?;
        std::fs::create_dir_all(&self.dir)?;
        let partial = self.dir.join(format!(".{key}.{}.partial", std::process::id()));
        std::fs::write(&partial, &compiled)?;
        std::fs::rename(&partial, &path)?;
        // SAFETY: produced just above by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled) }?;
        tracing::info!(
            component = name,
            ms = started.elapsed().as_millis() as u64,
            "component compiled and cached"
        );
        Ok((component, CacheOutcome::Miss))
    }
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut HashWriter(&mut hasher));
    hex::encode(hasher.finalize())
}

/// Feeds `Hash` output into sha256.
struct HashWriter<'a>(&'a mut Sha256);

impl std::hash::Hasher for HashWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
