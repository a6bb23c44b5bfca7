//! Misbehaves on request, by path: `/ok` answers, `/slow` answers after 800 ms of work, `/trap`
//! executes `unreachable`, `/panic` panics, `/loop` never returns, `/membomb` allocates until
//! memory runs out, `/recursion` overflows the stack, `/alloc128` asks for 128 MiB once and says
//! whether it got it (`allocated`) or not (`refused`), `/big` answers 20 MiB, `/trickle-N` sends
//! its answer one line a second for N seconds.
//!
//! And sends wasi:nn (model `minilm`: int64 `input_ids`, `attention_mask`, `token_type_ids`
//! [batch, seq]) what it should not: `/nn-ok` a valid call, `/nn-shape` inputs of unequal shapes,
//! `/nn-rank` a rank-1 tensor, `/nn-type` FP32 ids, `/nn-data` fewer bytes than the shape says,
//! `/nn-missing` no `token_type_ids`, `/nn-extra` an input the model does not have. Each answers
//! 200 with the code and message wasi:nn gave (or `ok`), so the test sees exactly what came back.
//! Through edgeinfer:nn/infer (async): `/infer-ok` a valid call, `/nn-late` the same after 300 ms
//! of waiting (a slow step before the model).
//!
//! Copies of this build behave worse on `/ok` when their `MODE` marker is rewritten in the bytes
//! (the fleet rollout tests make such versions): `fail20` answers every fifth request 500,
//! `slow300` answers 300 ms late.

use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::wasip3::http::types::{ErrorCode, Response};

/// What a handler returns.
type Answer = Result<Response, ErrorCode>;

wit_bindgen::generate!({
    path: "../../../wit/deps/wasi-nn",
    world: "ml",
});

/// edgeinfer's async model interface, for `/nn-late`.
mod nn {
    wit_bindgen::generate!({
        inline: "package faulty:late; world late { import edgeinfer:nn/infer@0.1.0; }",
        path: ["../../../wit/deps/wasi-nn", "../../../wit/deps/edgeinfer-nn"],
        // infer's tensor type is wasi:nn's, bound above.
        with: { "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::wasi::nn::tensor },
        generate_all,
    });
}

use wasi::nn::graph;
use wasi::nn::tensor::{Tensor, TensorType};

/// How `/ok` behaves: `normal` here; rewritten in place (same length) in worse copies.
static MODE: [u8; 28] = *b"EDGEINFER-TEST-MODE:normal..";

/// `/ok` answers of this instance, for `fail20`.
static ANSWERED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The marker's mode, read from memory at run time (so a rewritten copy behaves as rewritten).
fn mode() -> String {
    // SAFETY: a read of a static through a valid, aligned reference; volatile only so that the
    // compiler cannot fold the constant into the code.
    let bytes = unsafe { std::ptr::read_volatile(&MODE) };
    String::from_utf8_lossy(&bytes[20..]).trim_end_matches('.').to_string()
}

#[http_service]
async fn handle(request: Request) -> Answer {
    let path = request.uri().path().to_string();
    let fault = path.rsplit('/').next().unwrap_or("");
    if fault == "ok" {
        match mode().as_str() {
            "fail20" if ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 5 == 4 => {
                return (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose".to_string()).into_response();
            }
            "slow300" => spin_sdk::time::sleep(std::time::Duration::from_millis(300)).await,
            _ => {}
        }
    }
    if fault == "big" {
        return (StatusCode::OK, "x".repeat(20 << 20)).into_response();
    }
    if let Some(seconds) = fault.strip_prefix("trickle-").and_then(|n| n.parse::<u64>().ok()) {
        return trickle(seconds);
    }
    if fault == "nn-late" || fault == "infer-ok" {
        if fault == "nn-late" {
            spin_sdk::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        return (StatusCode::OK, infer_ok().await).into_response();
    }
    misbehave(fault).into_response()
}

/// Answers at once, then sends one line a second for `seconds` seconds.
fn trickle(seconds: u64) -> Answer {
    let (mut lines, body) = spin_sdk::http::body::stream::<String>();
    spin_sdk::wasip3::spawn(async move {
        for second in 0..seconds {
            spin_sdk::time::sleep(std::time::Duration::from_secs(1)).await;
            if lines.try_send(format!("second {second}\n")).is_err() {
                break;
            }
        }
    });
    (StatusCode::OK, body).into_response()
}

fn misbehave(fault: &str) -> (StatusCode, String) {
    match fault {
        "ok" => (StatusCode::OK, "ok".to_string()),
        "slow" => {
            busy_for(std::time::Duration::from_millis(800));
            (StatusCode::OK, "slow done".to_string())
        }
        "trap" => trap(),
        "panic" => panic!("this component panics on purpose"),
        "loop" => spin_forever(),
        "membomb" => allocate_forever(),
        "recursion" => (StatusCode::OK, recurse(1).to_string()),
        "alloc128" => {
            let mut block: Vec<u8> = Vec::new();
            let got = block.try_reserve_exact(128 << 20).is_ok();
            (StatusCode::OK, if got { "allocated" } else { "refused" }.to_string())
        }
        nn if nn.starts_with("nn-") => (StatusCode::OK, bad_tensors(nn)),
        other => (StatusCode::NOT_FOUND, format!("no fault named {other:?}")),
    }
}

fn busy_for(duration: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < duration {
        std::hint::black_box(0u64);
    }
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn allocate_forever() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[0]
}

/// An int64 tensor of `shape` filled with `value`.
fn filled(shape: &[u32], value: i64) -> Tensor {
    let count: u32 = shape.iter().product();
    let data: Vec<u8> = (0..count).flat_map(|_| value.to_le_bytes()).collect();
    Tensor::new(shape, TensorType::I64, &data)
}

fn ids(shape: &[u32]) -> Tensor {
    filled(shape, 1000)
}

/// One valid call of edgeinfer:nn/infer (async: the instance serves other requests meanwhile).
async fn infer_ok() -> String {
    use nn::edgeinfer::nn::infer;
    let tensor = |value: i64| infer::Tensor {
        dimensions: vec![1, 4],
        ty: infer::TensorType::I64,
        data: (0..4).flat_map(|_| value.to_le_bytes()).collect(),
    };
    let inputs = vec![
        ("input_ids".to_string(), tensor(1000)),
        ("attention_mask".to_string(), tensor(1)),
        ("token_type_ids".to_string(), tensor(0)),
    ];
    match infer::compute("minilm".to_string(), inputs, vec!["last_hidden_state".to_string()]).await {
        Ok(outputs) => format!(
            "ok: {}",
            outputs
                .iter()
                .map(|(name, t)| format!("{name} {:?}", t.dimensions))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("infer: {e:?}"),
    }
}

/// Runs one wasi:nn call shaped by `case`; the outcome as text.
fn bad_tensors(case: &str) -> String {
    let graph = match graph::load_by_name("minilm") {
        Ok(graph) => graph,
        Err(e) => return format!("load-by-name: {:?}: {}", e.code(), e.data()),
    };
    let context = match graph.init_execution_context() {
        Ok(context) => context,
        Err(e) => return format!("init-execution-context: {:?}: {}", e.code(), e.data()),
    };
    let ok = [1, 4];
    let mut inputs = vec![
        ("input_ids".to_string(), ids(&ok)),
        ("attention_mask".to_string(), filled(&ok, 1)),
        ("token_type_ids".to_string(), filled(&ok, 0)),
    ];
    match case {
        "nn-ok" => {}
        "nn-shape" => inputs[1].1 = filled(&[1, 3], 1),
        "nn-rank" => inputs[0].1 = ids(&[4]),
        "nn-type" => inputs[0].1 = Tensor::new(&ok, TensorType::Fp32, &[0u8; 16]),
        "nn-data" => inputs[0].1 = Tensor::new(&ok, TensorType::I64, &[0u8; 8]),
        "nn-missing" => {
            inputs.pop();
        }
        "nn-extra" => inputs.push(("pixel_values".to_string(), ids(&ok))),
        other => return format!("no wasi:nn case named {other:?}"),
    }
    match context.compute(inputs) {
        Ok(outputs) => {
            let shapes: Vec<_> =
                outputs.iter().map(|(name, t)| format!("{name} {:?}", t.dimensions())).collect();
            format!("ok: {}", shapes.join(", "))
        }
        Err(e) => format!("compute: {:?}: {}", e.code(), e.data()),
    }
}
