//! One blocking HTTP exchange over wasi:http (WASI 0.2 outgoing-handler).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

use crate::failure::{Failure, RemoteError};

/// The server, from the environment.
pub struct Remote {
    scheme: Scheme,
    authority: String,
    prefix: String,
    token: Option<String>,
}

impl Remote {
    /// Reads `NN_REMOTE_URL` and `NN_REMOTE_TOKEN`.
    pub fn from_env() -> Result<Remote, RemoteError> {
        let url = std::env::var("NN_REMOTE_URL").map_err(|_| {
            RemoteError::new(
                Failure::InvalidArgument,
                "NN_REMOTE_URL is not set (the server to run models on)",
            )
        })?;
        let invalid = || {
            RemoteError::new(Failure::InvalidArgument, format!("NN_REMOTE_URL {url:?} is not an http(s) URL"))
        };
        let (scheme, rest) = match url.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            _ => return Err(invalid()),
        };
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(invalid());
        }
        let prefix =
            if prefix.is_empty() { String::new() } else { format!("/{}", prefix.trim_end_matches('/')) };
        let token = std::env::var("NN_REMOTE_TOKEN").ok().filter(|t| !t.is_empty());
        Ok(Remote { scheme, authority: authority.to_string(), prefix, token })
    }

    /// Sends one request and returns the status and the whole body.
    pub fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), RemoteError> {
        let failed = |what: &str, e: String| RemoteError::new(Failure::Runtime, format!("{what}: {e}"));
        let mut headers: Vec<(String, Vec<u8>)> = vec![("accept".into(), b"application/json".to_vec())];
        if body.is_some() {
            headers.push(("content-type".into(), b"application/json".to_vec()));
        }
        if let Some(token) = &self.token {
            headers.push(("authorization".into(), format!("Bearer {token}").into_bytes()));
        }
        let fields = Fields::from_list(&headers).map_err(|e| failed("bad header", format!("{e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let method = if method == "POST" { Method::Post } else { Method::Get };
        let _ = request.set_method(&method);
        let _ = request.set_scheme(Some(&self.scheme));
        let _ = request.set_authority(Some(&self.authority));
        let _ = request.set_path_with_query(Some(&format!("{}{path}", self.prefix)));
        let outgoing = request.body().map_err(|_| failed("request body", "unavailable".into()))?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| {
            RemoteError::new(Failure::Security, format!("request to {} refused: {e:?}", self.authority))
        })?;
        {
            let stream = outgoing.write().map_err(|_| failed("request body", "no stream".into()))?;
            for chunk in body.unwrap_or_default().chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| failed("sending the request", format!("{e:?}")))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| failed("sending the request", format!("{e:?}")))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| failed("no response", "the request did not finish".into()))?
            .map_err(|_| failed("no response", "already taken".into()))?
            .map_err(|e| failed(&format!("cannot reach {}", self.authority), format!("{e:?}")))?;
        let status = response.status();
        let incoming = response.consume().map_err(|_| failed("response body", "unavailable".into()))?;
        let stream = incoming.stream().map_err(|_| failed("response body", "no stream".into()))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend(chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(failed("reading the response", format!("{e:?}"))),
            }
        }
        Ok((status, bytes))
    }
}
