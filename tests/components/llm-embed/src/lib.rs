//! A Spin app as its users write it, against Spin's SDK alone: `POST /embeddings` with
//! `{"model", "texts"}` answers `spin_sdk::llm::generate_embeddings` (`{"embeddings",
//! "prompt_token_count"}`, or `{"error"}` with status 500); `POST /infer` with `{"model",
//! "prompt"}` answers `spin_sdk::llm::infer`. Run by `spin up` (Spin's engine or a remote one)
//! and by `edgeinfer up` (the host's engines), unchanged.

use bytes::Bytes;
use serde_json::{Value, json};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, IntoResponse, Request, Response, StatusCode};
use spin_sdk::http_service;
use spin_sdk::llm;

fn answer(status: StatusCode, body: Value) -> Response<FullBody<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(FullBody::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let path = request.uri().path().to_string();
    let body = match request.into_body().bytes().await {
        Ok(body) => body,
        Err(e) => return answer(StatusCode::BAD_REQUEST, json!({"error": format!("{e:?}")})),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, json!({"error": "not JSON"}));
    };
    let model = body["model"].as_str().unwrap_or("all-minilm-l6-v2");
    if path.ends_with("/infer") {
        let prompt = body["prompt"].as_str().unwrap_or("");
        return match llm::infer(llm::InferencingModel::Other(model), prompt) {
            Ok(result) => answer(StatusCode::OK, json!({"text": result.text})),
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": format!("{e:?}")})),
        };
    }
    let texts: Vec<String> = serde_json::from_value(body["texts"].clone()).unwrap_or_default();
    let model = match model {
        "all-minilm-l6-v2" => llm::EmbeddingModel::AllMiniLmL6V2,
        other => llm::EmbeddingModel::Other(other),
    };
    match llm::generate_embeddings(model, &texts) {
        Ok(result) => answer(
            StatusCode::OK,
            json!({"embeddings": result.embeddings, "prompt_token_count": result.usage.prompt_token_count}),
        ),
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": format!("{e:?}")})),
    }
}
