//! KServe v2 load on one model in each of the protocol's wire formats: REST with JSON tensors,
//! REST with binary tensors (the binary tensor data extension) and gRPC with raw contents. The
//! same request (one sentence, tokenized here), the same load shape; each answer is read whole.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use serde_json::json;

use crate::load::{LoadResult, Shape, drive};
use crate::pipeline;

/// The generated client of `inference.GRPCInferenceService`.
#[allow(clippy::all, missing_docs)]
mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_client::GrpcInferenceServiceClient;

/// The wire format.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
pub enum Protocol {
    Json,
    Binary,
    Grpc,
}

/// Arguments of `edgeinfer-bench kserve`.
#[derive(clap::Args)]
pub struct KserveArgs {
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// The REST API's base URL (json, binary), e.g. http://127.0.0.1:3000.
    #[arg(long)]
    url: Option<String>,
    /// The gRPC API's URL (grpc), e.g. http://127.0.0.1:8001.
    #[arg(long)]
    grpc: Option<String>,
    /// The model (a BERT with input_ids, attention_mask, token_type_ids).
    #[arg(long, default_value = "minilm")]
    model: String,
    /// The tokenizer.json that turns --text into the inputs.
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    text: String,
    /// The API's bearer token.
    #[arg(long, env = "EDGEINFER_KSERVE_TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    shape: Shape,
}

const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// Runs the load in `args.protocol` and summarises it.
pub async fn run(args: KserveArgs) -> Result<LoadResult> {
    let tokenizer = pipeline::tokenizer(&args.tokenizer, 256)?;
    let batch = pipeline::encode(&tokenizer, std::slice::from_ref(&args.text))?;
    let inputs = [&batch.ids, &batch.mask, &batch.type_ids];
    let width = batch.width;
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));
    match args.protocol {
        Protocol::Json | Protocol::Binary => {
            let base = args.url.context("--url is needed for REST")?;
            let url = Arc::new(format!("{base}/v2/models/{}/infer", args.model));
            let (body, header_length) = rest_body(args.protocol, &inputs, width);
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(args.shape.concurrency.max(64))
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(60))
                .build()?;
            let body = Bytes::from(body);
            let request = move || {
                let mut request = client.post(url.as_str()).body(body.clone());
                if let Some(length) = header_length {
                    request = request
                        .header("content-type", "application/octet-stream")
                        .header("inference-header-content-length", length);
                } else {
                    request = request.header("content-type", "application/json");
                }
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                async move {
                    match request.send().await {
                        Ok(r) => {
                            let ok = r.status().as_u16() == 200;
                            r.bytes().await.is_ok() && ok
                        }
                        Err(_) => false,
                    }
                }
            };
            drive(args.shape, request).await
        }
        Protocol::Grpc => {
            let address = args.grpc.context("--grpc is needed for gRPC")?;
            // One channel (an HTTP/2 connection) per client, as REST has a connection each.
            let mut clients = Vec::new();
            for _ in 0..args.shape.concurrency {
                let channel = tonic::transport::Endpoint::from_shared(address.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| anyhow!("cannot connect to {address}: {e}"))?;
                clients.push(GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20));
            }
            let clients = Arc::new(clients);
            let next = Arc::new(AtomicUsize::new(0));
            let message = grpc_request(&args.model, &inputs, width);
            let request = move || {
                let mut client = clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()].clone();
                let mut request = tonic::Request::new(message.clone());
                if let Some(auth) = &auth {
                    request.metadata_mut().insert("authorization", auth.parse().expect("ASCII token"));
                }
                async move {
                    client
                        .model_infer(request)
                        .await
                        .is_ok_and(|r| !r.get_ref().raw_output_contents.is_empty())
                }
            };
            drive(args.shape, request).await
        }
    }
}

/// The REST body, and its `Inference-Header-Content-Length` when binary.
fn rest_body(protocol: Protocol, inputs: &[&Vec<i64>; 3], width: usize) -> (Vec<u8>, Option<usize>) {
    let tensor = |name: &str, values: &Vec<i64>| match protocol {
        Protocol::Binary => json!({"name": name, "shape": [1, width], "datatype": "INT64",
                                   "parameters": {"binary_data_size": values.len() * 8}}),
        _ => json!({"name": name, "shape": [1, width], "datatype": "INT64", "data": values}),
    };
    let tensors: Vec<_> = INPUTS.iter().zip(inputs).map(|(name, values)| tensor(name, values)).collect();
    if protocol == Protocol::Json {
        return (json!({"inputs": tensors}).to_string().into_bytes(), None);
    }
    let header = json!({"inputs": tensors, "parameters": {"binary_data_output": true}}).to_string();
    let length = header.len();
    let mut body = header.into_bytes();
    for values in inputs {
        body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    (body, Some(length))
}

fn grpc_request(model: &str, inputs: &[&Vec<i64>; 3], width: usize) -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: model.into(),
        inputs: INPUTS
            .iter()
            .map(|name| proto::model_infer_request::InferInputTensor {
                name: name.to_string(),
                datatype: "INT64".into(),
                shape: vec![1, width as i64],
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs
            .iter()
            .map(|values| Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()))
            .collect(),
        ..Default::default()
    }
}
