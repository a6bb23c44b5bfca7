//! Where a request's time went, reported in TEI's headers: `x-tokenization-time` and
//! `x-inference-time` (the model's computations, the wait in the model's batch queue included),
//! in whole milliseconds. The host adds `x-queue-time`, `x-total-time` and `x-compute-time`.
//! For the host's traces, `x-edgeinfer-tokenization` says when tokenization began and how long it
//! took, in microseconds (`OFFSET,DURATION`, the offset from the start of the handler); the host
//! turns it into a `tokenize` span and does not pass it on.

use std::time::{Duration, Instant};

use bytes::Bytes;
use spin_sdk::http::{FullBody, Response};

/// When and how long the handler tokenized, for the host's trace (`OFFSET,DURATION` in µs).
pub const TOKENIZATION_HEADER: &str = "x-edgeinfer-tokenization";

/// A request's time spent tokenizing and computing.
pub struct Timings {
    started: Instant,
    /// When tokenization first began, after `started`.
    tokenization_offset: Option<Duration>,
    tokenization: Duration,
    inference: Duration,
}

impl Timings {
    /// Nothing spent yet.
    pub fn start() -> Timings {
        Timings {
            started: Instant::now(),
            tokenization_offset: None,
            tokenization: Duration::ZERO,
            inference: Duration::ZERO,
        }
    }

    /// Runs `work`, counting its time as tokenization.
    pub fn tokenization<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        self.tokenization_offset.get_or_insert(started - self.started);
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
        if let Some(offset) = self.tokenization_offset {
            let (offset, took) = (offset.as_micros(), self.tokenization.as_micros());
            if let Ok(value) = format!("{offset},{took}").parse() {
                headers.insert(TOKENIZATION_HEADER, value);
            }
        }
        response
    }
}
