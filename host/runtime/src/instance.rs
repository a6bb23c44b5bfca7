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
            outbound: OutboundPolicy::new(self.allowed_outbound_hosts.clone(), running.clone()),
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
    task: GuestTaskId,
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
        running.push(Running { id: ticket.id, task, trace: ticket.trace, trap: ticket.trap });
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
        if let Some(found) = root.and_then(|task| live().find(|r| r.task == task)) {
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
#[derive(Debug)]
pub struct PoolFull;

impl std::fmt::Display for PoolFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the component has its most live instances (max_instances), all busy")
    }
}

impl std::error::Error for PoolFull {}

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
