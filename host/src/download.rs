//! Files from HTTP(S) URLs (`[[asset]] url = ...`): streamed into a temporary file in the cache and
//! hashed on the way, verified against the pinned sha256, then renamed into place, so a failed,
//! partial or wrong download never leaves a file that looks valid. Connection failures, cut
//! transfers and 5xx/408/429 answers are retried with backoff; a 4xx or a wrong sum is not.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};

use crate::provision::{cache_dir, verify_sha256};

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
    let cached = cache_dir().join("blobs").join(sha256.to_ascii_lowercase()).join(name);
    if cached.is_file() && verify_sha256(&cached, sha256).is_ok() {
        return Ok(cached);
    }
    let parent = cached.parent().expect("cached path has a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create the cache directory {}", parent.display()))?;
    // Unique per process: concurrent first starts must not write into each other's file.
    let partial = parent.join(format!(".{name}.{}.partial", std::process::id()));
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None)
        .build()
        .context("cannot build an HTTP client")?;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let result = attempt_download(&client, url, &partial, sha256);
        if !matches!(result, Ok(())) {
            let _ = std::fs::remove_file(&partial);
        }
        match result {
            Ok(()) => {
                std::fs::rename(&partial, &cached)
                    .with_context(|| format!("cannot move the download into {}", cached.display()))?;
                return Ok(cached);
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
    let length = response.content_length();
    let mut file = File::create(partial)
        .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
    let progress = Progress::start(url, length);
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(Failure::Transient(anyhow!(
                    "{url}: the transfer broke after {received} bytes: {e}"
                )));
            }
        };
        file.write_all(&buffer[..read])
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
        hasher.update(&buffer[..read]);
        received += read as u64;
        progress.advance(received);
    }
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
    if let Some(length) = length
        && received != length
    {
        return Err(Failure::Transient(anyhow!(
            "{url}: the connection closed after {received} of {length} bytes"
        )));
    }
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(Failure::Permanent(anyhow!("{url}: sha256 is {actual}, expected {sha256}")));
    }
    progress.finish(received);
    Ok(())
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
