//! Batcher behaviour against a deterministic fake engine whose outputs per token depend on that
//! token alone, so a request's answer must be identical batched or alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::engines::{ElementType, TensorData, TensorSpec};

/// `ids` I64 [rows, seq] → `hidden` F32 [rows, seq, 2] = (id, id * 2), `pooled` F32 [rows, 1] =
/// sum of ids (pad 0 adds nothing). Id 666 fails the whole run; id 999 panics.
struct FakeEngine {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// (rows, seq, ids) of every run, in order.
    runs: Mutex<Vec<(u32, u32, Vec<i64>)>>,
    /// Where each run's `ids` bytes were, and the output buffers it made: to tell copies from
    /// shared bytes.
    seen_inputs: Mutex<Vec<usize>>,
    produced: Mutex<Vec<bytes::Bytes>>,
    run_time: Duration,
}

impl FakeEngine {
    fn new(run_time: Duration) -> Arc<FakeEngine> {
        Arc::new(FakeEngine {
            inputs: vec![TensorSpec {
                name: "ids".into(),
                ty: Some(ElementType::I64),
                shape: vec![-1, -1],
                symbols: vec![],
            }],
            outputs: vec![
                TensorSpec {
                    name: "hidden".into(),
                    ty: Some(ElementType::F32),
                    shape: vec![-1, -1, 2],
                    symbols: vec![],
                },
                TensorSpec {
                    name: "pooled".into(),
                    ty: Some(ElementType::F32),
                    shape: vec![-1, 1],
                    symbols: vec![],
                },
            ],
            runs: Mutex::new(Vec::new()),
            seen_inputs: Mutex::new(Vec::new()),
            produced: Mutex::new(Vec::new()),
            run_time,
        })
    }

    fn runs(&self) -> Vec<(u32, u32, Vec<i64>)> {
        self.runs.lock().unwrap().clone()
    }
}

impl Engine for FakeEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Tensors) -> Result<Tensors, EngineError> {
        let ids = &inputs[0].1;
        let (rows, seq) = (ids.shape[0], ids.shape[1]);
        let values: Vec<i64> =
            ids.bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        self.runs.lock().unwrap().push((rows, seq, values.clone()));
        self.seen_inputs.lock().unwrap().push(ids.bytes.as_ptr() as usize);
        std::thread::sleep(self.run_time);
        if values.contains(&999) {
            panic!("the fake engine panics on 999");
        }
        if values.contains(&666) {
            return Err(EngineError::Runtime("the fake engine refuses 666".into()));
        }
        let hidden: Vec<u8> =
            values.iter().flat_map(|&v| [v as f32, v as f32 * 2.0]).flat_map(f32::to_le_bytes).collect();
        let pooled: Vec<u8> = values
            .chunks(seq as usize)
            .map(|row| row.iter().sum::<i64>() as f32)
            .flat_map(f32::to_le_bytes)
            .collect();
        let outputs = vec![
            ("hidden".into(), TensorData::new(vec![rows, seq, 2], ElementType::F32, hidden)),
            ("pooled".into(), TensorData::new(vec![rows, 1], ElementType::F32, pooled)),
        ];
        self.produced
            .lock()
            .unwrap()
            .extend(outputs.iter().map(|(_, t): &(String, TensorData)| t.bytes.clone()));
        Ok(outputs)
    }
}

fn request(rows: &[&[i64]]) -> Tensors {
    let seq = rows[0].len() as u32;
    let bytes: Vec<u8> = rows.iter().flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes())).collect();
    vec![("ids".into(), TensorData::new(vec![rows.len() as u32, seq], ElementType::I64, bytes))]
}

fn policy(max_batch_size: u32, max_batch_tokens: u64, delay_ms: u64) -> BatchPolicy {
    BatchPolicy {
        max_batch_size,
        max_batch_tokens,
        max_queue_delay: Duration::from_millis(delay_ms),
        max_arrival_wait: Duration::ZERO,
        pad_values: BTreeMap::new(),
        max_padding_tokens: u64::MAX,
        max_queue: 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_exactly_their_answers_alone() {
    let engine = FakeEngine::new(Duration::from_millis(20));
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(32, 4096, 5));
    // Mixed lengths and row counts, all in flight at once.
    let requests: Vec<Tensors> = (1..=24i64)
        .map(|i| {
            let len = 1 + (i as usize * 7) % 9;
            let row: Vec<i64> = (0..len as i64).map(|t| i * 100 + t + 1).collect();
            if i % 5 == 0 { request(&[&row, &row]) } else { request(&[&row]) }
        })
        .collect();
    let handles: Vec<_> = requests
        .iter()
        .cloned()
        .map(|r| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.compute(r).await })
        })
        .collect();
    for (request, handle) in requests.iter().zip(handles) {
        let batched = handle.await.unwrap().unwrap();
        let alone = engine.run(request.clone()).unwrap();
        assert_eq!(batched, alone, "padding removed and rows split back exactly");
    }
    let merged_runs = engine.runs().iter().filter(|(rows, ..)| *rows > 2).count();
    assert!(merged_runs > 0, "requests queued behind a busy engine leave together: {:?}", engine.runs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_size_and_token_limits() {
    let engine = FakeEngine::new(Duration::from_millis(50));
    // 4 rows at most, 12 padded tokens at most: [1, 4] requests go 3 to a batch.
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(4, 12, 200));
    let handles: Vec<_> = (0..7i64)
        .map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.compute(request(&[&[i + 1, 1, 1, 1]])).await })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let runs = engine.runs();
    assert_eq!(runs.iter().map(|r| r.0).sum::<u32>(), 7, "every request ran once: {runs:?}");
    for (rows, seq, _) in &runs {
        assert!(*rows <= 4 && rows * seq <= 12, "over the limits: {runs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_batch_mates_up_to_the_delay_only() {
    // Long delay: a second request sent 50 ms after the first joins its batch.
    let engine = FakeEngine::new(Duration::ZERO);
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 400));
    let first = tokio::spawn({
        let b = batcher.clone();
        async move { b.compute(request(&[&[1, 2]])).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    batcher.compute(request(&[&[3]])).await.unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(engine.runs().len(), 1, "one merged run: {:?}", engine.runs());
    assert_eq!(engine.runs()[0].0, 2);

    // No delay: an idle engine runs each request at once.
    let engine = FakeEngine::new(Duration::ZERO);
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 0));
    batcher.compute(request(&[&[1, 2]])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    batcher.compute(request(&[&[3]])).await.unwrap();
    assert_eq!(engine.runs().len(), 2, "{:?}", engine.runs());
}

/// Announced callers that arrive 30 ms apart, each holding its announcement until answered (as an
/// HTTP request does); returns the batcher's engine runs and how long the last one took.
async fn staggered_callers(announce: bool, window: Duration) -> (Vec<(u32, u32, Vec<i64>)>, Duration) {
    let engine = FakeEngine::new(Duration::from_millis(5));
    let batcher = Batcher::spawn(
        "fake",
        vec![engine.clone()],
        BatchPolicy { max_arrival_wait: window, ..policy(8, 4096, 0) },
    );
    let started = std::time::Instant::now();
    let callers: Vec<_> = (0..4i64)
        .map(|i| {
            let b = batcher.clone();
            let expected = announce.then(|| b.expect_caller());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30 * i as u64)).await;
                let answer = b.compute(request(&[&[i + 1]])).await;
                drop(expected);
                answer
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    (engine.runs(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_callers_known_to_be_on_their_way() {
    // Announced: the first arrival waits for the other three, and they leave together as soon as
    // the last has queued (~90 ms), long before the 2 s window.
    let (runs, took) = staggered_callers(true, Duration::from_secs(2)).await;
    assert_eq!(runs.len(), 1, "one run of four rows: {runs:?}");
    assert_eq!(runs[0].0, 4);
    assert!(took < Duration::from_secs(1), "left when everyone had arrived, not at the window: {took:?}");
    // Not announced (or the window off): each arrival finds the engine idle and runs alone.
    let (runs, _) = staggered_callers(false, Duration::from_secs(2)).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    let (runs, _) = staggered_callers(true, Duration::ZERO).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_caller_never_waits_and_a_missing_one_only_up_to_the_window() {
    let engine = FakeEngine::new(Duration::ZERO);
    let window = Duration::from_millis(400);
    let batcher = Batcher::spawn(
        "fake",
        vec![engine.clone()],
        BatchPolicy { max_arrival_wait: window, ..policy(8, 4096, 0) },
    );
    let alone = batcher.expect_caller();
    let started = std::time::Instant::now();
    batcher.compute(request(&[&[1]])).await.unwrap();
    assert!(started.elapsed() < window / 2, "nobody else was on the way: {:?}", started.elapsed());
    drop(alone);

    // A caller announced that never computes (it failed before, say): the batch leaves at the
    // window, not later.
    let mine = batcher.expect_caller();
    let silent = batcher.expect_caller();
    let started = std::time::Instant::now();
    batcher.compute(request(&[&[2]])).await.unwrap();
    let took = started.elapsed();
    assert!(took >= window - Duration::from_millis(5) && took < window * 3, "{took:?}");
    drop((mine, silent));

    // One that leaves without computing (it failed validation, say): the batch leaves then.
    let mine = batcher.expect_caller();
    let leaving = batcher.expect_caller();
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(leaving);
    });
    batcher.compute(request(&[&[3]])).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(90) && took < Duration::from_millis(300), "{took:?}");
    drop(mine);
    assert_eq!(engine.runs().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_caller_left_never_reach_the_engine() {
    let engine = FakeEngine::new(Duration::from_millis(200));
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 0));
    let busy = tokio::spawn({
        let b = batcher.clone();
        async move { b.compute(request(&[&[1]])).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The engine is busy; this caller gives up before it frees.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(20), batcher.compute(request(&[&[4242]]))).await;
    assert!(abandoned.is_err(), "timed out while queued");
    busy.await.unwrap().unwrap();
    batcher.compute(request(&[&[7]])).await.unwrap();
    let seen: Vec<i64> = engine.runs().into_iter().flat_map(|r| r.2).collect();
    assert!(!seen.contains(&4242), "abandoned request was computed: {seen:?}");
    assert!(seen.contains(&7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_fails_alone() {
    let engine = FakeEngine::new(Duration::from_millis(30));
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 100));
    let handles: Vec<_> = [1i64, 666, 3, 4]
        .into_iter()
        .map(|v| {
            let b = batcher.clone();
            tokio::spawn(async move { (v, b.compute(request(&[&[v, v]])).await) })
        })
        .collect();
    for handle in handles {
        let (v, result) = handle.await.unwrap();
        assert_eq!(result.is_err(), v == 666, "{v}: {result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_inputs_are_rejected_before_queueing() {
    let engine = FakeEngine::new(Duration::ZERO);
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 0));
    let wrong_type = vec![("ids".into(), TensorData::new(vec![1, 1], ElementType::F32, vec![0; 4]))];
    let wrong_name = vec![("tokens".into(), TensorData::new(vec![1, 1], ElementType::I64, vec![0; 8]))];
    let short_data = vec![("ids".into(), TensorData::new(vec![1, 2], ElementType::I64, vec![0; 8]))];
    for bad in [wrong_type, wrong_name, short_data] {
        assert!(matches!(batcher.compute(bad).await, Err(EngineError::InvalidArgument(_))));
    }
    assert!(engine.runs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_engine_fails_its_batch_and_keeps_serving() {
    let engine = FakeEngine::new(Duration::ZERO);
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 0));
    let Err(EngineError::Runtime(message)) = batcher.compute(request(&[&[999]])).await else {
        panic!("a panicking run must fail its caller")
    };
    assert!(message.contains("dropped the request"), "{message}");
    let next = tokio::time::timeout(Duration::from_secs(10), batcher.compute(request(&[&[5, 6]])));
    let outputs = next.await.expect("the engine was given back").expect("the engine thread survived");
    assert_eq!(outputs, engine.run(request(&[&[5, 6]])).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_threads_end_with_the_last_handle() {
    let engine = FakeEngine::new(Duration::ZERO);
    let batcher = Batcher::spawn("fake", vec![engine.clone(), engine.clone()], policy(8, 4096, 0));
    batcher.compute(request(&[&[1]])).await.unwrap();
    assert_eq!(Arc::strong_count(&engine), 3, "each engine thread holds the engine");
    // A replaced model's batcher must not leave its threads (and its sessions) behind.
    drop(batcher);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&engine) > 1 {
        assert!(std::time::Instant::now() < deadline, "engine threads still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_queue_requests_are_refused_at_once_and_places_come_back() {
    let engine = FakeEngine::new(Duration::from_millis(100));
    let batcher =
        Batcher::spawn("fake", vec![engine.clone()], BatchPolicy { max_queue: 3, ..policy(1, 4096, 0) });
    let running: Vec<_> = (0..3i64)
        .map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.compute(request(&[&[i + 1]])).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let Err(EngineError::Overloaded(message)) = batcher.compute(request(&[&[9]])).await else {
        panic!("a fourth request must be refused while three are queued or running")
    };
    assert!(message.contains("max_queue"), "{message}");
    for task in running {
        task.await.unwrap().expect("the three admitted requests are answered");
    }
    // Answered requests give their places back; so does a caller that gave up waiting.
    let gave_up = tokio::time::timeout(Duration::from_millis(5), batcher.compute(request(&[&[4]]))).await;
    assert!(gave_up.is_err());
    for i in 0..3i64 {
        batcher.compute(request(&[&[i + 10]])).await.expect("places are free again");
    }
}

/// Whether `part` lies inside one of `buffers` (shared bytes) rather than in a copy.
fn shared_with(part: &bytes::Bytes, buffers: &[bytes::Bytes]) -> bool {
    let start = part.as_ptr() as usize;
    buffers.iter().any(|b| {
        let range = b.as_ptr() as usize..b.as_ptr() as usize + b.len();
        range.contains(&start) && start + part.len() <= range.end
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_are_handed_on_not_copied() {
    // Alone: the engine reads the caller's own bytes, the caller gets the engine's own outputs.
    let engine = FakeEngine::new(Duration::ZERO);
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(1, 4096, 0));
    let sent = request(&[&[1, 2, 3]]);
    let address = sent[0].1.bytes.as_ptr() as usize;
    let answer = batcher.compute(sent).await.unwrap();
    assert_eq!(*engine.seen_inputs.lock().unwrap(), [address], "the input reached the engine uncopied");
    let produced = engine.produced.lock().unwrap().clone();
    assert!(answer.iter().all(|(_, t)| shared_with(&t.bytes, &produced)), "outputs came back uncopied");

    // Batched: inputs are merged (one copy); each request's rows of the outputs are shared,
    // except per-token rows whose padding is cut off (a shorter request's `hidden`).
    let engine = FakeEngine::new(Duration::from_millis(300));
    // No waiting for batch-mates: the blocker runs alone, the two others queue behind it.
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(8, 4096, 0));
    let blocker = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.compute(request(&[&[9]])).await }
    });
    while engine.runs().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (long, short) =
        tokio::join!(batcher.compute(request(&[&[1, 2, 3], &[4, 5, 6]])), batcher.compute(request(&[&[7]])));
    blocker.await.unwrap().unwrap();
    let (long, short) = (long.unwrap(), short.unwrap());
    assert_eq!(engine.runs().len(), 2, "the two requests shared a run: {:?}", engine.runs());
    let produced = engine.produced.lock().unwrap().clone();
    let output = |answer: &Tensors, name: &str| answer.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert!(shared_with(&output(&long, "hidden").bytes, &produced));
    assert!(shared_with(&output(&long, "pooled").bytes, &produced));
    assert!(shared_with(&output(&short, "pooled").bytes, &produced));
    assert!(!shared_with(&output(&short, "hidden").bytes, &produced), "padding cut: a copy");
    assert_eq!(output(&short, "hidden").shape, [1, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_max_batch_tokens_runs_in_parts_with_the_same_answer() {
    let engine = FakeEngine::new(Duration::ZERO);
    // 7 rows of 4 tokens = 28 padded tokens, over a limit of 10: parts of 2 rows (8 tokens).
    let batcher = Batcher::spawn("fake", vec![engine.clone()], policy(32, 10, 0));
    let rows: Vec<Vec<i64>> = (0..7).map(|r| (1..=4).map(|t| r * 10 + t).collect()).collect();
    let refs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let answer = batcher.compute(request(&refs)).await.unwrap();
    let runs: Vec<(u32, u32)> = engine.runs().iter().map(|(rows, seq, _)| (*rows, *seq)).collect();
    assert_eq!(runs, [(2, 4), (2, 4), (2, 4), (1, 4)]);
    // The same as one unlimited run.
    let whole = Batcher::spawn("fake", vec![FakeEngine::new(Duration::ZERO)], policy(32, 4096, 0));
    let expected = whole.compute(request(&refs)).await.unwrap();
    assert_eq!(answer.len(), expected.len());
    for ((name, got), (want_name, want)) in answer.iter().zip(&expected) {
        assert_eq!((name, &got.shape, &got.bytes), (want_name, &want.shape, &want.bytes));
    }
    // A failing part fails the request, with the engine's error.
    let mut bad = rows.clone();
    bad[6][0] = 666;
    let refs: Vec<&[i64]> = bad.iter().map(Vec::as_slice).collect();
    assert!(matches!(batcher.compute(request(&refs)).await, Err(EngineError::Runtime(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_padding_limit_keeps_short_requests_out_of_a_batch_of_long_ones() {
    // The engine is busy for 100 ms with a first request, meanwhile 2 long and 3 short ones
    // queue, alternating; with at most 8 padding tokens a run, longs and shorts run apart.
    let engine = FakeEngine::new(Duration::from_millis(100));
    let limited = BatchPolicy { max_padding_tokens: 8, ..policy(32, 4096, 0) };
    let batcher = Batcher::spawn("fake", vec![engine.clone()], limited);
    let long: Vec<i64> = (1..=20).collect();
    let short: Vec<i64> = vec![7, 8];
    let first = tokio::spawn({
        let batcher = batcher.clone();
        let short = short.clone();
        async move { batcher.compute(request(&[&short])).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut handles = Vec::new();
    for i in 0..5 {
        let row = if i % 2 == 0 { short.clone() } else { long.clone() };
        let batcher = batcher.clone();
        handles.push(tokio::spawn(async move { batcher.compute(request(&[&row])).await }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.await.unwrap().unwrap();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let runs: Vec<(u32, u32)> = engine.runs().iter().map(|(rows, seq, _)| (*rows, *seq)).collect();
    // The first alone, then the three shorts together (the oldest queued is short), then the longs.
    assert_eq!(runs, [(1, 2), (3, 2), (2, 20)], "{runs:?}");
}
