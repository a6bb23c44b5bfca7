//! The raw ONNX Runtime ceiling: pre-tokenized batches of one sentence run back to back
//! in-process, at several batch sizes; the best sequences/s is what no server can beat.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::pipeline::{self, Batch, ModelArgs};

/// Arguments of `edgeinfer-bench ceiling`.
#[derive(clap::Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The sentence, tokenized once and repeated to fill each batch.
    #[arg(long)]
    text: String,
    /// Batch sizes tried.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,32,64")]
    batch_sizes: Vec<usize>,
    /// Seconds measured per batch size.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Microseconds of idleness before each run, as a server sees between requests at low load
    /// (0: back to back).
    #[arg(long, default_value_t = 0)]
    idle_us: u64,
}

/// Sequences per second of one batch size.
#[derive(Serialize)]
pub struct Point {
    pub batch_size: usize,
    /// Sequences per second of run time (idle pauses not counted).
    pub sequences_per_s: f64,
    /// Mean time of one run.
    pub ms_per_run: f64,
}

/// The ceiling run's outcome.
#[derive(Serialize)]
pub struct CeilingResult {
    pub label: &'static str,
    pub idle_us: u64,
    pub tokens: usize,
    pub points: Vec<Point>,
    pub best_batch_size: usize,
    pub best_sequences_per_s: f64,
}

/// Runs every batch size for `seconds` and reports the best.
pub fn run(args: CeilingArgs) -> Result<CeilingResult> {
    let tokenizer = pipeline::tokenizer(&args.model.tokenizer, 256)?;
    let one = pipeline::encode(&tokenizer, std::slice::from_ref(&args.text))?;
    let mut session = pipeline::session(&args.model)?;
    let mut points = Vec::new();
    for &size in &args.batch_sizes {
        let batch = Batch {
            rows: size,
            width: one.width,
            ids: one.ids.repeat(size),
            mask: one.mask.repeat(size),
            type_ids: one.type_ids.repeat(size),
        };
        for _ in 0..3 {
            pipeline::run(&mut session, &batch)?;
        }
        let started = Instant::now();
        let (mut runs, mut running) = (0u32, Duration::ZERO);
        while started.elapsed() < Duration::from_secs_f64(args.seconds) {
            if args.idle_us > 0 {
                std::thread::sleep(Duration::from_micros(args.idle_us));
            }
            let run_started = Instant::now();
            pipeline::run(&mut session, &batch)?;
            running += run_started.elapsed();
            runs += 1;
        }
        let seconds_per_run = running.as_secs_f64() / f64::from(runs);
        points.push(Point {
            batch_size: size,
            sequences_per_s: size as f64 / seconds_per_run,
            ms_per_run: seconds_per_run * 1000.0,
        });
    }
    let best =
        points.iter().max_by(|a, b| a.sequences_per_s.total_cmp(&b.sequences_per_s)).expect("a batch size");
    Ok(CeilingResult {
        label: "raw ONNX Runtime",
        idle_us: args.idle_us,
        tokens: one.width,
        best_batch_size: best.batch_size,
        best_sequences_per_s: best.sequences_per_s,
        points,
    })
}
