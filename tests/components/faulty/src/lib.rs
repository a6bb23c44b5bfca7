//! Misbehaves on request, by path: `/ok` answers, `/slow` answers after 800 ms of work, `/trap`
//! executes `unreachable`, `/panic`
//! panics, `/loop` never returns, `/membomb` allocates until memory runs out, `/recursion`
//! overflows the stack.

use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let path = request.uri().path().to_string();
    match path.rsplit('/').next().unwrap_or("") {
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
