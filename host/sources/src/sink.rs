//! A transfer on its way into the cache, whatever speaks to the server (HTTPS, S3): the partial
//! file written and hashed as bytes arrive, its progress shown, and how an attempt failed.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::anyhow;
use sha2::{Digest, Sha256};

use crate::cache::cache_dir;

/// Why one attempt failed.
pub(crate) enum Failure {
    /// Worth another try (connection refused or cut, 5xx).
    Transient(anyhow::Error),
    /// Another try would fail the same way (404, wrong sum, a cache that cannot be written).
    Permanent(anyhow::Error),
}

/// Bytes of a cut transfer already in the partial file, their hash so far, and the version of
/// the file they are of (its ETag or Last-Modified, sent back as If-Range).
pub(crate) struct Resume {
    pub(crate) received: u64,
    hasher: Sha256,
    pub(crate) validator: Option<String>,
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
    pub(crate) validator: Option<String>,
}

impl<'a> Sink<'a> {
    pub(crate) fn create(url: &'a str, partial: &'a Path, length: Option<u64>) -> Result<Sink<'a>, Failure> {
        let file = File::create(partial)
            .map_err(|e| Failure::Permanent(anyhow!("cannot write {}: {e}", partial.display())))?;
        let progress = Progress::start(url, length);
        Ok(Sink { url, partial, file, hasher: Sha256::new(), received: 0, length, progress, validator: None })
    }

    /// Goes on writing a cut transfer's partial file where it stopped.
    pub(crate) fn resume(
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
    /// Whether fewer bytes came than the server announced (a cut the server did not report).
    pub(crate) fn is_short(&self) -> bool {
        self.length.is_some_and(|length| self.received < length)
    }

    pub(crate) fn resume_point(&mut self) -> Option<Resume> {
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
