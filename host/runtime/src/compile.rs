//! The wasmtime engine and an on-disk cache of compiled components keyed by content hash, so a
//! restart or a redeploy of unchanged bytes skips Cranelift.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use edgeinfer_config::precompiled::EngineProfile;
pub use edgeinfer_config::runtime_config::MAX_MEMORY_BYTES;

/// How often the engine's epoch advances: running guests yield this often, and deadlines are
/// checked at this resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The target triple of the machine this host runs on, as wasmtime names it.
pub fn host_target() -> &'static str {
    if cfg!(target_arch = "aarch64") { "aarch64-unknown-linux-gnu" } else { "x86_64-unknown-linux-gnu" }
}

/// The targets `edgeinfer build --precompile` compiles for, by short name or triple.
pub const PRECOMPILE_TARGETS: [(&str, &str); 2] =
    [("x86_64", "x86_64-unknown-linux-gnu"), ("aarch64", "aarch64-unknown-linux-gnu")];

/// Bumped whenever `engine_config` changes what code it generates, so that precompiled files
/// and cache entries of the old settings are not offered to the new engine.
const ENGINE_REVISION: u32 = 1;

/// The engine settings, for this host (`target` None: the running CPU's features) or for
/// precompiling to `target` (that architecture's baseline, which every CPU of it runs).
/// `metered`: guest code counts fuel (needed when any component has a fuel budget; it makes all
/// guest code somewhat slower, so it is off otherwise).
fn engine_config(metered: bool, target: Option<&str>) -> Result<Config> {
    let mut config = Config::new();
    if let Some(target) = target {
        config.target(target)?;
    }
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
    Ok(config)
}

/// What code compiled by `engine_config(metered, ..)` for `target` is: the profile precompiled
/// files are labelled with and the compile cache is keyed by.
pub fn engine_profile(metered: bool, target: &str) -> EngineProfile {
    let settings = format!(
        "revision={ENGINE_REVISION} component-model async-component-model epoch-interruption fuel={metered} pooling-max-memory={MAX_MEMORY_BYTES}"
    );
    EngineProfile {
        wasmtime: wasmtime_environ::VERSION.to_string(),
        target: target.to_string(),
        engine: hex::encode(Sha256::digest(settings.as_bytes())),
    }
}

/// Builds the engine all components share, and its profile.
pub fn engine(metered: bool) -> Result<(Engine, EngineProfile)> {
    let engine = Engine::new(&engine_config(metered, None)?)?;
    Ok((engine, engine_profile(metered, host_target())))
}

/// Compiles the (composed) component `bytes` for `target` with the settings a host with
/// `metered` uses; the bytes wasmtime loads with `Component::deserialize`.
pub fn precompile(bytes: &[u8], metered: bool, target: &str) -> Result<Vec<u8>> {
    let engine = Engine::new(&engine_config(metered, Some(target))?)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile for {target}"))?;
    engine.precompile_component(bytes).map_err(anyhow::Error::from)
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

/// Where compiled components are stored (by the composed component's sha256 and the engine's
/// profile): compiled here, or precompiled elsewhere and imported from a verified artifact.
#[derive(Clone)]
pub struct CompileCache {
    dir: PathBuf,
    profile: EngineProfile,
}

/// What `CompileCache::import` did with precompiled code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Kept: loading that version will use it.
    Taken,
    /// The cache had the version compiled already.
    AlreadyCompiled,
    /// Compiled with other engine settings (say, fuel counting): not used.
    OtherEngine,
}

/// How a component was obtained, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl CompileCache {
    /// The cache in `dir` for an engine of `profile`.
    pub fn new(dir: PathBuf, profile: EngineProfile) -> CompileCache {
        CompileCache { dir, profile }
    }

    /// Keeps `compiled`, code precompiled elsewhere for the component whose composed bytes have
    /// sha256 `composed_sha256`, so that loading that version skips Cranelift. Only for code from
    /// a source the host trusts to run native code (a signed artifact); wasmtime still checks that
    /// it was compiled for this engine (version, target, CPU features, settings) when it is
    /// loaded, and the component is compiled here when it was not.
    pub fn import(
        &self,
        composed_sha256: &str,
        profile: &EngineProfile,
        compiled: &Path,
    ) -> Result<Imported> {
        anyhow::ensure!(
            edgeinfer_config::precompiled::is_sha256_hex(composed_sha256),
            "{composed_sha256:?} is not a sha256"
        );
        if *profile != self.profile {
            return Ok(Imported::OtherEngine);
        }
        let path = self.dir.join(format!("{}.cwasm", cache_key(composed_sha256, profile)));
        if path.is_file() {
            return Ok(Imported::AlreadyCompiled);
        }
        std::fs::create_dir_all(&self.dir)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let partial = self.dir.join(format!(".{composed_sha256}.{}-{unique}.import", std::process::id()));
        let copied = std::fs::read(compiled)
            .and_then(|bytes| std::fs::write(&partial, bytes))
            .and_then(|()| std::fs::rename(&partial, &path));
        if copied.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        copied.with_context(|| format!("cannot keep {} in the compile cache", compiled.display()))?;
        Ok(Imported::Taken)
    }

    /// Compiles `bytes` (whose sha256 is `sha256`, the version the caller has computed), or loads
    /// the cached artifact compiled earlier by an engine of this profile.
    pub fn load(
        &self,
        engine: &Engine,
        name: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, CacheOutcome)> {
        let key = cache_key(sha256, &self.profile);
        let path = self.dir.join(format!("{key}.cwasm"));
        let started = Instant::now();
        if path.is_file() {
            // SAFETY: the file was written by `precompile_component` of an engine of the same
            // profile (part of the key): this one, or a build machine's whose artifact was signed
            // by a key this host trusts (`import`), in a directory only this user writes.
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

/// The cache entry of a composed component (by its sha256) compiled for `profile`.
fn cache_key(composed_sha256: &str, profile: &EngineProfile) -> String {
    let EngineProfile { wasmtime, target, engine } = profile;
    hex::encode(Sha256::digest(format!("{composed_sha256} {wasmtime} {target} {engine}").as_bytes()))
}
