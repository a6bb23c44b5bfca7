//! Per-model dynamic batching: compute calls from concurrent instances are merged into one
//! engine run. A background task owns the queue; each engine runs on its own long-lived thread; a
//! caller waiting for its result holds no OS thread. Requests whose caller went away are dropped
//! before compute. The queue is bounded: past `max_queue` requests queued or running, a request is
//! refused at once (`EngineError::Overloaded`).
//!
//! An idle engine does not wait for company by default (`max_queue_delay`), except for requests
//! known to be on their way: callers announce themselves when their HTTP request starts
//! (`Batcher::expect_caller`), and while more have announced themselves than have queued, a
//! batch waits for them up to `max_arrival_wait`. Without that, a closed loop of N clients splits
//! into alternating batches (the first arrival leaves alone, the rest queue behind it) that cost
//! throughput and double the tail.

mod merge;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::engines::{Engine, EngineError, TensorSpec, check_inputs};
use edgeinfer_config::runtime_config::BatchingConfig;
pub use merge::Tensors;
use merge::{Shape, batch_shape, cut_rows, join_rows, merge, split};

/// How a model's requests are merged.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Most rows (axis 0) in one engine run; 1 turns merging off.
    pub max_batch_size: u32,
    /// Most padded tokens (rows × longest sequence) in one engine run.
    pub max_batch_tokens: u64,
    /// How long a request may wait for batch-mates once an engine is free.
    pub max_queue_delay: Duration,
    /// How much longer a batch may wait for callers known to be on their way.
    pub max_arrival_wait: Duration,
    /// Value that pads each input's sequence axis (default 0).
    pub pad_values: BTreeMap<String, f64>,
    /// Most padding tokens (rows × longest sequence, less each row's own length) in one run.
    pub max_padding_tokens: u64,
    /// Requests queued or running at most; more are refused at once.
    pub max_queue: usize,
}

impl BatchPolicy {
    /// The policy of a model's runtime config; no `[batching]` means every request runs alone.
    pub fn from_config(config: Option<&BatchingConfig>, max_queue: usize) -> BatchPolicy {
        match config {
            None => BatchPolicy {
                max_batch_size: 1,
                max_batch_tokens: u64::MAX,
                max_queue_delay: Duration::ZERO,
                max_arrival_wait: Duration::ZERO,
                pad_values: BTreeMap::new(),
                max_padding_tokens: u64::MAX,
                max_queue,
            },
            Some(c) => BatchPolicy {
                max_batch_size: c.max_batch_size,
                max_batch_tokens: c.max_batch_tokens,
                max_queue_delay: Duration::from_micros(c.max_queue_delay_us),
                max_arrival_wait: Duration::from_micros(c.max_arrival_wait_us),
                pad_values: c.pad_values.clone(),
                max_padding_tokens: c.max_padding_tokens.unwrap_or(u64::MAX),
                max_queue,
            },
        }
    }
}

/// Who waits for a compute call, and so whether the batch it joins may wait for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An async caller (edgeinfer:nn/infer, KServe): its instance serves other requests meanwhile.
    Waits,
    /// A synchronous guest call (wasi:nn, Spin's LLM interface): its instance can do nothing until
    /// answered, so requests on their way through that instance cannot arrive, and a batch holding
    /// such a call does not wait for arrivals.
    BlocksItsInstance,
}

/// One queued compute call.
struct Job {
    inputs: Tensors,
    caller: Caller,
    /// `None` when the request cannot share a batch (it runs alone).
    shape: Option<Shape>,
    enqueued: Instant,
    /// The caller's span (its `compute`), which the batch's span links to, and back.
    caller_span: tracing::Span,
    /// Its wait in the queue, ended when its batch leaves for an engine.
    queue_span: tracing::Span,
    reply: oneshot::Sender<Result<Tensors, EngineError>>,
    /// Its place in the bounded queue, given back when the job is dropped (answered or not).
    _place: OwnedSemaphorePermit,
}

/// Handle to a model's batching queue; cheap to share.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Job>,
    /// The model's declared inputs: a bad request is rejected before it joins a batch, so it
    /// fails alone instead of failing its batch-mates.
    inputs: Arc<Vec<TensorSpec>>,
    /// Places for requests queued or running (`max_queue`).
    places: Arc<Semaphore>,
    max_queue: usize,
    /// Callers that announced themselves and have not finished (see `expect_caller`).
    callers: Arc<Callers>,
    /// Metric label.
    model: Arc<str>,
    limits: BatchLimits,
    /// Whether every output has a batch axis (axis 0 dynamic), so that a request may run in
    /// parts whose outputs join along it.
    cuttable: bool,
}

/// A batcher's limits, as clients may be told them (`/info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_batch_size: u32,
    pub max_batch_tokens: u64,
    pub max_queue_delay: Duration,
    pub max_arrival_wait: Duration,
    pub max_queue: usize,
}

impl Batcher {
    /// Starts the model's queue on a thread of its own and `engines` each on theirs (one run at
    /// a time per engine); no async runtime is needed to call it. The threads end when the last
    /// handle is dropped and the queue has drained.
    pub fn spawn(model: &str, engines: Vec<Arc<dyn Engine>>, policy: BatchPolicy) -> Batcher {
        assert!(!engines.is_empty(), "a batcher needs at least one engine");
        let inputs = Arc::new(engines[0].inputs().to_vec());
        let cuttable = engines[0].outputs().iter().all(|o| o.shape.first().is_some_and(|d| *d < 0));
        let max_queue = policy.max_queue;
        let limits = BatchLimits {
            max_batch_size: policy.max_batch_size,
            max_batch_tokens: policy.max_batch_tokens,
            max_queue_delay: policy.max_queue_delay,
            max_arrival_wait: policy.max_arrival_wait,
            max_queue,
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let places = Arc::new(Semaphore::new(max_queue));
        let callers = Arc::new(Callers::default());
        let arrivals = Arrivals { callers: callers.clone(), places: places.clone(), max_queue };
        let batch_loop = BatchLoop::new(model.to_string(), engines, policy, receiver, arrivals);
        // The queue's own small runtime: forming batches never waits behind HTTP work, and
        // loading a model (e.g. at start, on a blocking thread) needs no runtime around it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("cannot build the batcher's runtime");
        std::thread::Builder::new()
            .name(format!("batcher-{model}"))
            .spawn(move || runtime.block_on(batch_loop.run()))
            .expect("cannot start a batcher thread");
        Batcher { queue, inputs, places, max_queue, callers, model: model.into(), limits, cuttable }
    }

    /// Announces a caller that will compute on this model soon (an HTTP request entering a
    /// component that may use it), until the guard is dropped (its answer is out): while such
    /// callers have not queued yet, a forming batch may wait for them. `None`, and no work per
    /// request, when `max_arrival_wait` is off: then nobody counts them.
    pub fn expect_caller(&self) -> Option<ExpectedCaller> {
        if self.limits.max_arrival_wait.is_zero() {
            return None;
        }
        self.callers.count.fetch_add(1, Ordering::Relaxed);
        Some(ExpectedCaller(self.callers.clone()))
    }

    /// Its batching limits.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Queues one inference and waits for its share of the batch's outputs; refused at once when
    /// `max_queue` requests are already queued or running. For an async caller.
    pub async fn compute(&self, inputs: Tensors) -> Result<Tensors, EngineError> {
        self.compute_for(inputs, Caller::Waits).await
    }

    /// `compute`, for a caller of the given kind. A request of more padded tokens than
    /// `max_batch_tokens` runs in parts of fewer rows (when every output of the model has a
    /// batch axis), one after another, each queued like a request of its own and all placed in
    /// the queue up front: no engine run is larger than the limit allows (but for a single row
    /// longer than it). The model's metrics count the parts.
    pub async fn compute_for(&self, inputs: Tensors, caller: Caller) -> Result<Tensors, EngineError> {
        check_inputs(&inputs, &self.inputs)?;
        if let Some(shape) = batch_shape(&inputs)
            && self.cuttable
            && shape.rows > 1
            && u64::from(shape.rows) * u64::from(shape.seq) > self.limits.max_batch_tokens
        {
            let part_rows = (self.limits.max_batch_tokens / u64::from(shape.seq.max(1)))
                .clamp(1, u64::from(u32::MAX)) as u32;
            let parts = cut_rows(&inputs, shape.rows, part_rows);
            let mut places = self.place(parts.len() as u32)?;
            let mut outputs = Vec::with_capacity(parts.len());
            for part in parts {
                let rows = part[0].1.shape[0];
                let place = places.split(1).expect("one place per part");
                outputs.push((rows, self.compute_placed(part, caller, place).await?));
            }
            return join_rows(outputs);
        }
        let place = self.place(1)?;
        self.compute_placed(inputs, caller, place).await
    }

    /// `count` places in the queue, or `Overloaded` when `max_queue` requests already hold them.
    fn place(&self, count: u32) -> Result<OwnedSemaphorePermit, EngineError> {
        self.places.clone().try_acquire_many_owned(count).map_err(|_| {
            metrics::counter!("edgeinfer_requests_refused_total", "model" => self.model.to_string())
                .increment(1);
            EngineError::Overloaded(format!(
                "model {:?} has {} requests queued or running, its max_queue; retry shortly",
                &*self.model, self.max_queue
            ))
        })
    }

    /// Queues one engine run's worth of inputs (checked) in its `place` and waits for its
    /// outputs.
    async fn compute_placed(
        &self,
        inputs: Tensors,
        caller: Caller,
        place: OwnedSemaphorePermit,
    ) -> Result<Tensors, EngineError> {
        let shape = batch_shape(&inputs);
        let (reply, result) = oneshot::channel();
        let caller_span = tracing::Span::current();
        let queue_span = tracing::info_span!("queue", model = &*self.model);
        let job = Job {
            inputs,
            caller,
            shape,
            enqueued: Instant::now(),
            caller_span,
            queue_span,
            reply,
            _place: place,
        };
        self.queue.send(job).map_err(|_| EngineError::Runtime("the model's batcher has stopped".into()))?;
        result
            .await
            .unwrap_or_else(|_| Err(EngineError::Runtime("the model's batcher dropped the request".into())))
    }
}

/// The announced callers of a model, and a signal for each that leaves.
#[derive(Default)]
struct Callers {
    count: AtomicUsize,
    /// A batch waiting for arrivals counts again when one leaves: it may have been the last.
    left: Notify,
}

/// A caller announced by `Batcher::expect_caller`, for as long as it lives.
pub struct ExpectedCaller(Arc<Callers>);

impl Drop for ExpectedCaller {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.left.notify_one();
    }
}

/// How many announced callers have not queued: those in flight minus the requests queued or
/// running (which hold places). Requests that queue without announcing themselves (KServe, Spin's
/// LLM interface) only lower it; a request that has computed and is still answering raises it
/// until it has answered.
struct Arrivals {
    callers: Arc<Callers>,
    places: Arc<Semaphore>,
    max_queue: usize,
}

impl Arrivals {
    fn on_their_way(&self) -> usize {
        let at_model = self.max_queue - self.places.available_permits();
        self.callers.count.load(Ordering::Relaxed).saturating_sub(at_model)
    }
}

/// The queue task's state.
struct BatchLoop {
    /// Metric label.
    model: String,
    policy: BatchPolicy,
    receiver: mpsc::UnboundedReceiver<Job>,
    /// Jobs taken off the channel that did not fit the batch being formed; served first next time.
    held: VecDeque<Job>,
    /// Engine threads, by index; dropping them ends the threads.
    workers: Vec<std::sync::mpsc::Sender<Vec<Job>>>,
    /// Indices of the engine threads not running a batch right now.
    idle: mpsc::Receiver<usize>,
    arrivals: Arrivals,
}

impl BatchLoop {
    fn new(
        model: String,
        engines: Vec<Arc<dyn Engine>>,
        policy: BatchPolicy,
        receiver: mpsc::UnboundedReceiver<Job>,
        arrivals: Arrivals,
    ) -> BatchLoop {
        let (done, idle) = mpsc::channel(engines.len());
        let workers = engines
            .into_iter()
            .enumerate()
            .map(|(index, engine)| {
                done.try_send(index).expect("capacity equals the engine count");
                start_engine_thread(&model, index, engine, policy.pad_values.clone(), done.clone())
            })
            .collect();
        BatchLoop { model, policy, receiver, held: VecDeque::new(), workers, idle, arrivals }
    }

    async fn run(mut self) {
        loop {
            // Wait for a free engine first: while all are busy, requests pile up and then leave
            // together in one batch.
            let Some(worker) = self.idle.recv().await else { return };
            let Some(mut batch) = self.next_batch().await else { return };
            self.record(&mut batch);
            if self.workers[worker].send(batch).is_err() {
                tracing::error!(model = %self.model, "engine thread {worker} has stopped");
            }
        }
    }

    fn record(&self, batch: &mut [Job]) {
        let model = self.model.clone();
        let now = Instant::now();
        let rows: u32 = batch.iter().map(|j| j.shape.as_ref().map_or(1, |s| s.rows)).sum();
        let max_seq = batch.iter().filter_map(|j| j.shape.as_ref()).map(|s| s.seq).max().unwrap_or(0);
        metrics::histogram!("edgeinfer_batch_rows", "model" => model.clone()).record(f64::from(rows));
        metrics::histogram!("edgeinfer_batch_tokens", "model" => model.clone())
            .record(f64::from(rows) * f64::from(max_seq));
        // The rows' own tokens: what edgeinfer_batch_tokens is, less the padding.
        let real: f64 =
            batch.iter().filter_map(|j| j.shape.as_ref()).map(|s| f64::from(s.rows) * f64::from(s.seq)).sum();
        metrics::histogram!("edgeinfer_batch_real_tokens", "model" => model.clone()).record(real);
        metrics::histogram!("edgeinfer_batch_requests", "model" => model.clone()).record(batch.len() as f64);
        for job in batch.iter_mut() {
            metrics::histogram!("edgeinfer_queue_seconds", "model" => model.clone())
                .record(now - job.enqueued);
            // Its wait ends here.
            job.queue_span = tracing::Span::none();
        }
        metrics::gauge!("edgeinfer_queue_depth", "model" => model)
            .set((self.receiver.len() + self.held.len()) as f64);
    }

    fn count_dropped(&self, n: usize) {
        if n > 0 {
            metrics::counter!("edgeinfer_requests_dropped_total", "model" => self.model.clone())
                .increment(n as u64);
        }
    }

    /// The next batch of live jobs: the oldest job, then compatible ones that are queued or arrive
    /// before the oldest has waited `max_queue_delay`, or, while callers are known to be on their
    /// way, before `max_arrival_wait` has passed since the engine took the oldest. `None` when the
    /// queue is closed.
    async fn next_batch(&mut self) -> Option<Vec<Job>> {
        loop {
            let first = match self.held.pop_front() {
                Some(job) => job,
                None => self.receiver.recv().await?,
            };
            if first.reply.is_closed() {
                self.count_dropped(1);
                continue;
            }
            let mut batch = Batch::new(first, &self.policy);
            if batch.is_full() {
                return Some(batch.jobs);
            }
            let deadline = batch.jobs[0].enqueued + self.policy.max_queue_delay;
            let arrival_deadline = deadline.max(Instant::now()) + self.policy.max_arrival_wait;
            // Held jobs get the first chance to join; those that do not fit stay held, in order.
            self.held =
                std::mem::take(&mut self.held).into_iter().filter_map(|job| batch.offer(job)).collect();
            while !batch.is_full() {
                let next = match self.receiver.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now < deadline {
                            match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                                Ok(Some(job)) => job,
                                Ok(None) => break,
                                Err(_) => continue,
                            }
                        } else if now < arrival_deadline
                            && self.arrivals.on_their_way() > 0
                            && batch.jobs.iter().all(|j| j.caller == Caller::Waits)
                        {
                            // Counted again at the next arrival or departure.
                            tokio::select! {
                                job = self.receiver.recv() => match job {
                                    Some(job) => job,
                                    None => break,
                                },
                                _ = self.arrivals.callers.left.notified() => continue,
                                _ = tokio::time::sleep_until(arrival_deadline) => break,
                            }
                        } else {
                            // A timer whose deadline has passed still waits for the timer wheel's
                            // next millisecond tick: with no time left, leave at once.
                            break;
                        }
                    }
                };
                if let Some(job) = batch.offer(next) {
                    self.held.push_back(job);
                }
            }
            let formed = batch.jobs.len() + batch.dropped;
            let live: Vec<Job> = batch.jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
            self.count_dropped(formed - live.len());
            if !live.is_empty() {
                return Some(live);
            }
        }
    }
}

/// Starts the thread that runs `engine`'s batches, one at a time, and reports `index` on `done`
/// after each. A dedicated thread keeps ONNX Runtime's calling thread (which does its share of
/// every parallel operator) the same from run to run and out of the async runtime's blocking pool.
fn start_engine_thread(
    model: &str,
    index: usize,
    engine: Arc<dyn Engine>,
    pad_values: BTreeMap<String, f64>,
    done: mpsc::Sender<usize>,
) -> std::sync::mpsc::Sender<Vec<Job>> {
    let (batches, received) = std::sync::mpsc::channel::<Vec<Job>>();
    let model = model.to_string();
    std::thread::Builder::new()
        .name(format!("engine-{model}-{index}"))
        .spawn(move || {
            for batch in received {
                let started = std::time::Instant::now();
                // A panicking engine fails its batch (the dropped replies answer each caller with
                // an error) but not the thread: the engine stays in service.
                let run =
                    std::panic::AssertUnwindSafe(|| run_batch(&model, engine.as_ref(), batch, &pad_values));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(model = %model, "engine panicked; its batch failed");
                }
                metrics::histogram!("edgeinfer_compute_seconds", "model" => model.clone())
                    .record(started.elapsed());
                if done.try_send(index).is_err() {
                    break;
                }
            }
        })
        .expect("cannot start an engine thread");
    batches
}

/// A batch being formed.
struct Batch<'p> {
    policy: &'p BatchPolicy,
    jobs: Vec<Job>,
    /// Offered jobs whose caller had already left.
    dropped: usize,
    rows: u32,
    max_seq: u32,
    /// The rows' own tokens (each row's sequence length, summed).
    real_tokens: u64,
}

impl<'p> Batch<'p> {
    fn new(first: Job, policy: &'p BatchPolicy) -> Batch<'p> {
        let (rows, max_seq) = first.shape.as_ref().map_or((u32::MAX, 0), |s| (s.rows, s.seq));
        let real_tokens = u64::from(rows) * u64::from(max_seq);
        Batch { policy, jobs: vec![first], dropped: 0, rows, max_seq, real_tokens }
    }

    /// A job that cannot be batched fills its batch by itself.
    fn is_full(&self) -> bool {
        self.rows >= self.policy.max_batch_size
    }

    /// Takes `job` if it is compatible and fits; otherwise hands it back.
    fn offer(&mut self, job: Job) -> Option<Job> {
        if job.reply.is_closed() {
            self.dropped += 1;
            return None;
        }
        let (Some(shape), Some(first)) = (&job.shape, &self.jobs[0].shape) else { return Some(job) };
        if shape.key != first.key {
            return Some(job);
        }
        let rows = self.rows + shape.rows;
        let max_seq = self.max_seq.max(shape.seq);
        let padded = u64::from(rows) * u64::from(max_seq);
        let real_tokens = self.real_tokens + u64::from(shape.rows) * u64::from(shape.seq);
        if rows > self.policy.max_batch_size
            || padded > self.policy.max_batch_tokens
            || padded - real_tokens > self.policy.max_padding_tokens
        {
            return Some(job);
        }
        self.rows = rows;
        self.max_seq = max_seq;
        self.real_tokens = real_tokens;
        self.jobs.push(job);
        None
    }
}

/// Runs one batch on `engine` and answers every job; if the merged run fails, each job is retried
/// alone so that one request cannot fail its batch-mates. Traced as a `batch` span of its own
/// (one run serves many requests), linked to each request's span and each back to it, with the
/// engine's run inside.
fn run_batch(model: &str, engine: &dyn Engine, jobs: Vec<Job>, pad_values: &BTreeMap<String, f64>) {
    let batch_span = tracing::info_span!(parent: None, "batch", model, requests = jobs.len() as i64);
    if !batch_span.is_disabled() {
        for job in &jobs {
            batch_span.follows_from(&job.caller_span);
            job.caller_span.follows_from(&batch_span);
        }
    }
    let _in_batch = batch_span.enter();
    let run = |inputs: Tensors| tracing::info_span!("onnxruntime.run", model).in_scope(|| engine.run(inputs));
    if jobs.len() == 1 {
        let job = jobs.into_iter().next().expect("one job");
        let _ = job.reply.send(run(job.inputs));
        return;
    }
    let requests: Vec<&Tensors> = jobs.iter().map(|j| &j.inputs).collect();
    let merged = merge(&requests, pad_values)
        .and_then(|(inputs, slots)| Ok((run(inputs)?, slots)))
        .and_then(|(outputs, slots)| split(outputs, &slots, engine.outputs()));
    match merged {
        Ok(per_job) => {
            for (job, outputs) in jobs.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            tracing::warn!("batched run of {} requests failed ({e}); running them one by one", jobs.len());
            for job in jobs {
                let _ = job.reply.send(run(job.inputs));
            }
        }
    }
}

#[cfg(test)]
mod tests;
