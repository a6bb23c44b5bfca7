//! The native pipeline: over HTTP (`native`, the same /embed contract as the embed component) and
//! in-process (`inproc`, no HTTP at all), to measure what Wasm and HTTP each add.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::pipeline::{self, ModelArgs};

/// Arguments of `edgeinfer-bench native`.
#[derive(clap::Args)]
pub struct NativeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:3100")]
    listen: SocketAddr,
}

/// Arguments of `edgeinfer-bench inproc`.
#[derive(clap::Args)]
pub struct InprocArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text embedded, one at a time.
    #[arg(long)]
    text: String,
    /// Calls measured (after 50 of warm-up).
    #[arg(long, default_value_t = 1000)]
    n: usize,
}

struct Pipeline {
    tokenizer: tokenizers::Tokenizer,
    session: Mutex<ort::session::Session>,
}

impl Pipeline {
    fn load(args: &ModelArgs) -> Result<Pipeline> {
        Ok(Pipeline {
            tokenizer: pipeline::tokenizer(&args.tokenizer, 256)?,
            session: Mutex::new(pipeline::session(args)?),
        })
    }

    fn embed(&self, texts: &[String], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let batch = pipeline::encode(&self.tokenizer, texts)?;
        let (states, hidden) = pipeline::run(&mut self.session.lock().unwrap(), &batch)?;
        Ok(pipeline::pool(&states, hidden, &batch, normalize))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    normalize: bool,
}

fn yes() -> bool {
    true
}

/// Serves POST /embed until the process is killed.
pub async fn serve(args: NativeArgs) -> Result<()> {
    let pipeline = Arc::new(Pipeline::load(&args.model)?);
    let app = axum::Router::new().route("/embed", post(embed)).with_state(pipeline);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("Serving http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn embed(
    State(pipeline): State<Arc<Pipeline>>,
    Json(request): Json<EmbedRequest>,
) -> Result<Json<Vec<Vec<f32>>>, (StatusCode, Json<Value>)> {
    let texts = match request.inputs {
        Inputs::One(text) => vec![text],
        Inputs::Many(texts) => texts,
    };
    if texts.is_empty() {
        let error = json!({"error": "inputs is empty", "error_type": "Validation"});
        return Err((StatusCode::UNPROCESSABLE_ENTITY, Json(error)));
    }
    let normalize = request.normalize;
    tokio::task::spawn_blocking(move || pipeline.embed(&texts, normalize))
        .await
        .map_err(|e| anyhow!("{e}"))
        .and_then(|r| r)
        .map(Json)
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": e.to_string(), "error_type": "Backend"})),
            )
        })
}

/// Latency of tokenize + ONNX Runtime + pooling for one text, in-process.
#[derive(Serialize)]
pub struct InprocResult {
    pub label: &'static str,
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub tokenize_p50_ms: f64,
}

/// Measures the in-process pipeline at concurrency 1.
pub fn inproc(args: InprocArgs) -> Result<InprocResult> {
    let pipeline = Pipeline::load(&args.model)?;
    let texts = vec![args.text.clone()];
    for _ in 0..50 {
        pipeline.embed(&texts, true)?;
    }
    let mut total = Vec::with_capacity(args.n);
    let mut tokenize = Vec::with_capacity(args.n);
    for _ in 0..args.n {
        let started = Instant::now();
        pipeline.embed(&texts, true)?;
        total.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        pipeline::encode(&pipeline.tokenizer, &texts)?;
        tokenize.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mean = total.iter().sum::<f64>() / total.len() as f64;
    total.sort_by(f64::total_cmp);
    tokenize.sort_by(f64::total_cmp);
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Ok(InprocResult {
        label: "native in-process",
        calls: args.n,
        p50_ms: at(&total, 0.5),
        p99_ms: at(&total, 0.99),
        mean_ms: mean,
        tokenize_p50_ms: at(&tokenize, 0.5),
    })
}
