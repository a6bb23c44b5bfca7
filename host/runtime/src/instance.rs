//! Per-instance store data: WASI (env, read-only file mounts, stdio), wasi:http and wasi:nn, and
//! how a component's instances are created, reused and retired (`ProxyHandler` worker policy).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wasmtime::component::{GuestTaskId, ResourceTable};
use wasmtime::{
    Engine, ResourceLimiter, Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::outbound::{AllowedHost, OutboundPolicy};
use crate::trace::Context as TraceContext;
use edgeinfer_llm::{EmbeddingModels, LlmCtx, LlmStoreView};
use edgeinfer_wasi_nn::{ModelProvider, NnCtx, NnStoreView, NnView, RequestTraces, TracedCall};

/// Everything a component instance's store holds.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    nn: NnCtx,
    llm: LlmCtx,
    outbound: OutboundPolicy,
    limits: MemoryAccount,
    /// Guest code still running after this is interrupted (the instance traps).
    interrupt_at: Instant,
    /// The requests running on this instance (a trap ends them all), shared with the host calls
    /// that trace under them.
    running: RunningRequests,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

impl NnStoreView for InstanceState {
    fn nn(&mut self) -> NnView<'_> {
        NnView { ctx: &mut self.nn, table: &mut self.table }
    }
}

impl LlmStoreView for InstanceState {
    fn llm(&mut self) -> &mut LlmCtx {
        &mut self.llm
    }
}

/// How to build a store for one component: its manifest settings, resolved.
pub struct InstanceSpec {
    pub component_id: String,
    pub environment: Vec<(String, String)>,
    /// (host directory, guest path), read-only.
    pub mounts: Vec<(PathBuf, String)>,
    pub allowed_models: Arc<BTreeSet<String>>,
    /// The models its wasi:nn loads from.
    pub models: Arc<dyn ModelProvider>,
    /// Spin's LLM interface's embedding models, by the names apps use.
    pub embeddings: Arc<EmbeddingModels>,
    /// What each instance is told about the host and its models (`EDGEINFER_HOST_INFO`).
    pub host_info: HostInfo,
    /// Where outbound HTTP may go.
    pub allowed_outbound_hosts: Arc<Vec<AllowedHost>>,
    /// Linear memory cap per instance.
    pub max_memory_bytes: usize,
    /// How long after a request starts its guest code is interrupted (the request timeout plus a
    /// grace, so that the timeout answers 504 first and the trap then stops a runaway guest).
    pub interrupt_after: Duration,
    /// Fuel for instantiation and for each request, when the component has a budget.
    pub fuel: Option<u64>,
}

impl InstanceSpec {
    /// A fresh store for one instance.
    pub fn new_store(&self, engine: &Engine) -> anyhow::Result<Store<InstanceState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr().envs(&self.environment);
        wasi.env(HOST_INFO_VARIABLE, self.host_info.render(&self.allowed_models));
        for (host, guest) in &self.mounts {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
                .map_err(|e| anyhow::anyhow!("cannot mount {} at {guest}: {e}", host.display()))?;
        }
        let running = RunningRequests::default();
        let traces: Arc<dyn RequestTraces> = Arc::new(running.clone());
        let state = InstanceState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            nn: NnCtx::new(self.models.clone(), self.allowed_models.clone()).with_traces(traces.clone()),
            llm: LlmCtx::new(self.models.clone(), self.embeddings.clone(), self.allowed_models.clone())
                .with_traces(traces),
            outbound: OutboundPolicy::new(self.allowed_outbound_hosts.clone(), {
                let running = running.clone();
                Arc::new(move || running.trace_of(None))
            }),
            limits: MemoryAccount::new(
                StoreLimitsBuilder::new().memory_size(self.max_memory_bytes).build(),
                &self.component_id,
            ),
            // Instantiation runs guest code too: it gets a request's deadline.
            interrupt_at: Instant::now() + self.interrupt_after,
            running,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        // `get_fuel` succeeds only when the engine meters fuel; then every store needs some.
        if store.get_fuel().is_ok() {
            store.set_fuel(self.fuel.unwrap_or(u64::MAX))?;
        }
        // Preemption: at every epoch tick running guest code yields to the executor, so a guest
        // that never returns cannot hold a runtime thread; past its deadline it is interrupted.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().interrupt_at {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }
}

/// A store's limits, and the linear memory its instance has grown to, summed per component in
/// `edgeinfer_instance_memory_bytes` (what guests hold: resident memory may be less, as untouched
/// pages of a memory are never loaded). Given back when the store is dropped, however it ends.
pub struct MemoryAccount {
    limits: StoreLimits,
    component: String,
    /// Bytes of linear memory counted for this store.
    bytes: usize,
    /// The last growth counted, uncounted again if wasmtime then fails to grow.
    pending: usize,
}

impl MemoryAccount {
    fn new(limits: StoreLimits, component: &str) -> MemoryAccount {
        MemoryAccount { limits, component: component.to_string(), bytes: 0, pending: 0 }
    }

    fn add(&mut self, bytes: f64) {
        metrics::gauge!(INSTANCE_MEMORY_METRIC, "component" => self.component.clone()).increment(bytes);
    }
}

/// The per-component gauge of instances' linear memory.
pub const INSTANCE_MEMORY_METRIC: &str = "edgeinfer_instance_memory_bytes";

impl ResourceLimiter for MemoryAccount {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.pending = 0;
        if allowed && desired > current {
            self.pending = desired - current;
            self.bytes += self.pending;
            self.add(self.pending as f64);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.bytes -= pending;
        self.add(-(pending as f64));
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl Drop for MemoryAccount {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.add(-(self.bytes as f64));
        }
    }
}

/// The environment variable in which each instance finds [`HostInfo`], as JSON.
pub const HOST_INFO_VARIABLE: &str = "EDGEINFER_HOST_INFO";

/// Facts a component may report about how it is served (TEI's `/info`): the host's version, the
/// component's limits, and for each model of its `ai_models` the file's sha256, device, output
/// types and batching limits. Read from the registry when an instance is created, so instances
/// created after a model reload see the new model.
pub struct HostInfo {
    pub registry: Arc<edgeinfer_engine::registry::GraphRegistry>,
    pub component_id: String,
    pub limits: edgeinfer_config::runtime_config::ComponentLimits,
}

impl HostInfo {
    /// The JSON for a component whose `ai_models` are `allowed`.
    pub fn render(&self, allowed: &BTreeSet<String>) -> String {
        let models: serde_json::Map<String, serde_json::Value> = allowed
            .iter()
            .filter_map(|name| self.registry.get(name))
            .map(|graph| {
                let limits = graph.batcher.limits();
                let outputs: serde_json::Map<String, serde_json::Value> = graph
                    .outputs
                    .iter()
                    .map(|o| (o.name.clone(), serde_json::json!(o.ty.map(|t| t.datatype()))))
                    .collect();
                let facts = serde_json::json!({
                    "sha256": graph.sha256,
                    "device": graph.device.to_string(),
                    "outputs": outputs,
                    "batching": {
                        "max_batch_size": limits.max_batch_size,
                        "max_batch_tokens": limits.max_batch_tokens,
                        "max_queue_delay_us": limits.max_queue_delay.as_micros() as u64,
                        "max_arrival_wait_us": limits.max_arrival_wait.as_micros() as u64,
                        "max_queue": limits.max_queue,
                    },
                });
                (graph.name.clone(), facts)
            })
            .collect();
        serde_json::json!({
            "host": "edgeinfer",
            "version": env!("CARGO_PKG_VERSION"),
            "component": {
                "id": self.component_id,
                "max_concurrent_requests": self.limits.max_concurrent_requests,
                "max_queued_requests": self.limits.max_queued_requests,
                "admission_wait_ms": self.limits.admission_wait_ms,
                "request_timeout_ms": self.limits.request_timeout_ms,
                "max_request_body_bytes": self.limits.max_request_body_bytes,
            },
            "models": models,
        })
        .to_string()
    }
}

/// Instance reuse policy for one component.
#[derive(Clone, Copy, Debug)]
pub struct ReusePolicy {
    /// Requests one instance serves before it is retired (bounds leaks in guest code).
    pub max_requests: usize,
    /// Requests one instance handles at once (WASI 0.3 handlers are concurrent).
    pub max_concurrent: usize,
    /// An idle instance is dropped after this long.
    pub idle_timeout: Duration,
    /// Idle instances beyond the warm ones are dropped after this long.
    pub surplus_idle: Duration,
    /// A request that has no response after this long fails.
    pub request_timeout: Duration,
}

impl Default for ReusePolicy {
    fn default() -> ReusePolicy {
        ReusePolicy {
            max_requests: 1000,
            max_concurrent: 16,
            idle_timeout: Duration::from_secs(60),
            surplus_idle: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an instance trapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrapCause {
    /// The request used up its fuel budget.
    OutOfFuel,
    /// Any other trap (unreachable, stack overflow, out of bounds...), as wasmtime words it.
    Trap(String),
}

/// What a request brings to the instance that runs it: its id, its trace context, and where the
/// instance reports why it trapped, if it does while the request runs (the request's own `handle`
/// call only learns "trapped or panicked"). The request is running until that report's receiver
/// is dropped.
pub struct RequestTicket {
    pub id: u64,
    pub trap: oneshot::Sender<TrapCause>,
    /// The span host calls for this request go under (none when it is not traced).
    pub trace: Option<TraceContext>,
}

impl RequestTicket {
    /// A ticket for request `id`, and the receiver of its trap cause.
    pub fn new(id: u64, trace: Option<TraceContext>) -> (RequestTicket, oneshot::Receiver<TrapCause>) {
        let (trap, cause) = oneshot::channel();
        (RequestTicket { id, trap, trace }, cause)
    }
}

/// The requests an instance is running, each with the guest task that serves it: where a trap
/// is reported to, and under which trace a host call goes. Shared by the instance's store data
/// and its host calls (wasi:nn, Spin's LLM interface, outbound HTTP).
#[derive(Clone, Default)]
pub struct RunningRequests(Arc<std::sync::Mutex<Vec<Running>>>);

struct Running {
    id: u64,
    /// The guest task serving it (always set by `start`; `None` only in unit tests, which cannot
    /// make a `GuestTaskId` without running a component).
    task: Option<GuestTaskId>,
    trace: Option<TraceContext>,
    trap: oneshot::Sender<TrapCause>,
}

impl RunningRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        // Each update is one statement: the list stays consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a request starting on guest task `task`; requests that have ended are let go.
    fn start(&self, ticket: RequestTicket, task: GuestTaskId) {
        let mut running = self.lock();
        running.retain(|r| !r.trap.is_closed());
        running.push(Running { id: ticket.id, task: Some(task), trace: ticket.trace, trap: ticket.trap });
    }

    /// The requests still waiting for their answer, taken out (the instance is gone).
    fn take_waiting(&self) -> Vec<Running> {
        let mut running = std::mem::take(&mut *self.lock());
        running.retain(|r| !r.trap.is_closed());
        running
    }

    /// The trace context of the request guest task `root` serves, or, when `root` is unknown or
    /// not found, of the only request running (none when several are).
    pub fn trace_of(&self, root: Option<GuestTaskId>) -> Option<TraceContext> {
        let running = self.lock();
        let live = || running.iter().filter(|r| !r.trap.is_closed());
        if let Some(found) = root.and_then(|task| live().find(|r| r.task == Some(task))) {
            return found.trace.clone();
        }
        let mut live = live();
        let only = live.next()?;
        live.next().is_none().then(|| only.trace.clone()).flatten()
    }
}

impl RequestTraces for RunningRequests {
    fn span(&self, root: Option<GuestTaskId>, call: TracedCall, model: &str) -> tracing::Span {
        let Some(parent) = self.trace_of(root) else { return tracing::Span::none() };
        let span = match call {
            TracedCall::Compute => tracing::info_span!("compute", model),
            TracedCall::Tokenize => tracing::info_span!("tokenize", model),
        };
        crate::trace::set_parent(&span, parent);
        span
    }
}

fn trap_cause(error: &wasmtime::Error) -> TrapCause {
    if error.chain().any(|c| c.downcast_ref() == Some(&wasmtime::Trap::OutOfFuel)) {
        TrapCause::OutOfFuel
    } else {
        TrapCause::Trap(error.root_cause().to_string())
    }
}

/// `ProxyHandler` state of one component: creates instances on demand.
pub struct ComponentHandler {
    pub engine: Engine,
    pub pre: ProxyPre<InstanceState>,
    pub spec: Arc<InstanceSpec>,
    pub policy: ReusePolicy,
    /// Instances created so far (observability and tests of reuse).
    pub instances_created: AtomicU64,
    /// The component's live instances, and how many of them to keep when idle.
    pub pool: Arc<WarmPool>,
}

/// Counts a component's live instances so that, once a burst is over, idle instances are
/// released quickly down to `warm` live ones, which stay for the idle timeout.
pub struct WarmPool {
    warm: usize,
    /// Most live instances.
    max: usize,
    counts: std::sync::Mutex<PoolCounts>,
}

/// Why no instance was created: the pool holds its most live instances, all of them busy. The
/// request waits for one of them (`LoadedComponent::handle`).
#[derive(Debug, thiserror::Error)]
#[error("the component has its most live instances (max_instances), all busy")]
pub struct PoolFull;

/// Updated together, so that racing instances never see one without the other.
#[derive(Default)]
struct PoolCounts {
    live: usize,
    /// Live instances already leaving as surplus (counted until they are dropped).
    leaving: usize,
}

impl WarmPool {
    /// A pool not shrunk below `warm` live instances, nor grown past `max`.
    pub fn new(warm: usize, max: usize) -> WarmPool {
        WarmPool { warm, max, counts: Default::default() }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, PoolCounts> {
        // The counts stay consistent even if a holder panicked: each update is one statement.
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts an instance about to be created, unless the pool is at `max`.
    fn reserve(&self) -> bool {
        let mut counts = self.counts();
        let room = counts.live < self.max;
        if room {
            counts.live += 1;
        }
        room
    }

    /// Takes one instance beyond `warm` out of the pool, if there is one: true when the caller
    /// may leave. Racing idle instances never take the pool below `warm`.
    fn leave_if_surplus(&self) -> bool {
        let mut counts = self.counts();
        let surplus = counts.live - counts.leaving > self.warm;
        if surplus {
            counts.leaving += 1;
        }
        surplus
    }

    fn dropped(&self, had_left: bool) {
        let mut counts = self.counts();
        counts.live -= 1;
        if had_left {
            counts.leaving -= 1;
        }
    }
}

impl HandlerState for ComponentHandler {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiration, Worker>> {
        let started = Instant::now();
        if !self.pool.reserve() {
            metrics::counter!("edgeinfer_instance_waits_total", "component" => self.spec.component_id.clone())
                .increment(1);
            return Err(wasmtime::Error::new(PoolFull));
        }
        let instance = async {
            let mut store = self.spec.new_store(&self.engine).map_err(wasmtime::Error::from_anyhow)?;
            let proxy = self.pre.instantiate_async(&mut store).await?;
            Ok::<_, wasmtime::Error>((store, proxy))
        };
        let (store, proxy) = instance.await.inspect_err(|_: &wasmtime::Error| self.pool.dropped(false))?;
        let number = self.instances_created.fetch_add(1, Ordering::Relaxed) + 1;
        let left = Arc::new(AtomicBool::new(false));
        let component = self.spec.component_id.clone();
        metrics::counter!("edgeinfer_instances_created_total", "component" => component.clone()).increment(1);
        metrics::gauge!("edgeinfer_live_instances", "component" => component).increment(1.0);
        tracing::debug!(
            component = %self.spec.component_id,
            instance = number,
            us = started.elapsed().as_micros() as u64,
            "instance created"
        );
        Ok(Instance {
            store,
            proxy,
            view: <InstanceState as WasiHttpView>::http,
            expiration: Expiration {
                policy: self.policy,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
                pool: self.pool.clone(),
                left: left.clone(),
            },
            state: Worker {
                policy: self.policy,
                component_id: self.spec.component_id.clone(),
                interrupt_after: self.spec.interrupt_after,
                fuel: self.spec.fuel,
                pool: self.pool.clone(),
                left,
            },
        })
    }
}

/// Retires an instance that idled or overran a request: an idle one after `surplus_idle` when
/// the pool has more than its warm live instances, else after `idle_timeout`.
pub struct Expiration {
    policy: ReusePolicy,
    sleep: Pin<Box<tokio::time::Sleep>>,
    pool: Arc<WarmPool>,
    /// Set when this instance left the pool as a surplus one (its `Worker` tells the pool).
    left: Arc<AtomicBool>,
}

impl WorkerExpiration for Expiration {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, start: Instant) -> Poll<()> {
        let this = self.get_mut();
        loop {
            // (deadline, whether it is the surplus one: when it passes, decide again)
            let (deadline, surplus) = match status {
                WorkerStatus::Idle => {
                    let surplus_at = start.checked_add(this.policy.surplus_idle);
                    if surplus_at.is_some_and(|at| Instant::now() < at) {
                        (surplus_at, true)
                    } else if !this.left.load(Ordering::Acquire) && this.pool.leave_if_surplus() {
                        this.left.store(true, Ordering::Release);
                        return Poll::Ready(());
                    } else {
                        // Warm: the idle timeout, never before the surplus deadline.
                        (start.checked_add(this.policy.idle_timeout.max(this.policy.surplus_idle)), false)
                    }
                }
                WorkerStatus::Requests | WorkerStatus::PostReturn => {
                    (start.checked_add(this.policy.request_timeout), false)
                }
            };
            let Some(deadline) = deadline else { return Poll::Pending };
            let deadline = tokio::time::Instant::from_std(deadline);
            if this.sleep.deadline() != deadline {
                this.sleep.as_mut().reset(deadline);
            }
            match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) if surplus => continue,
                other => return other,
            }
        }
    }
}

/// wasmtime-wasi-http's error for a worker whose task ended without finishing (a panic, or the
/// runtime cancelling it at shutdown).
const DROPPED_WORKER: &str = "worker panicked";

/// Decides how many requests an instance takes.
pub struct Worker {
    policy: ReusePolicy,
    component_id: String,
    interrupt_after: Duration,
    /// Refilled at each request start (such instances take one request at a time).
    fuel: Option<u64>,
    pool: Arc<WarmPool>,
    left: Arc<AtomicBool>,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestData = RequestTicket;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.policy.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.policy.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<InstanceState>,
        ticket: RequestTicket,
        task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        store.data().running.start(ticket, task);
        // Concurrent requests on one instance share its deadline: the newest sets it.
        store.data_mut().interrupt_at = Instant::now() + self.interrupt_after;
        if let Some(fuel) = self.fuel {
            // Cannot fail: fuel is only set when the engine meters it.
            let _ = store.set_fuel(fuel);
        }
        Box::pin(tokio::time::sleep(self.policy.request_timeout))
    }

    fn drop(&self, store: Store<InstanceState>, result: wasmtime::Result<()>) {
        metrics::gauge!("edgeinfer_live_instances", "component" => self.component_id.clone()).decrement(1.0);
        self.pool.dropped(self.left.load(Ordering::Acquire));
        if let Err(error) = result {
            // Only requests still waiting for an answer are told; ended ones closed their channel.
            let reports = store.data().running.take_waiting();
            // wasmtime-wasi-http says this of a worker task dropped unfinished; with no request on
            // it, that is the host stopping (its tasks cancelled), not a fault.
            if reports.is_empty() && error.to_string() == DROPPED_WORKER {
                tracing::debug!(component = %self.component_id, "idle instance dropped");
                return;
            }
            let requests: Vec<u64> = reports.iter().map(|r| r.id).collect();
            tracing::warn!(
                component = %self.component_id,
                ?requests,
                "instance retired after a fault: {error:?}"
            );
            let cause = trap_cause(&error);
            for report in reports {
                let _ = report.trap.send(cause.clone());
            }
        }
        drop(store);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use wasmtime::ResourceLimiter;

    use super::*;

    /// A metrics recorder keeping each counter's and gauge's value by `name{label=value,...}`, for
    /// `metrics::with_local_recorder`.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<BTreeMap<String, f64>>>);

    struct Cell {
        values: Recorded,
        key: String,
    }

    impl Cell {
        fn update(&self, f: impl FnOnce(&mut f64)) {
            f(self.values.0.lock().unwrap().entry(self.key.clone()).or_default());
        }
    }

    impl metrics::CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.update(|v| *v += value as f64);
        }
        fn absolute(&self, value: u64) {
            self.update(|v| *v = value as f64);
        }
    }

    impl metrics::GaugeFn for Cell {
        fn increment(&self, value: f64) {
            self.update(|v| *v += value);
        }
        fn decrement(&self, value: f64) {
            self.update(|v| *v -= value);
        }
        fn set(&self, value: f64) {
            self.update(|v| *v = value);
        }
    }

    impl Recorded {
        fn cell(&self, key: &metrics::Key) -> Arc<Cell> {
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            Arc::new(Cell { values: self.clone(), key: format!("{}{{{}}}", key.name(), labels.join(",")) })
        }

        fn get(&self, key: &str) -> f64 {
            self.0.lock().unwrap().get(key).copied().unwrap_or(0.0)
        }
    }

    impl metrics::Recorder for Recorded {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            metrics::Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    const MEMORY: &str = "edgeinfer_instance_memory_bytes{component=c}";
    const LIVE: &str = "edgeinfer_live_instances{component=c}";
    const PAGE: usize = 64 << 10;

    fn policy() -> ReusePolicy {
        ReusePolicy {
            max_requests: 3,
            max_concurrent: 2,
            idle_timeout: Duration::from_secs(60),
            surplus_idle: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The instance spec of component `c`: no models, `max_memory_bytes` of linear memory.
    fn spec(max_memory_bytes: usize, fuel: Option<u64>) -> InstanceSpec {
        let registry = Arc::new(edgeinfer_engine::registry::GraphRegistry::default());
        InstanceSpec {
            component_id: "c".into(),
            environment: vec![("GREETING".into(), "hi".into())],
            mounts: vec![],
            allowed_models: Arc::new(BTreeSet::from(["minilm".to_string()])),
            models: Arc::new(crate::models::RegistryModels(registry.clone())),
            embeddings: Arc::new(EmbeddingModels::new()),
            host_info: HostInfo { registry, component_id: "c".into(), limits: Default::default() },
            allowed_outbound_hosts: Arc::new(vec![]),
            max_memory_bytes,
            interrupt_after: Duration::from_secs(1),
            fuel,
        }
    }

    fn worker(pool: &Arc<WarmPool>, left: bool) -> Worker {
        Worker {
            policy: policy(),
            component_id: "c".into(),
            interrupt_after: Duration::from_secs(1),
            fuel: None,
            pool: pool.clone(),
            left: Arc::new(AtomicBool::new(left)),
        }
    }

    fn expiration(pool: &Arc<WarmPool>, policy: ReusePolicy) -> Expiration {
        Expiration {
            policy,
            sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            pool: pool.clone(),
            left: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A pool of `live` instances (`max` 8) of which `warm` are kept.
    fn pool(warm: usize, live: usize) -> Arc<WarmPool> {
        let pool = Arc::new(WarmPool::new(warm, 8));
        for _ in 0..live {
            assert!(pool.reserve());
        }
        pool
    }

    fn counts(pool: &WarmPool) -> (usize, usize) {
        let counts = pool.counts();
        (counts.live, counts.leaving)
    }

    fn poll_now(expiration: &mut Expiration, status: WorkerStatus, start: Instant) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(expiration).poll(&mut cx, status, start)
    }

    /// Whether `expiration` retires its instance within a second.
    async fn expires(expiration: &mut Expiration, status: WorkerStatus, start: Instant) -> bool {
        let expired = std::future::poll_fn(|cx| Pin::new(&mut *expiration).poll(cx, status, start));
        tokio::time::timeout(Duration::from_secs(1), expired).await.is_ok()
    }

    fn ago(seconds: u64) -> Instant {
        Instant::now() - Duration::from_secs(seconds)
    }

    /// Adds a request to `running` as `RunningRequests::start` does (without a guest task).
    fn run(running: &RunningRequests, id: u64, trace: Option<TraceContext>) -> oneshot::Receiver<TrapCause> {
        let (ticket, cause) = RequestTicket::new(id, trace);
        running.lock().push(Running { id, task: None, trace: ticket.trace, trap: ticket.trap });
        cause
    }

    #[derive(Debug, PartialEq)]
    struct Marker(u32);

    fn marked(n: u32) -> TraceContext {
        TraceContext::new().with_value(Marker(n))
    }

    #[test]
    fn the_pool_creates_no_more_than_max_live_instances_and_frees_slots_as_they_drop() {
        let pool = WarmPool::new(1, 2);
        assert!(pool.reserve());
        assert!(pool.reserve());
        assert!(!pool.reserve(), "at max: the request must wait for a busy instance");
        assert_eq!(counts(&pool), (2, 0));
        pool.dropped(false);
        assert!(pool.reserve(), "a dropped instance frees its slot");
        assert!(!pool.reserve());
        // `LoadedComponent::handle` retries only on this error.
        assert!(wasmtime::Error::new(PoolFull).is::<PoolFull>());
    }

    #[test]
    fn racing_idle_instances_never_take_the_pool_below_its_warm_ones() {
        let pool = pool(2, 5);
        let left: Vec<bool> = (0..5).map(|_| pool.leave_if_surplus()).collect();
        assert_eq!(left, [true, true, true, false, false], "3 surplus instances, 2 warm stay");
        assert_eq!(counts(&pool), (5, 3), "leaving ones count as live until they are dropped");
        pool.dropped(true);
        pool.dropped(true);
        assert_eq!(counts(&pool), (3, 1));
        assert!(!pool.leave_if_surplus(), "one still leaving: the other two are the warm ones");
        pool.dropped(true);
        assert_eq!(counts(&pool), (2, 0));
        assert!(!pool.leave_if_surplus());
    }

    #[test]
    fn an_instance_takes_requests_up_to_its_concurrency_and_retires_after_max_requests() {
        let pool = pool(1, 1);
        let worker = worker(&pool, false);
        let accept = |concurrent, total| match worker.should_accept_request(concurrent, total) {
            ShouldAccept::Yes => "yes",
            ShouldAccept::No => "no",
            ShouldAccept::Never => "never",
        };
        assert_eq!(accept(0, 0), "yes");
        assert_eq!(accept(1, 1), "yes");
        assert_eq!(accept(2, 2), "no", "max_concurrent 2: full for now");
        assert_eq!(accept(0, 3), "never", "max_requests 3: retired however idle it is");
        assert_eq!(accept(2, 3), "never");
    }

    #[tokio::test]
    async fn an_idle_instance_stays_through_the_surplus_window() {
        let pool = pool(0, 2);
        let mut expiration = expiration(&pool, policy());
        assert!(poll_now(&mut expiration, WorkerStatus::Idle, Instant::now()).is_pending());
        assert_eq!(counts(&pool), (2, 0), "nothing left the pool yet");
    }

    #[tokio::test]
    async fn a_surplus_idle_instance_leaves_once_its_window_passes() {
        let pool = pool(1, 2);
        let quick = ReusePolicy { surplus_idle: Duration::from_millis(20), ..policy() };
        let mut surplus = expiration(&pool, quick);
        // Pending at first; the surplus deadline wakes it, and it decides again.
        assert!(expires(&mut surplus, WorkerStatus::Idle, Instant::now()).await);
        assert!(surplus.left.load(Ordering::Acquire), "its worker tells the pool when dropped");
        assert_eq!(counts(&pool), (2, 1));
        // The other, the warm one, stays for the idle timeout.
        let mut warm = expiration(&pool, quick);
        assert!(!expires(&mut warm, WorkerStatus::Idle, Instant::now()).await);
        assert!(!warm.left.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_warm_idle_instance_is_retired_only_after_the_idle_timeout() {
        let pool = pool(1, 1);
        let mut expiration = expiration(&pool, policy());
        assert!(poll_now(&mut expiration, WorkerStatus::Idle, ago(30)).is_pending());
        assert!(expires(&mut expiration, WorkerStatus::Idle, ago(61)).await);
        assert!(!expiration.left.load(Ordering::Acquire), "not counted as a surplus leaver");
        assert_eq!(counts(&pool), (1, 0));
    }

    #[tokio::test]
    async fn a_busy_instance_expires_at_the_request_timeout_not_the_idle_rules() {
        let pool = pool(0, 3);
        let mut expiration = expiration(&pool, policy());
        // Long past the surplus window, but serving: the pool's surplus is not its business.
        assert!(poll_now(&mut expiration, WorkerStatus::Requests, ago(5)).is_pending());
        assert!(poll_now(&mut expiration, WorkerStatus::PostReturn, ago(5)).is_pending());
        assert_eq!(counts(&pool), (3, 0));
        assert!(expires(&mut expiration, WorkerStatus::Requests, ago(11)).await);
        assert!(expires(&mut expiration, WorkerStatus::PostReturn, ago(11)).await);
        assert!(!expiration.left.load(Ordering::Acquire));
    }

    #[test]
    fn out_of_fuel_is_told_apart_from_other_traps() {
        let fuel = wasmtime::Error::new(wasmtime::Trap::OutOfFuel).context("error while executing guest");
        assert_eq!(trap_cause(&fuel), TrapCause::OutOfFuel);
        let unreachable = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached)
            .context("error while executing guest");
        let TrapCause::Trap(message) = trap_cause(&unreachable) else { panic!("not out of fuel") };
        assert_eq!(
            message,
            wasmtime::Trap::UnreachableCodeReached.to_string(),
            "the root cause, not the context"
        );
        assert_eq!(trap_cause(&wasmtime::Error::msg("host fault")), TrapCause::Trap("host fault".into()));
    }

    #[test]
    fn a_trapped_instance_reports_its_cause_to_the_requests_still_waiting() {
        let engine = Engine::default();
        let pool = pool(1, 2);
        let recorded = Recorded::default();
        let store = spec(1 << 20, None).new_store(&engine).unwrap();
        let mut waiting = run(&store.data().running, 1, None);
        let mut also_waiting = run(&store.data().running, 2, None);
        drop(run(&store.data().running, 3, None)); // answered already
        let error = wasmtime::Error::new(wasmtime::Trap::OutOfFuel).context("error while executing");
        metrics::with_local_recorder(&recorded, || worker(&pool, false).drop(store, Err(error)));
        assert_eq!(waiting.try_recv(), Ok(TrapCause::OutOfFuel));
        assert_eq!(also_waiting.try_recv(), Ok(TrapCause::OutOfFuel));
        assert_eq!(counts(&pool), (1, 0), "its slot is freed: a fresh instance replaces it");
        assert_eq!(recorded.get(LIVE), -1.0);
        // A worker task that panicked while serving is a fault for the request it served.
        let store = spec(1 << 20, None).new_store(&engine).unwrap();
        let mut waiting = run(&store.data().running, 4, None);
        worker(&pool, false).drop(store, Err(wasmtime::Error::msg(DROPPED_WORKER)));
        assert_eq!(waiting.try_recv(), Ok(TrapCause::Trap(DROPPED_WORKER.into())));
        assert_eq!(counts(&pool), (0, 0));
    }

    #[test]
    fn an_instance_ending_cleanly_tells_no_request_and_settles_the_pool() {
        let engine = Engine::default();
        let pool = pool(0, 2);
        assert!(pool.leave_if_surplus());
        let store = spec(1 << 20, None).new_store(&engine).unwrap();
        let mut waiting = run(&store.data().running, 1, None);
        worker(&pool, true).drop(store, Ok(()));
        assert_eq!(counts(&pool), (1, 0), "a surplus leaver is uncounted as leaving too");
        // The store is gone with nothing reported: the request learns only that it ended.
        assert_eq!(waiting.try_recv(), Err(oneshot::error::TryRecvError::Closed));
        // The host cancelling an idle instance's task is not a fault either (only logged).
        let store = spec(1 << 20, None).new_store(&engine).unwrap();
        worker(&pool, false).drop(store, Err(wasmtime::Error::msg(DROPPED_WORKER)));
        assert_eq!(counts(&pool), (0, 0));
    }

    #[test]
    fn host_calls_trace_under_the_only_live_request_and_never_guess_among_several() {
        let running = RunningRequests::default();
        assert!(running.trace_of(None).is_none(), "no request running");
        let first = run(&running, 1, Some(marked(1)));
        let trace = running.trace_of(None).expect("the only request's trace");
        assert_eq!(trace.get::<Marker>(), Some(&Marker(1)));
        let second = run(&running, 2, Some(marked(2)));
        assert!(running.trace_of(None).is_none(), "two requests: which one is unknown");
        drop(first);
        let trace = running.trace_of(None).expect("the first ended: the second is the only one");
        assert_eq!(trace.get::<Marker>(), Some(&Marker(2)));
        drop(second);
        assert!(running.trace_of(None).is_none());
    }

    #[test]
    fn only_requests_still_waiting_are_taken_when_the_instance_goes() {
        let running = RunningRequests::default();
        let _waiting = run(&running, 1, None);
        drop(run(&running, 2, None));
        let _also = run(&running, 3, None);
        let ids: Vec<u64> = running.take_waiting().iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 3]);
        assert!(running.take_waiting().is_empty(), "taken out");
    }

    #[test]
    fn the_memory_gauge_follows_growth_within_the_cap_and_is_given_back_on_drop() {
        let engine = Engine::default();
        let recorded = Recorded::default();
        metrics::with_local_recorder(&recorded, || {
            let mut store = spec(3 * PAGE, None).new_store(&engine).unwrap();
            let memory = wasmtime::Memory::new(&mut store, wasmtime::MemoryType::new(1, None)).unwrap();
            assert_eq!(recorded.get(MEMORY), PAGE as f64);
            memory.grow(&mut store, 2).unwrap();
            assert_eq!(recorded.get(MEMORY), (3 * PAGE) as f64);
            assert!(memory.grow(&mut store, 1).is_err(), "max_memory_bytes is 3 pages");
            assert_eq!(recorded.get(MEMORY), (3 * PAGE) as f64, "a refused growth is not counted");
            assert_eq!(store.data().limits.bytes, 3 * PAGE);
            drop(store);
            assert_eq!(recorded.get(MEMORY), 0.0, "a dropped instance holds no memory");
        });
    }

    #[test]
    fn a_growth_that_fails_after_being_allowed_is_uncounted() {
        let recorded = Recorded::default();
        metrics::with_local_recorder(&recorded, || {
            let mut account =
                MemoryAccount::new(StoreLimitsBuilder::new().memory_size(4 * PAGE).build(), "c");
            assert!(account.memory_growing(0, PAGE, None).unwrap());
            assert!(account.memory_growing(PAGE, 3 * PAGE, None).unwrap());
            account.memory_grow_failed(wasmtime::Error::msg("mmap failed")).unwrap();
            assert_eq!((account.bytes, recorded.get(MEMORY)), (PAGE, PAGE as f64));
            assert!(!account.memory_growing(PAGE, 5 * PAGE, None).unwrap(), "over the cap");
            assert_eq!((account.bytes, recorded.get(MEMORY)), (PAGE, PAGE as f64));
            drop(account);
            assert_eq!(recorded.get(MEMORY), 0.0);
        });
    }

    #[test]
    fn each_store_gets_the_request_fuel_budget_when_the_engine_meters_fuel() {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let metered = Engine::new(&config).unwrap();
        assert_eq!(spec(PAGE, Some(5_000)).new_store(&metered).unwrap().get_fuel().unwrap(), 5_000);
        assert_eq!(spec(PAGE, None).new_store(&metered).unwrap().get_fuel().unwrap(), u64::MAX);
        assert!(spec(PAGE, Some(5_000)).new_store(&Engine::default()).unwrap().get_fuel().is_err());
    }

    #[test]
    fn host_info_names_the_component_s_limits_and_only_models_the_registry_has() {
        let spec = spec(PAGE, None);
        let info: serde_json::Value =
            serde_json::from_str(&spec.host_info.render(&spec.allowed_models)).unwrap();
        let limits = edgeinfer_config::runtime_config::ComponentLimits::default();
        assert_eq!(info["host"], "edgeinfer");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["component"]["id"], "c");
        assert_eq!(info["component"]["request_timeout_ms"], limits.request_timeout_ms);
        assert_eq!(info["component"]["max_concurrent_requests"], limits.max_concurrent_requests);
        assert_eq!(info["models"], serde_json::json!({}), "minilm is allowed but not loaded");
    }
}
