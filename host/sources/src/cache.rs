//! The cache every fetched file lives in: `$EDGEINFER_CACHE_DIR`, else `<user cache dir>/edgeinfer`.
//! Files are kept by content (`blobs/<sha256>/<name>`) and only ever appear there verified: they are
//! written beside their place, checked, then renamed into it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Variable that overrides the cache directory.
pub const CACHE_DIR_VAR: &str = "EDGEINFER_CACHE_DIR";

/// Where fetched files live: `$EDGEINFER_CACHE_DIR`, else `<user cache dir>/edgeinfer`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_DIR_VAR)
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("edgeinfer")))
        .unwrap_or_else(|| PathBuf::from(".edgeinfer-cache"))
}

/// Fails with the file, the expected and the actual sum unless they match.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = edgeinfer_engine::sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        bail!("{} is corrupt: sha256 is {actual}, expected {expected}", path.display());
    }
    Ok(())
}

/// A fetched file in the cache, kept by content: `blobs/<sha256>/<name>`.
pub struct Blob {
    pub path: PathBuf,
    sha256: String,
}

impl Blob {
    pub fn new(sha256: &str, name: &str) -> Blob {
        let path = cache_dir().join("blobs").join(sha256.to_ascii_lowercase()).join(name);
        Blob { path, sha256: sha256.to_string() }
    }

    /// Its path, when the file is there with the right sum.
    pub fn verified(&self) -> Option<PathBuf> {
        (self.path.is_file() && verify_sha256(&self.path, &self.sha256).is_ok()).then(|| self.path.clone())
    }

    /// Takes `member` out of the zip `archive` into the cache, verified; nothing is left behind
    /// when that fails.
    pub fn extract_from(&self, archive: &Path, member: &str) -> Result<PathBuf> {
        eprintln!("edgeinfer: extracting {member} from {}", archive.display());
        let partial = self.partial()?;
        let extracted = extract_member(archive, member, &partial)
            .and_then(|()| verify_sha256(&partial, &self.sha256))
            .and_then(|()| Ok(std::fs::rename(&partial, &self.path)?));
        if let Err(e) = extracted {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        Ok(self.path.clone())
    }

    /// A temporary file beside it to fetch into (its directory created), renamed into place once
    /// verified. Unique per process: concurrent first starts must not write into each other's.
    pub fn partial(&self) -> Result<PathBuf> {
        let parent = self.path.parent().expect("a blob's path has a parent");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the cache directory {}", parent.display()))?;
        let name = self.path.file_name().expect("a blob's path has a file name").to_string_lossy();
        Ok(parent.join(format!(".{name}.{}.partial", std::process::id())))
    }
}

/// Writes `member` of the zip archive `archive` to `destination`.
pub fn extract_member(archive: &Path, member: &str, destination: &Path) -> Result<()> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", archive.display()))?;
    let mut entry = zip.by_name(member).with_context(|| format!("{} has no {member}", archive.display()))?;
    let mut out = File::create(destination)?;
    std::io::copy(&mut entry, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Puts the cached file at `target` without ever writing through it (see the registry's
/// `files::place`, which lays out pulled apps the same way).
pub use edgeinfer_registry::files::place;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_files_name_the_file_and_both_sums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256(&path, good).unwrap();
        let bad = "00".repeat(32);
        let err = format!("{:#}", verify_sha256(&path, &bad).unwrap_err());
        assert!(err.contains("f.bin") && err.contains(good) && err.contains(&bad), "{err}");
    }
}
