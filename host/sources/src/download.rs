//! Files from URLs (`[[asset]] url = ...`): `https://`, `http://`, `s3://bucket/key` (`s3`), or
//! `oci://host/repository:tag` (the layer of the pinned digest, through the `Sources`' registry
//! settings). Streamed into a temporary file in the cache and hashed on the way, verified against
//! the pinned sha256, then renamed into place, so a failed, partial or wrong download never leaves
//! a file that looks valid. Refused or cut connections and 5xx/408/429 answers are retried with
//! backoff (a cut HTTP transfer resumes with a Range request where it stopped); a 4xx (a missing
//! key, missing credentials) or a wrong sum is not.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};

use crate::Sources;
use crate::cache::{Blob, cache_dir};

/// Tries per download (the first and three retries, after 0.5, 1 and 2 s).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Why one attempt failed.
pub(crate) enum Failure {
    /// Worth another try (connection refused or cut, 5xx).
    Transient(anyhow::Error),
    /// Another try would fail the same way (404, wrong sum, a cache that cannot be written).
    Permanent(anyhow::Error),
}

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

/// Bytes of a cut transfer already in the partial file, their hash so far, and the version of
/// the file they are of (its ETag or Last-Modified, sent back as If-Range).
struct Resume {
    received: u64,
    hasher: Sha256,
    validator: Option<String>,
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
    if sink.length.is_some_and(|length| sink.received < length) {
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

/// A download being written: the partial file, its hash and its progress.
pub(crate) struct Sink<'a> {
    url: &'a str,
    partial: &'a Path,
    file: File,
    hasher: Sha256,
    received: u64,
    length: Option<u64>,
    progress: Progress,
    /// The version of the file being written (ETag or Last-Modified), for a resumed try.
    validator: Option<String>,
}

impl<'a> Sink<'a> {
    pub(crate) fn create(url: &'a str, partial: &'a Path, length: Option<u64>) -> Result<Sink<'a>, Failure> {
        let file = File::create(partial)
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
        let progress = Progress::start(url, length);
        Ok(Sink { url, partial, file, hasher: Sha256::new(), received: 0, length, progress, validator: None })
    }

    /// Goes on writing a cut transfer's partial file where it stopped.
    fn resume(
        url: &'a str,
        partial: &'a Path,
        length: Option<u64>,
        from: Resume,
    ) -> Result<Sink<'a>, Failure> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(partial)
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
        eprintln!("edgeinfer: {url}: resuming after {} bytes", from.received);
        let progress = Progress::start(url, length);
        progress.advance(from.received);
        let validator = from.validator;
        Ok(Sink {
            url,
            partial,
            file,
            hasher: from.hasher,
            received: from.received,
            length,
            progress,
            validator,
        })
    }

    /// Where a next try can go on from (what is written so far), if anything was.
    fn resume_point(&mut self) -> Option<Resume> {
        (self.received > 0 && self.file.flush().is_ok()).then(|| Resume {
            received: self.received,
            hasher: self.hasher.clone(),
            validator: self.validator.clone(),
        })
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.file
            .write_all(bytes)
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", self.partial.display())))?;
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        self.progress.advance(self.received);
        Ok(())
    }

    /// The transfer broke: worth another try.
    pub(crate) fn broken(&self, error: impl std::fmt::Display) -> Failure {
        Failure::Transient(anyhow!("{}: the transfer broke after {} bytes: {error}", self.url, self.received))
    }

    /// Complete, flushed and of the pinned sum, or why not.
    pub(crate) fn finish(mut self, sha256: &str) -> Result<(), Failure> {
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
