//! Files laid out from a cache: linked (or copied) under a temporary name and renamed into
//! place, so that nothing ever writes through a path that may be a hard link to the cache itself.

use std::path::Path;

use anyhow::{Context, Result};

/// Puts the cached file at `target`: a hard link when possible (no copy), else a copy. The link
/// (or copy) is made under a name of this process's and renamed over `target`, so nothing ever
/// writes through `target`: it may be a hard link to the cached file itself (placed before, or by
/// a concurrent start or pull), and a copy onto it would truncate the cache.
pub fn place(cached: &Path, target: &Path) -> Result<()> {
    let parent = target.parent().context("a file has a parent")?;
    std::fs::create_dir_all(parent)?;
    let name = target.file_name().context("a file has a name")?.to_string_lossy();
    static PLACING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = PLACING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = parent.join(format!(".{name}.{}-{unique}.placing", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(cached, &temporary).is_err() {
        std::fs::copy(cached, &temporary)
            .with_context(|| format!("cannot copy {} to {}", cached.display(), temporary.display()))?;
    }
    let placed =
        std::fs::rename(&temporary, target).with_context(|| format!("cannot place {}", target.display()));
    // Renaming a link over another link to the same file does nothing: the temporary name stays.
    let _ = std::fs::remove_file(&temporary);
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_files_are_linked_or_copied_over_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let cached = dir.path().join("cached.bin");
        std::fs::write(&cached, b"model").unwrap();
        let target = dir.path().join("app/models/model.onnx");
        place(&cached, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"model");
        // A stale file in the way is replaced, not appended to or kept.
        std::fs::remove_file(&target).unwrap();
        std::fs::write(&target, b"stale and longer").unwrap();
        place(&cached, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"model");
    }

    #[test]
    fn placing_over_a_link_to_the_cache_or_concurrently_leaves_the_cache_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cached = dir.path().join("cached.bin");
        std::fs::write(&cached, b"tokenizer").unwrap();
        let target = dir.path().join("builtin/tokenizer.json");
        // Hosts starting at once place the same file: none may write through another's link.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| place(&cached, &target).unwrap());
            }
        });
        place(&cached, &target).unwrap();
        assert_eq!(std::fs::read(&cached).unwrap(), b"tokenizer");
        assert_eq!(std::fs::read(&target).unwrap(), b"tokenizer");
        let left: Vec<_> = std::fs::read_dir(target.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }
}
