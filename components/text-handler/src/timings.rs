//! Where a request's time went, reported in TEI's headers: `x-tokenization-time` and
//! `x-inference-time` (the model's computations, the wait in the model's batch queue included),
//! in whole milliseconds. The host adds `x-queue-time`, `x-total-time` and `x-compute-time`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use spin_sdk::http::{FullBody, Response};

/// A request's time spent tokenizing and computing.
pub struct Timings {
    tokenization: Duration,
    inference: Duration,
}

impl Timings {
    /// Nothing spent yet.
    pub fn start() -> Timings {
        Timings { tokenization: Duration::ZERO, inference: Duration::ZERO }
    }

    /// Runs `work`, counting its time as tokenization.
    pub fn tokenization<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = work();
        self.tokenization += started.elapsed();
        result
    }

    /// Awaits `work`, counting its time as inference.
    pub async fn inference<T>(&mut self, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = work.await;
        self.inference += started.elapsed();
        result
    }

    /// The response with the timing headers.
    pub fn add_headers(&self, mut response: Response<FullBody<Bytes>>) -> Response<FullBody<Bytes>> {
        let headers = response.headers_mut();
        headers.insert("x-tokenization-time", (self.tokenization.as_millis() as u64).into());
        headers.insert("x-inference-time", (self.inference.as_millis() as u64).into());
        response
    }
}
