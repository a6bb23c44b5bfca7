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
}

/// Sequences per second of one batch size.
#[derive(Serialize)]
pub struct Point {
    pub batch_size: usize,
    pub sequences_per_s: f64,
}

/// The ceiling run's outcome.
#[derive(Serialize)]
pub struct CeilingResult {
    pub label: &'static str,
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
        let mut sequences = 0usize;
        while started.elapsed() < Duration::from_secs_f64(args.seconds) {
            pipeline::run(&mut session, &batch)?;
            sequences += size;
        }
        points.push(Point {
            batch_size: size,
            sequences_per_s: sequences as f64 / started.elapsed().as_secs_f64(),
        });
    }
    let best =
        points.iter().max_by(|a, b| a.sequences_per_s.total_cmp(&b.sequences_per_s)).expect("a batch size");
    Ok(CeilingResult {
        label: "raw ONNX Runtime",
        tokens: one.width,
        best_batch_size: best.batch_size,
        best_sequences_per_s: best.sequences_per_s,
        points,
    })
}
