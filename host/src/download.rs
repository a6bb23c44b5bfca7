//! Files from URLs (`[[asset]] url = ...`): `https://`, `http://`, `s3://bucket/key` (endpoint,
//! region and credentials from the standard `AWS_*` environment variables, else the AWS shared
//! config and credentials files, path-style requests, through `object_store`), or `oci://host/repository:tag` (the layer of the pinned digest, with
//! the registry settings of `set_registry`). Streamed into a temporary file in the cache and hashed on the way,
//! verified against the pinned sha256, then renamed into place, so a failed, partial or wrong
//! download never leaves a file that looks valid. Refused or cut connections and 5xx/408/429
//! answers are retried with backoff (a cut HTTP transfer resumes with a Range request where it
//! stopped); a 4xx (a missing key, missing credentials) or a wrong sum is not.

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

/// How `oci://` sources reach their registry (the command line's registry flags).
static REGISTRY: std::sync::OnceLock<edgeinfer_registry::Connection> = std::sync::OnceLock::new();

/// Sets the registry settings `oci://` sources use (once, at start).
pub fn set_registry(connection: edgeinfer_registry::Connection) {
    let _ = REGISTRY.set(connection);
}

/// The cached, verified copy of the file at `url`, downloaded on first use.
pub fn fetch_url(url: &str, sha256: &str) -> Result<PathBuf> {
    // It names a cache path: 64 hex digits and nothing else.
    edgeinfer_config::runtime_config::check_sha256(sha256)?;
    // On a thread of its own: reqwest's blocking client and the OCI client's runtime must not be
    // created or dropped inside the caller's runtime (`edgeinfer up` provisions from the async
    // runtime's blocking pool).
    std::thread::scope(|scope| {
        scope
            .spawn(|| match url.strip_prefix("oci://") {
                Some(reference) => {
                    fetch_oci(reference, sha256).with_context(|| format!("{url}: the layer sha256:{sha256}"))
                }
                None => fetch_url_here(url, sha256),
            })
            .join()
    })
    .unwrap_or_else(|_| Err(anyhow!("{url}: the download thread panicked")))
}

/// The layer `sha256:<sha256>` of an OCI artifact, verified by the registry client as it streams
/// into the OCI cache (the same content-addressed store `registry pull` uses).
fn fetch_oci(reference: &str, sha256: &str) -> Result<PathBuf> {
    let connection = REGISTRY.get().cloned().unwrap_or_default();
    let digest = format!("sha256:{}", sha256.to_ascii_lowercase());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(edgeinfer_registry::fetch_layer(reference, &digest, &connection, &cache_dir()))
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
    // Where a cut HTTP transfer stopped: the next try asks for the rest (a Range request).
    let mut resume: Option<Resume> = None;
    for attempt in 1..=ATTEMPTS {
        let result = if url.starts_with("s3://") {
            attempt_s3(url, &partial, sha256)
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
        // What the environment leaves unset comes from the AWS shared files, as the AWS CLI has it.
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
        for (key, value) in aws_profile_settings() {
            builder = match key {
                "aws_access_key_id" => builder.with_access_key_id(value),
                "aws_secret_access_key" => builder.with_secret_access_key(value),
                "aws_session_token" => builder.with_token(value),
                "region" => builder.with_region(value),
                "endpoint_url" => {
                    endpoint = Some(value.clone());
                    builder.with_endpoint(value)
                }
                _ => builder,
            };
        }
        // An endpoint the user gave as http:// (an S3-compatible server on a private network).
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
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

/// The settings of the AWS profile (`$AWS_PROFILE`, else `default`) from the shared credentials
/// file (`$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and config file
/// (`$AWS_CONFIG_FILE`, else `~/.aws/config`: `[default]` or `[profile NAME]`), for each key whose
/// environment variable is unset (the environment wins, as with the AWS CLI).
fn aws_profile_settings() -> Vec<(&'static str, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let profile =
        var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE")).unwrap_or_else(|| "default".into());
    let home = var("HOME").map(PathBuf::from).unwrap_or_default();
    let read = |variable: &str, default: &str| {
        let path = var(variable).map(PathBuf::from).unwrap_or_else(|| home.join(default));
        std::fs::read_to_string(path).unwrap_or_default()
    };
    let credentials = ini_section(&read("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"), &profile);
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let config = ini_section(&read("AWS_CONFIG_FILE", ".aws/config"), &config_section);
    let keys: [(&'static str, &[&str]); 5] = [
        ("aws_access_key_id", &["AWS_ACCESS_KEY_ID"]),
        ("aws_secret_access_key", &["AWS_SECRET_ACCESS_KEY"]),
        ("aws_session_token", &["AWS_SESSION_TOKEN"]),
        ("region", &["AWS_REGION", "AWS_DEFAULT_REGION"]),
        ("endpoint_url", &["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
    ];
    keys.into_iter()
        .filter(|(_, variables)| variables.iter().all(|v| var(v).is_none()))
        .filter_map(|(key, _)| {
            let value = credentials.get(key).or_else(|| config.get(key))?;
            Some((key, value.clone()))
        })
        .collect()
}

/// The top-level `key = value` pairs of `[section]` in an INI file (the AWS files' format;
/// indented lines belong to a nested service block and are skipped).
fn ini_section(text: &str, section: &str) -> std::collections::HashMap<String, String> {
    let mut current = None::<&str>;
    let mut pairs = std::collections::HashMap::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            current = Some(name.trim());
        } else if current == Some(section)
            && !line.starts_with([' ', '\t'])
            && let Some((key, value)) = trimmed.split_once('=')
        {
            pairs.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    pairs
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
    /// The version of the file being written (ETag or Last-Modified), for a resumed try.
    validator: Option<String>,
}

impl<'a> Sink<'a> {
    fn create(url: &'a str, partial: &'a Path, length: Option<u64>) -> Result<Sink<'a>, Failure> {
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

#[cfg(test)]
mod tests {
    use super::ini_section;

    #[test]
    fn aws_files_are_read_by_section_and_top_level_key() {
        let config = "[default]\nregion = eu-west-1\n\n[profile edge]\nregion = us-east-1\nendpoint_url = http://10.0.0.5:9000\ns3 =\n  addressing_style = path\n# a comment\n";
        let edge = ini_section(config, "profile edge");
        assert_eq!(edge.get("region").map(String::as_str), Some("us-east-1"));
        assert_eq!(edge.get("endpoint_url").map(String::as_str), Some("http://10.0.0.5:9000"));
        assert!(!edge.contains_key("addressing_style"), "nested service settings are not top-level keys");
        assert_eq!(ini_section(config, "default").get("region").map(String::as_str), Some("eu-west-1"));
        assert!(ini_section(config, "profile other").is_empty());
    }
}
