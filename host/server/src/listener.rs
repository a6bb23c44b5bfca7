//! The host's listening sockets, plain or TLS, and the one accept loop they share: each accepted
//! connection is handshaken (TLS) and served in a task of its own, so a slow client never holds
//! up the next; on shutdown the socket closes, every connection is asked to finish (keep-alive
//! ones close, requests in flight complete) and the loop waits for them up to a drain timeout.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::tls::Tls;

/// A TLS handshake must complete within this (as a request head must arrive within it).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound socket and, when it serves TLS, its configuration.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Tls>,
    /// Its name in logs (`public`, `admin`, `grpc`).
    name: &'static str,
}

impl Listener {
    /// Serves on `tcp`, with TLS when `tls` is given (its files are watched for changes).
    pub fn new(tcp: TcpListener, tls: Option<Tls>, name: &'static str) -> Listener {
        if let Some(tls) = &tls {
            tls.watch(crate::tls::RELOAD_INTERVAL);
        }
        Listener { tcp, tls, name }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// `https` or `http`, for the URLs the host prints.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The next connection, TCP-accepted only (the handshake is `Accepted::open`'s, in the
    /// connection's own task). A failed accept (out of file descriptors, most likely) is logged
    /// and tried again shortly, never spun on.
    async fn accept(&self) -> Accepted {
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Accepted { stream, peer, tls: self.tls.clone() };
                }
                Err(e) => {
                    tracing::warn!(listener = self.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A TCP connection not yet handshaken.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Tls>,
}

impl Accepted {
    /// The connection, after its TLS handshake when the listener serves TLS. A failed or slow
    /// handshake (no client certificate on an mTLS listener, an old protocol, a port scan) is
    /// counted and logged at debug level: it is the client's failure, not the host's.
    async fn open(self) -> Option<Connection> {
        let Some(tls) = self.tls else {
            return Some(Connection { peer: self.peer, stream: Stream::Plain(self.stream) });
        };
        let listener = tls.listener();
        let outcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.handshake(self.stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(("failed", e.to_string())),
            Err(_) => Err(("timeout", format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()))),
        };
        let label: &'static str = match &outcome {
            Ok(_) => "ok",
            Err((label, _)) => label,
        };
        metrics::counter!("edgeinfer_tls_handshakes_total", "listener" => listener, "outcome" => label)
            .increment(1);
        match outcome {
            Ok(stream) => Some(Connection { peer: self.peer, stream: Stream::Tls(Box::new(stream)) }),
            Err((_, why)) => {
                tracing::debug!(listener, peer = %self.peer, "TLS handshake refused: {why}");
                None
            }
        }
    }
}

/// An open connection: plain TCP, or TLS over it.
pub struct Connection {
    pub peer: SocketAddr,
    stream: Stream,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    /// Whether the client chose HTTP/2 by ALPN.
    pub fn is_h2(&self) -> bool {
        match &self.stream {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// The client's certificate (the end entity), when it presented one on an mTLS listener.
    pub fn client_certificate(&self) -> Option<CertificateDer<'static>> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.peer_certificates()?.first().map(|c| c.clone().into_owned()),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// tonic reads the peer's address from this, as from its own TCP streams.
impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let local_addr = match &self.stream {
            Stream::Plain(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok(),
        };
        tonic::transport::server::TcpConnectInfo { local_addr, remote_addr: Some(self.peer) }
    }
}

/// Accepts on `listener` until `shutdown` resolves, handing each open connection to `serve`
/// with the watcher its HTTP connection must be wrapped in; then drains (up to `drain`).
pub async fn run<F, Fut>(listener: Listener, shutdown: impl Future<Output = ()>, drain: Duration, serve: F)
where
    F: Fn(Connection, Watcher) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Taken before the handshake, so that a drain also waits for connections still in it.
        let watcher = connections.watcher();
        let serve = serve.clone();
        tokio::spawn(async move {
            if let Some(connection) = accepted.open().await {
                serve(connection, watcher).await;
            }
        });
    }
    let name = listener.name;
    drop(listener);
    tracing::info!(listener = name, open_connections = connections.count(), "draining");
    if tokio::time::timeout(drain, connections.shutdown()).await.is_err() {
        tracing::warn!(listener = name, "drain timed out after {} s; closing what is left", drain.as_secs());
    }
}

/// Streams (requests) in flight on one HTTP/2 connection.
const HTTP2_MAX_STREAMS: u32 = 256;
/// An HTTP/2 connection is pinged this often and dropped when a ping is not answered in time.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How an HTTP/1.1 connection is served.
#[derive(Clone, Copy)]
pub struct Http1Options {
    /// A request head must arrive within this.
    pub header_read_timeout: Duration,
    /// hyper's read buffer (and so the largest request head) in bytes; `None`: hyper's default.
    pub max_buf_size: Option<usize>,
}

/// Serves HTTP on `connection`: HTTP/2 when the client chose it by ALPN, else HTTP/1.1 with
/// keep-alive; watched by `watcher` for a graceful end.
pub async fn serve_http<S, B>(connection: Connection, watcher: Watcher, options: Http1Options, service: S)
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = connection.peer;
    let result = if connection.is_h2() {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // A peer that stops answering pings is dropped (HTTP/2 has no header-read timeout).
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(options.max_buf_size.unwrap_or(16 << 10) as u32)
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .keep_alive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
        watcher.watch(builder.serve_connection(TokioIo::new(connection), service)).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout);
        if let Some(size) = options.max_buf_size {
            builder.max_buf_size(size);
        }
        watcher.watch(builder.serve_connection(TokioIo::new(connection), service)).await
    };
    if let Err(e) = result {
        tracing::debug!("connection from {peer} ended: {e}");
    }
}

/// The connections of `listener` as a stream, for a server that takes its own (tonic): accepted
/// and handshaken in tasks of their own until the stream is dropped.
pub fn incoming(
    listener: Listener,
) -> impl futures::Stream<Item = Result<Connection, std::io::Error>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Connection, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = sender.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Some(connection) = accepted.open().await {
                    let _ = sender.send(Ok(connection)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
