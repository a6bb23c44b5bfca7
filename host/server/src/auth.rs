//! The one credential rule of every surface (component routes, OpenAI's and TEI's routes, KServe
//! REST and gRPC, the admin API), decided here and nowhere else:
//!
//! | the request carries                                        | answer                         |
//! |------------------------------------------------------------|--------------------------------|
//! | no `Authorization` header, or not `Bearer <token>`         | 401 `Unauthorized` (gRPC `UNAUTHENTICATED`), `WWW-Authenticate: Bearer` |
//! | a well-formed bearer token that is not accepted there      | 403 `Forbidden` (gRPC `PERMISSION_DENIED`) |
//! | a token accepted there                                     | the route's own answer         |
//!
//! Tokens are compared in constant time.

use std::path::{Path, PathBuf};

use http::HeaderMap;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or malformed ones: 401.
    Missing,
    /// A well-formed token that is not accepted: 403.
    NotAccepted,
}

impl Refusal {
    /// The host error this refusal answers as.
    pub fn error(self) -> crate::error::HostError {
        match self {
            Refusal::Missing => crate::error::HostError::Unauthorized,
            Refusal::NotAccepted => crate::error::HostError::Forbidden,
        }
    }

    /// The JSON error answer (with `WWW-Authenticate: Bearer` on a 401).
    pub fn answer(self, what: &str) -> http::Response<wasmtime_wasi_http::WasiBody> {
        self.error().answer(self.message(what))
    }

    /// The answer's message, naming what the credential is for.
    pub fn message(self, what: &str) -> String {
        match self {
            Refusal::Missing => {
                format!("{what} is required: send it as a bearer token (`Authorization: Bearer <token>`)")
            }
            Refusal::NotAccepted => format!("the bearer token sent is not {what}"),
        }
    }
}

/// The bearer token of `headers`: `Ok(None)` without an `Authorization` header, `Err` when it is
/// there but is not `Bearer <token>` with a non-empty, visible-ASCII token.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| Refusal::Missing)?;
    let (scheme, token) = text.split_once(' ').ok_or(Refusal::Missing)?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_graphic());
    well_formed.then_some(Some(token)).ok_or(Refusal::Missing)
}

/// Checks `headers` against the `accepted` tokens by the table above.
pub fn check<'a>(headers: &HeaderMap, accepted: impl IntoIterator<Item = &'a str>) -> Result<(), Refusal> {
    let token = bearer(headers)?.ok_or(Refusal::Missing)?;
    // Every accepted token is compared, so the time taken does not tell which one matched.
    let matched =
        accepted.into_iter().fold(false, |matched, expected| matched | constant_time_eq(token, expected));
    if matched { Ok(()) } else { Err(Refusal::NotAccepted) }
}

/// Compares secrets without an early exit, so the time taken does not tell how much matched.
pub fn constant_time_eq(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Why an API key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error(
        "--api-key: the API key must be at least {} visible ASCII characters (no spaces)",
        ApiKey::MIN_LENGTH
    )]
    Weak,
    #[error("cannot read the API key file {}: {source}", file.display())]
    Unreadable { file: PathBuf, source: std::io::Error },
    #[error(
        "--api-key-host-routes puts the host's routes behind the API key: give --api-key or --api-key-file"
    )]
    HostRoutesWithoutKey,
}

/// The key that guards the inference routes (`up --api-key`, TEI's flag), and where it applies.
#[derive(Clone)]
pub struct ApiKey {
    key: String,
    /// Whether the host's own routes (`/health`, `/ready`, `/metrics`, `/docs`, `/openapi.json`)
    /// need it too; by default they stay open for probes and scrapers.
    pub host_routes: bool,
}

impl ApiKey {
    /// Shortest key accepted: a guessable key guards nothing.
    pub const MIN_LENGTH: usize = 16;

    /// A key of at least `MIN_LENGTH` visible ASCII characters (it travels in a header).
    pub fn new(key: String, host_routes: bool) -> Result<ApiKey, ApiKeyError> {
        if key.len() < ApiKey::MIN_LENGTH || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiKeyError::Weak);
        }
        Ok(ApiKey { key, host_routes })
    }

    /// The key of `up`'s options: given as it is, else read from `file` (trimmed); none when
    /// neither is given, which `host_routes` may not ask to protect.
    pub fn from_options(
        key: Option<String>,
        file: Option<&Path>,
        host_routes: bool,
    ) -> Result<Option<ApiKey>, ApiKeyError> {
        let key = match (key, file) {
            (Some(key), _) => key,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|source| ApiKeyError::Unreadable { file: file.to_path_buf(), source })?
                .trim()
                .to_string(),
            (None, None) if host_routes => return Err(ApiKeyError::HostRoutesWithoutKey),
            (None, None) => return Ok(None),
        };
        ApiKey::new(key, host_routes).map(Some)
    }

    /// The key itself.
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&[u8]>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn missing_or_malformed_is_401_and_wrong_is_403() {
        let accepted = ["a-key-of-some-length", "another-key-0123456"];
        assert_eq!(check(&headers(None), accepted), Err(Refusal::Missing));
        for malformed in
            [&b"a-key-of-some-length"[..], b"Basic dXNlcjpwYXNz", b"Bearer ", b"Bearer", b"Bearer \xff"]
        {
            assert_eq!(check(&headers(Some(malformed)), accepted), Err(Refusal::Missing), "{malformed:?}");
        }
        assert_eq!(check(&headers(Some(b"Bearer wrong-key-000000000")), accepted), Err(Refusal::NotAccepted));
        assert_eq!(check(&headers(Some(b"Bearer a-key-of-some-lengt")), accepted), Err(Refusal::NotAccepted));
        assert_eq!(check(&headers(Some(b"Bearer a-key-of-some-length")), accepted), Ok(()));
        assert_eq!(check(&headers(Some(b"bearer another-key-0123456")), accepted), Ok(()));
        // Nothing accepted: every token is refused as not allowed, none is let through.
        assert_eq!(check(&headers(Some(b"Bearer a-key-of-some-length")), []), Err(Refusal::NotAccepted));
        assert_eq!(Refusal::Missing.error().status().as_u16(), 401);
        assert_eq!(Refusal::NotAccepted.error().status().as_u16(), 403);
    }

    #[test]
    fn short_or_spaced_api_keys_are_refused() {
        assert!(ApiKey::new("short".into(), false).is_err());
        assert!(ApiKey::new("has a space in it, sadly".into(), false).is_err());
        assert_eq!(ApiKey::new("0123456789abcdef".into(), true).unwrap().key(), "0123456789abcdef");
    }
}
