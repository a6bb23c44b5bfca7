//! File digests, remembered across starts. A start verifies every model file and asset by its
//! sha256 (~300 MB for the default app: a third of its start-up on 2 cores); a file whose identity
//! (device, inode, size, modification and change times in ns) is what it was when it was hashed
//! is not read again. The host turns this on with a folder under its cache (`remember_under`);
//! without it every call hashes. A file changed within the last seconds is not remembered: a
//! rewrite within one tick of a coarse file-system clock would otherwise keep its identity.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// How long a file must have been left alone before its digest is remembered.
const SETTLED: Duration = Duration::from_secs(2);

static REMEMBERED_UNDER: OnceLock<PathBuf> = OnceLock::new();

/// Remembers digests in `dir` from now on (once per process; later calls are ignored).
pub fn remember_under(dir: PathBuf) {
    let _ = REMEMBERED_UNDER.set(dir);
}

/// The sha256 of the file at `path`, in lowercase hex: remembered when the host asked for it
/// (`remember_under`), else read.
pub fn sha256_file(path: &Path) -> Result<String> {
    match REMEMBERED_UNDER.get() {
        Some(dir) => sha256_remembered(path, dir, SETTLED),
        None => sha256_read(path),
    }
}

/// The sha256 of `path`, from `dir`'s record when the file is as it was then; else read and,
/// when the file has been left alone `settled` long, recorded.
fn sha256_remembered(path: &Path, dir: &Path, settled: Duration) -> Result<String> {
    let before = Identity::of(path)?;
    let record = dir.join(record_name(path));
    if let Ok(text) = std::fs::read_to_string(&record)
        && let Some((identity, sum)) = text.trim().rsplit_once(' ')
        && identity == before.line()
    {
        return Ok(sum.to_string());
    }
    let sum = sha256_read(path)?;
    // Only a file that did not change while it was read, and not lately.
    if before.settled_for(settled)
        && Identity::of(path)? == before
        && let Err(e) = write_record(dir, &record, &format!("{} {sum}\n", before.line()))
    {
        tracing::debug!("cannot remember the digest of {}: {e:#}", path.display());
    }
    Ok(sum)
}

/// The record of `path` in the folder: named by its absolute path's digest.
fn record_name(path: &Path) -> String {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    hex::encode(&Sha256::digest(absolute.as_os_str().as_encoded_bytes())[..16])
}

/// Writes a record beside its place, then renames it there (a reader never sees half of one).
fn write_record(dir: &Path, record: &Path, line: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let partial =
        dir.join(format!(".{}.{}", std::process::id(), record.file_name().unwrap().to_string_lossy()));
    std::fs::File::create(&partial)?.write_all(line.as_bytes())?;
    std::fs::rename(&partial, record)?;
    Ok(())
}

/// What identifies a file's contents without reading them.
#[derive(PartialEq, Debug)]
struct Identity {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl Identity {
    fn of(path: &Path) -> Result<Identity> {
        let m = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Identity {
            device: m.dev(),
            inode: m.ino(),
            size: m.size(),
            modified_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            changed_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }

    fn line(&self) -> String {
        format!("{} {} {} {} {}", self.device, self.inode, self.size, self.modified_ns, self.changed_ns)
    }

    fn settled_for(&self, settled: Duration) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        now - self.modified_ns.max(self.changed_ns) >= settled.as_nanos() as i128
    }
}

/// The sha256 of a file, read in 1 MiB pieces.
fn sha256_read(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn a_file_left_alone_is_not_read_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let (file, memo) = (dir.path().join("model.onnx"), dir.path().join("digests"));
        std::fs::write(&file, "hello").unwrap();
        assert_eq!(sha256_remembered(&file, &memo, Duration::ZERO).unwrap(), HELLO);
        // Remembered: a record whose sum is not the file's is believed while the file is as it was.
        let record = memo.join(record_name(&file));
        let text = std::fs::read_to_string(&record).unwrap();
        std::fs::write(&record, text.replace(HELLO, "remembered")).unwrap();
        assert_eq!(sha256_remembered(&file, &memo, Duration::ZERO).unwrap(), "remembered");
        // The same size, other contents, a later clock tick: read again.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&file, "world").unwrap();
        let world = sha256_remembered(&file, &memo, Duration::ZERO).unwrap();
        assert_eq!(world, "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7");
        assert_eq!(world, sha256_read(&file).unwrap());
    }

    #[test]
    fn a_file_changed_lately_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let (file, memo) = (dir.path().join("model.onnx"), dir.path().join("digests"));
        std::fs::write(&file, "hello").unwrap();
        assert_eq!(sha256_remembered(&file, &memo, Duration::from_secs(3600)).unwrap(), HELLO);
        assert!(!memo.join(record_name(&file)).exists());
    }
}
