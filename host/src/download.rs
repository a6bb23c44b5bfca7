//! Files from URLs (`[[asset]] url = ...`): `https://`, `http://`, or `s3://bucket/key` (endpoint,
//! region and credentials from the standard `AWS_*` environment variables, path-style requests,
//! through `object_store`). Streamed into a temporary file in the cache and hashed on the way,
//! verified against the pinned sha256, then renamed into place, so a failed, partial or wrong
//! download never leaves a file that looks valid. Refused or cut connections and 5xx/408/429
//! answers are retried with backoff; a 4xx (a missing key, missing credentials) or a wrong sum is
//! not.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};

use crate::provision::{Blob, cache_dir};

/// Tries per download (the first and three retries, after 0.5, 1 and 2 s).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Why one attempt failed.
enum Failure {
    /// Worth another try (connection refused or cut, 5xx).
    Transient(anyhow::Error),
    /// Another try would fail the same way (404, wrong sum, a cache that cannot be written).
    Permanent(anyhow::Error),
}

/// The cached, verified copy of the file at `url`, downloaded on first use.
pub fn fetch_url(url: &str, sha256: &str) -> Result<PathBuf> {
    // On a thread of its own: reqwest's blocking client runs its own runtime, which must not be
    // created or dropped inside the caller's (`edgeinfer up` provisions from the async runtime's
    // blocking pool).
    std::thread::scope(|scope| scope.spawn(|| fetch_url_here(url, sha256)).join())
        .unwrap_or_else(|_| Err(anyhow!("{url}: the download thread panicked")))
}

fn fetch_url_here(url: &str, sha256: &str) -> Result<PathBuf> {
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
    for attempt in 1..=ATTEMPTS {
        let result = if url.starts_with("s3://") {
            attempt_s3(url, &partial, sha256)
        } else {
            attempt_download(&client, url, &partial, sha256)
        };
        if !matches!(result, Ok(())) {
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

/// One GET of `url` into `partial`, checked against `sha256`.
fn attempt_download(
    client: &reqwest::blocking::Client,
    url: &str,
    partial: &Path,
    sha256: &str,
) -> Result<(), Failure> {
    let mut response = client.get(url).send().map_err(|e| Failure::Transient(anyhow!("{url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let error = anyhow!("{url}: HTTP {status}");
        let transient = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        return Err(if transient { Failure::Transient(error) } else { Failure::Permanent(error) });
    }
    let mut sink = Sink::create(url, partial, response.content_length())?;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => sink.write(&buffer[..n])?,
            Err(e) => return Err(sink.broken(e)),
        }
    }
    sink.finish(sha256)
}

/// One GET of `s3://bucket/key` into `partial`, checked against `sha256`.
fn attempt_s3(url: &str, partial: &Path, sha256: &str) -> Result<(), Failure> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;

    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        .ok_or_else(|| Failure::Permanent(anyhow!("{url}: not s3://BUCKET/KEY")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Permanent(anyhow!("cannot start an async runtime: {e}")))?;
    runtime.block_on(async {
        // Retries are this module's (the same for every source), not object_store's own.
        let retry = object_store::RetryConfig { max_retries: 0, ..Default::default() };
        let mut builder =
            object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
        // An endpoint the user gave as http:// (an S3-compatible server on a private network).
        let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
        if endpoint.is_ok_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| Failure::Permanent(anyhow!("{url}: {e}")))?;
        let result = store.get(&object_store::path::Path::from(key)).await.map_err(|e| {
            let error = anyhow!("{url}: {e}");
            match e {
                object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => Failure::Permanent(error),
                _ => Failure::Transient(error),
            }
        })?;
        let mut sink = Sink::create(url, partial, Some(result.meta.size))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => sink.write(&bytes)?,
                Err(e) => return Err(sink.broken(e)),
            }
        }
        sink.finish(sha256)
    })
}

/// A download being written: the partial file, its hash and its progress.
struct Sink<'a> {
    url: &'a str,
    partial: &'a Path,
    file: File,
    hasher: Sha256,
    received: u64,
    length: Option<u64>,
    progress: Progress,
}

impl<'a> Sink<'a> {
    fn create(url: &'a str, partial: &'a Path, length: Option<u64>) -> Result<Sink<'a>, Failure> {
        let file = File::create(partial)
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
        let progress = Progress::start(url, length);
        Ok(Sink { url, partial, file, hasher: Sha256::new(), received: 0, length, progress })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.file
            .write_all(bytes)
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", self.partial.display())))?;
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        self.progress.advance(self.received);
        Ok(())
    }

    /// The transfer broke: worth another try.
    fn broken(&self, error: impl std::fmt::Display) -> Failure {
        Failure::Transient(anyhow!("{}: the transfer broke after {} bytes: {error}", self.url, self.received))
    }

    /// Complete, flushed and of the pinned sum, or why not.
    fn finish(mut self, sha256: &str) -> Result<(), Failure> {
        let (url, received) = (self.url, self.received);
        self.file
            .flush()
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", self.partial.display())))?;
        if let Some(length) = self.length
            && received != length
        {
            return Err(Failure::Transient(anyhow!(
                "{url}: the connection closed after {received} of {length} bytes"
            )));
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(Failure::Permanent(anyhow!("{url}: sha256 is {actual}, expected {sha256}")));
        }
        self.progress.finish(received);
        Ok(())
    }
}

/// A progress bar on a terminal, a line at the start and the end otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Progress {
    fn start(url: &str, length: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(length.unwrap_or(0));
            let style = indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template");
            bar.set_style(style);
            bar.set_message(format!("edgeinfer: fetching {url}"));
            bar
        });
        if bar.is_none() {
            let size = length.map_or("unknown size".to_string(), |l| format!("{l} bytes"));
            eprintln!(
                "edgeinfer: fetching {url} ({size}; first start only; cached in {})",
                cache_dir().display()
            );
        }
        Progress { bar, started: Instant::now() }
    }

    fn advance(&self, received: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(received);
        }
    }

    fn finish(&self, received: u64) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => eprintln!(
                "edgeinfer: fetched {received} bytes in {:.1} s",
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}
