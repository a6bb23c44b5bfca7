//! Shadow traffic: a canary in shadow mode runs on a copy of the request while the stable version
//! answers; the client gets the stable answer as it is, streamed at its own pace, and only how the
//! canary's answer differs from it is recorded (`edgeinfer_shadow_requests_total` by outcome, and
//! the largest absolute difference between the two JSON answers' numbers). An answer too big or
//! too slow to compare is passed through and counted as `skipped`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiBody;

use crate::response::full_body;
use edgeinfer_runtime::component::LoadedComponent;

/// Answers larger than this are not compared.
const MAX_COMPARED_BYTES: usize = 16 << 20;

/// Answers that end later than this after their request began are not compared.
const MAX_COMPARED_WAIT: Duration = Duration::from_secs(30);

/// Marks the request numbers of shadow runs (their trap causes are nobody's).
const SHADOW_REQUEST: u64 = 1 << 63;

/// What a shadow run needs of the original request besides its body.
pub struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

pub fn copy_head<B>(req: &Request<B>) -> Head {
    Head { method: req.method().clone(), uri: req.uri().clone(), headers: req.headers().clone() }
}

/// Returns the stable answer for the client, untouched but for a copy taken as it streams by, and
/// starts the shadow run on a copy of the request (`body`); the two are compared in the background
/// once both are complete. `started` is when the request began.
pub fn mirror(
    stable: Response<WasiBody>,
    shadow: Arc<LoadedComponent>,
    head: Head,
    body: Bytes,
    number: u64,
    started: Instant,
) -> Response<WasiBody> {
    let (parts, stream) = stable.into_parts();
    let (copied, copy) = oneshot::channel();
    tokio::spawn(run(shadow, head, body, number, started, parts.status, copy));
    let tee = Tee { inner: stream, copy: Some(BytesMut::new()), started, copied: Some(copied) };
    Response::from_parts(parts, tee.boxed_unsync())
}

/// The stable answer's body on its way to the client, copied while it stays comparable.
struct Tee {
    inner: WasiBody,
    /// The copy so far; `None` once the answer is too big or too slow to compare.
    copy: Option<BytesMut>,
    started: Instant,
    /// Gets the whole copy (or `None`) when the body ends; dropped unsent if the client leaves.
    copied: Option<oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    fn keep(&mut self, data: &Bytes) {
        if let Some(copy) = &mut self.copy {
            if copy.len() + data.len() <= MAX_COMPARED_BYTES && self.started.elapsed() <= MAX_COMPARED_WAIT {
                copy.extend_from_slice(data);
            } else {
                self.copy = None;
            }
        }
    }

    fn finish(&mut self) {
        if let Some(copied) = self.copied.take() {
            let within_time = self.started.elapsed() <= MAX_COMPARED_WAIT;
            let _ = copied.send(self.copy.take().filter(|_| within_time).map(BytesMut::freeze));
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = <WasiBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                }
                // The server may not poll again once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.copy = None;
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs the shadow version on the copied request, then compares its answer with the stable one
/// once the client has had it whole.
async fn run(
    shadow: Arc<LoadedComponent>,
    head: Head,
    body: Bytes,
    number: u64,
    started: Instant,
    status: StatusCode,
    stable: oneshot::Receiver<Option<Bytes>>,
) {
    let mut request = Request::new(full_body(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.headers_mut() = head.headers;
    let deadline = Duration::from_millis(shadow.limits.request_timeout_ms);
    let answered = tokio::time::timeout(deadline, async {
        let _slot = shadow.admission.admit().await?;
        // A shadow's trap cause is not reported: its outcome is counted as failed.
        let (ticket, _) = edgeinfer_runtime::instance::RequestTicket::new(number | SHADOW_REQUEST, None);
        shadow.handle(ticket, request).await.ok()
    })
    .await;
    let Ok(Some(response)) = answered else {
        record(&shadow, "failed", None);
        return;
    };
    let (parts, stream) = response.into_parts();
    // Too big or too slow is not a failure of the shadow: there is just nothing to compare.
    let left = MAX_COMPARED_WAIT.saturating_sub(started.elapsed());
    let read = tokio::time::timeout(left, http_body_util::Limited::new(stream, MAX_COMPARED_BYTES).collect());
    let shadow_body = read.await.ok().and_then(Result::ok).map(|collected| collected.to_bytes());
    let (Ok(Some(stable)), Some(shadow_body)) = (stable.await, shadow_body) else {
        record(&shadow, "skipped", None);
        return;
    };
    let (outcome, difference) = compare(status, &stable, parts.status, &shadow_body);
    tracing::debug!(component = %shadow.id, version = %&shadow.version[..12], outcome, ?difference, "shadow answer compared");
    record(&shadow, outcome, difference);
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
