//! Reading a request body whole, with a size limit and a deadline: the one helper every route
//! that takes a body uses (components, KServe, admin), so that each answers 413, 408 and 400 alike.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http::request::Parts;
use http_body_util::BodyExt;
use wasmtime_wasi_http::WasiBody;

use crate::error::HostError;

/// A refused request's body is read off up to this size and time, no more.
pub(crate) const REFUSED_DRAIN_BYTES: u64 = 64 << 10;
pub(crate) const REFUSED_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a body may take to arrive unless a route says otherwise.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The request's head and its whole body, or the error answer: 413 past `limit` bytes (declared
/// or sent), 408 when it is not all there within `timeout`, 400 when the connection fails.
pub async fn read<B>(
    req: Request<B>,
    limit: u64,
    timeout: Duration,
) -> Result<(Parts, Bytes), http::Response<WasiBody>>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let too_large =
        || HostError::PayloadTooLarge.answer(format!("request body is over the limit of {limit} bytes"));
    let declared =
        req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    match read_limited(body, limit, timeout).await {
        _ if declared.is_some_and(|length| length > limit) => Err(too_large()),
        Ok(Read::Fits(bytes)) => Ok((parts, bytes)),
        Ok(Read::TooLarge) => Err(too_large()),
        Ok(Read::TimedOut) => Err(HostError::BodyTimeout.answer("the request body did not arrive in time")),
        Err(e) => Err(HostError::BadRequest.answer(format!("cannot read the request body: {e}"))),
    }
}

/// How reading a body of unknown length ended.
enum Read {
    Fits(Bytes),
    TooLarge,
    TimedOut,
}

/// Reads up to `limit` bytes. Past the limit the rest is read and discarded (up to 8 x the limit,
/// and never more than 64 MiB past it), so that a client still sending gets the 413 instead of a
/// reset connection.
async fn read_limited<B>(mut body: B, limit: u64, timeout: Duration) -> Result<Read, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut kept = BytesMut::new();
    let mut total: u64 = 0;
    let discard_cap = limit.saturating_mul(8).min(limit.saturating_add(64 << 20));
    let read = consume(&mut body, discard_cap, |data| {
        total += data.len() as u64;
        if total <= limit {
            kept.extend_from_slice(data);
        }
        total
    });
    Ok(match tokio::time::timeout(timeout, read).await {
        Ok(result) => {
            result?;
            if total <= limit { Read::Fits(kept.freeze()) } else { Read::TooLarge }
        }
        Err(_) if total > limit => Read::TooLarge,
        Err(_) => Read::TimedOut,
    })
}

/// Reads off the body of a request refused before it was read (401/403), so that a client still
/// sending it (an HTTP/2 stream, a small upload) gets the refusal instead of a reset; never for a
/// client waiting for `100 Continue` (it sends nothing until told to, and must not be told) or a
/// body declared larger than `cap`, whose connection is closed after the answer instead.
pub async fn drain_refused<B>(request: Request<B>, cap: u64, timeout: Duration)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    let headers = request.headers();
    let expects_continue = headers.get(http::header::EXPECT).is_some();
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    if !expects_continue && declared <= cap {
        drain(Box::pin(request.into_body()), cap, timeout).await;
    }
}

/// Reads and drops a body that will not be used (a refused call), up to `cap` bytes and within
/// `timeout`, so that a client still sending gets the error answer instead of a reset connection.
pub async fn drain<B>(mut body: B, cap: u64, timeout: Duration)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut total: u64 = 0;
    let _ = tokio::time::timeout(
        timeout,
        consume(&mut body, cap, |data| {
            total += data.len() as u64;
            total
        }),
    )
    .await;
}

/// Hands each data frame to `take` (which answers the bytes seen so far) until the body ends or
/// more than `cap` bytes were seen.
async fn consume<B>(body: &mut B, cap: u64, mut take: impl FnMut(&Bytes) -> u64) -> Result<(), B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref()
            && take(data) > cap
        {
            break;
        }
    }
    Ok(())
}
