//! Shadow traffic: a canary in shadow mode runs on a copy of the request after the stable version
//! answered; the client gets the stable answer, unchanged, and only how the canary's answer
//! differs from it is recorded (`edgeinfer_shadow_requests_total` by outcome, and the largest
//! absolute difference between the two JSON answers' numbers).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use wasmtime_wasi_http::WasiBody;

use super::{error, full_body};
use crate::app::LoadedComponent;

/// Answers larger than this are not compared (the client still gets them whole).
const MAX_COMPARED_BYTES: usize = 16 << 20;

/// Marks the request numbers of shadow runs (their trap causes are nobody's).
const SHADOW_REQUEST: u64 = 1 << 63;

/// What a shadow run needs of the original request besides its body.
pub struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

pub fn copy_head(req: &Request<Incoming>) -> Head {
    Head { method: req.method().clone(), uri: req.uri().clone(), headers: req.headers().clone() }
}

/// Returns the stable answer as the client will get it, after starting the shadow run on a copy
/// of the request in the background.
pub async fn mirror(
    stable: Response<WasiBody>,
    shadow: Arc<LoadedComponent>,
    head: Head,
    body: Bytes,
    number: u64,
) -> Response<WasiBody> {
    let (parts, stream) = stable.into_parts();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        http_body_util::Limited::new(stream, MAX_COMPARED_BYTES).collect(),
    );
    let stable_body = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => {
            record(&shadow, "failed", None);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ComponentFault",
                "the answer could not be read",
            );
        }
    };
    let stable_status = parts.status;
    tokio::spawn(run(shadow, head, body, number, stable_status, stable_body.clone()));
    Response::from_parts(parts, full_body(stable_body))
}

async fn run(
    shadow: Arc<LoadedComponent>,
    head: Head,
    body: Bytes,
    number: u64,
    status: StatusCode,
    stable: Bytes,
) {
    let mut request = Request::new(full_body(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.headers_mut() = head.headers;
    let deadline = Duration::from_millis(shadow.limits.request_timeout_ms);
    let answered = tokio::time::timeout(deadline, async {
        let _slot = shadow.admission.admit().await?;
        let response = shadow.handler.handle(number | SHADOW_REQUEST, request).await.ok()?;
        let (parts, stream) = response.into_parts();
        let bytes = http_body_util::Limited::new(stream, MAX_COMPARED_BYTES).collect().await.ok()?.to_bytes();
        Some((parts.status, bytes))
    })
    .await;
    match answered {
        Ok(Some((shadow_status, shadow_body))) => {
            let (outcome, difference) = compare(status, &stable, shadow_status, &shadow_body);
            tracing::debug!(component = %shadow.id, version = %&shadow.version[..12], outcome, ?difference, "shadow answer compared");
            record(&shadow, outcome, difference);
        }
        _ => record(&shadow, "failed", None),
    }
}

fn record(shadow: &LoadedComponent, outcome: &'static str, difference: Option<f64>) {
    let (component, version) = (shadow.id.clone(), shadow.version[..12].to_string());
    metrics::counter!("edgeinfer_shadow_requests_total", "component" => component.clone(), "version" => version.clone(), "outcome" => outcome)
        .increment(1);
    if let Some(difference) = difference {
        metrics::histogram!("edgeinfer_shadow_max_abs_diff", "component" => component, "version" => version)
            .record(difference);
    }
}

/// `same` (equal status and answer), `differs` (equal status and JSON shape, numbers apart by
/// the returned largest absolute difference) or `mismatch` (status, shape or text differ).
fn compare(
    status: StatusCode,
    stable: &[u8],
    shadow_status: StatusCode,
    shadow: &[u8],
) -> (&'static str, Option<f64>) {
    if status != shadow_status {
        return ("mismatch", None);
    }
    let (Ok(a), Ok(b)) = (serde_json::from_slice::<Value>(stable), serde_json::from_slice::<Value>(shadow))
    else {
        return (if stable == shadow { "same" } else { "mismatch" }, None);
    };
    match max_abs_diff(&a, &b) {
        Some(0.0) => ("same", Some(0.0)),
        Some(d) => ("differs", Some(d)),
        None => ("mismatch", None),
    }
}

/// The largest absolute difference between corresponding numbers, or None when the two values
/// do not have the same shape (or differ in anything but numbers).
fn max_abs_diff(a: &Value, b: &Value) -> Option<f64> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some((x.as_f64()? - y.as_f64()?).abs()),
        (Value::Array(xs), Value::Array(ys)) if xs.len() == ys.len() => {
            xs.iter().zip(ys).try_fold(0.0f64, |m, (x, y)| Some(m.max(max_abs_diff(x, y)?)))
        }
        (Value::Object(xs), Value::Object(ys)) if xs.len() == ys.len() => {
            xs.iter().try_fold(0.0f64, |m, (k, x)| Some(m.max(max_abs_diff(x, ys.get(k)?)?)))
        }
        _ => (a == b).then_some(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_compare_by_status_shape_and_numbers() {
        let ok = StatusCode::OK;
        assert_eq!(compare(ok, b"[[0.5, 1.0]]", ok, b"[[0.5, 1.0]]"), ("same", Some(0.0)));
        let (outcome, d) = compare(ok, b"[[0.5, 1.0]]", ok, b"[[0.25, 1.0]]");
        assert_eq!((outcome, d), ("differs", Some(0.25)));
        assert_eq!(compare(ok, b"[[0.5]]", ok, b"[[0.5, 1.0]]").0, "mismatch");
        assert_eq!(
            compare(ok, br#"[{"label":"a","score":1}]"#, ok, br#"[{"label":"b","score":1}]"#).0,
            "mismatch"
        );
        assert_eq!(compare(ok, b"[1]", StatusCode::INTERNAL_SERVER_ERROR, b"[1]").0, "mismatch");
        assert_eq!(compare(ok, b"plain", ok, b"plain"), ("same", None));
    }
}
