//! Files from URLs (`[[asset]] url = ...`): `https://`, `http://`, `s3://bucket/key` (`s3`), or
//! `oci://host/repository:tag` (the layer of the pinned digest, through the `Sources`' registry
//! settings). Streamed into a temporary file in the cache and hashed on the way, verified against
//! the pinned sha256, then renamed into place, so a failed, partial or wrong download never leaves
//! a file that looks valid. Refused or cut connections and 5xx/408/429 answers are retried with
//! backoff (a cut HTTP transfer resumes with a Range request where it stopped); a 4xx (a missing
//! key, missing credentials) or a wrong sum is not.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::Sources;
use crate::cache::{Blob, cache_dir};
use crate::sink::{Failure, Resume, Sink};

/// Tries per download (the first and three retries, after 0.5, 1 and 2 s).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

impl Sources {
    /// The cached, verified copy of the file at `url`, downloaded on first use. Blocking.
    pub fn fetch_url(&self, url: &str, sha256: &str) -> Result<std::path::PathBuf> {
        // It names a cache path: 64 hex digits and nothing else.
        edgeinfer_config::runtime_config::check_sha256(sha256)?;
        crate::on_own_thread(|| match url.strip_prefix("oci://") {
            Some(reference) => {
                self.fetch_oci(reference, sha256).with_context(|| format!("{url}: the layer sha256:{sha256}"))
            }
            None => fetch_url_here(url, sha256),
        })
        .with_context(|| url.to_string())?
    }

    /// The layer `sha256:<sha256>` of an OCI artifact, verified by the registry client as it
    /// streams into the OCI cache (the same content-addressed store `registry pull` uses).
    fn fetch_oci(&self, reference: &str, sha256: &str) -> Result<std::path::PathBuf> {
        let digest = format!("sha256:{}", sha256.to_ascii_lowercase());
        crate::current_thread_runtime()?.block_on(edgeinfer_registry::fetch_layer(
            reference,
            &digest,
            &self.registry,
            &cache_dir(),
        ))
    }
}

fn fetch_url_here(url: &str, sha256: &str) -> Result<std::path::PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty() && !n.contains('?')).unwrap_or("download");
    let blob = Blob::new(sha256, name);
    if let Some(cached) = blob.verified() {
        return Ok(cached);
    }
    let partial = blob.partial()?;
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None)
        .build()
        .context("cannot build an HTTP client")?;
    let mut backoff = FIRST_BACKOFF;
    // Where a cut HTTP transfer stopped: the next try asks for the rest (a Range request).
    let mut resume: Option<Resume> = None;
    for attempt in 1..=ATTEMPTS {
        let result = if url.starts_with("s3://") {
            crate::s3::attempt(url, &partial, sha256)
        } else {
            attempt_download(&client, url, &partial, sha256, &mut resume)
        };
        let resumable =
            matches!(result, Err(Failure::Transient(_))) && resume.is_some() && attempt < ATTEMPTS;
        if !matches!(result, Ok(())) && !resumable {
            resume = None;
            let _ = std::fs::remove_file(&partial);
        }
        match result {
            Ok(()) => {
                std::fs::rename(&partial, &blob.path)
                    .with_context(|| format!("cannot move the download into {}", blob.path.display()))?;
                return Ok(blob.path);
            }
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(e)) if attempt == ATTEMPTS => {
                return Err(e.context(format!("{url}: gave up after {ATTEMPTS} tries")));
            }
            Err(Failure::Transient(e)) => {
                eprintln!("edgeinfer: {e:#}; retrying in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// One GET of `url` into `partial`, checked against `sha256`; after a cut transfer (`resume`),
/// only the rest is asked for, and appended when the server answers 206 from that offset.
fn attempt_download(
    client: &reqwest::blocking::Client,
    url: &str,
    partial: &Path,
    sha256: &str,
    resume: &mut Option<Resume>,
) -> Result<(), Failure> {
    let mut request = client.get(url);
    if let Some(from) = resume.as_ref() {
        request = request.header(reqwest::header::RANGE, format!("bytes={}-", from.received));
        if let Some(validator) = &from.validator {
            // A changed file answers 200 with all of it, never a rest to splice on the old part.
            request = request.header(reqwest::header::IF_RANGE, validator);
        }
    }
    let mut response = request.send().map_err(|e| Failure::Transient(anyhow!("{url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let error = anyhow!("{url}: HTTP {status}");
        // 416: the rest asked for is not there (the file changed or ended): start over.
        let transient = status.is_server_error() || matches!(status.as_u16(), 408 | 416 | 429);
        *resume = None;
        return Err(if transient { Failure::Transient(error) } else { Failure::Permanent(error) });
    }
    // 206 with the rest from where the last try stopped: append. 200: the whole file again. Any
    // other 206: start over on the next try.
    let validator = ["etag", "last-modified"]
        .iter()
        .find_map(|name| response.headers().get(*name)?.to_str().ok().map(str::to_string));
    let (continued, length) = match (resume.take(), status.as_u16()) {
        (Some(from), 206) => match content_range(&response) {
            Some((first, last, Some(total))) if first == from.received && last + 1 == total => {
                (Some(from), Some(total))
            }
            _ => {
                return Err(Failure::Transient(anyhow!(
                    "{url}: the server answered another range than the rest; starting over"
                )));
            }
        },
        (None, 206) => return Err(Failure::Transient(anyhow!("{url}: a partial answer to a whole request"))),
        _ => (None, response.content_length()),
    };
    let mut sink = match continued {
        Some(from) => Sink::resume(url, partial, length, from)?,
        None => Sink::create(url, partial, length)?,
    };
    if sink.validator.is_none() {
        sink.validator = validator;
    }
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => sink.write(&buffer[..n])?,
            Err(e) => {
                *resume = sink.resume_point();
                return Err(sink.broken(e));
            }
        }
    }
    if sink.is_short() {
        *resume = sink.resume_point();
    }
    sink.finish(sha256)
}

/// A 206 answer's `Content-Range: bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
fn content_range(response: &reqwest::blocking::Response) -> Option<(u64, u64, Option<u64>)> {
    let range = response.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let (span, total) = range.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total.trim().parse().ok()))
}
