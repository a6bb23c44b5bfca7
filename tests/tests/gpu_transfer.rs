//! `bench/gpu`'s transfer to a device machine that reaches no network: a payload packed into
//! parts (`bench/gpu/pack --bundle`), carried a call at a time into a fresh device tree the way
//! the device tool carries paths, checked (`device.py status`) and unpacked (`device.py
//! assemble`) there. Missing, damaged and oversized parts are named, and nothing half-unpacked is
//! left where a bundle belongs. (The GPU measurement itself needs a GPU: see BENCHMARKS.md.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::repo_root;
use serde_json::Value;

/// Incompressible bytes (xorshift), so that parts are as large as the payload.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Two bundles: `core` (an executable, data, a nested text file) and `cuda` (one large library).
fn payload(dir: &Path) -> (PathBuf, PathBuf) {
    let core = dir.join("core");
    write(&core.join("bin/tool"), &noise(1_300_000, 1));
    std::fs::set_permissions(core.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&core.join("data/weights.bin"), &noise(900_000, 2));
    write(&core.join("app/config/run.toml"), b"device = \"cuda:0\"\n");
    let cuda = dir.join("cuda");
    write(&cuda.join("libprovider.so"), &noise(2_600_000, 3));
    (core, cuda)
}

fn python(args: &[&str], cwd: &Path) -> Output {
    Command::new("python3").args(args).current_dir(cwd).output().expect("run python3")
}

fn pack(out: &str, core: &Path, cuda: &Path, part_mib: &str) -> Output {
    let core = format!("core={}", core.display());
    let cuda = format!("cuda={}", cuda.display());
    python(
        &["bench/gpu/pack", "--out", out, "--part-mib", part_mib, "--bundle", &core, "--bundle", &cuda],
        &repo_root(),
    )
}

/// A device machine's tree: the working tree's scripts, then whatever the calls carry.
struct Device {
    root: PathBuf,
    work: String,
}

impl Device {
    fn new(dir: &Path, work: &str) -> Device {
        let root = dir.join("device");
        for script in ["bench/gpu/device.py", "bench/gpu/transfer.py"] {
            write(&root.join(script), &std::fs::read(repo_root().join(script)).unwrap());
        }
        Device { root, work: work.to_string() }
    }

    /// What one call does to the tree: the carried paths replace those there.
    fn carry(&self, paths: &[Value]) {
        for path in paths {
            let path = path.as_str().unwrap();
            write(&self.root.join(path), &std::fs::read(repo_root().join(path)).unwrap());
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["bench/gpu/device.py", "--work", &self.work];
        all.extend_from_slice(args);
        python(&all, &self.root)
    }

    fn status(&self) -> Value {
        let output = self.run(&["status"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn bundle(&self, name: &str) -> PathBuf {
        self.root.join(&self.work).join("payload").join(name)
    }

    /// Nothing of an interrupted or refused assembly stays behind.
    fn assert_no_leftovers(&self) {
        let payload = self.root.join(&self.work).join("payload");
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(&self.work))
            .unwrap()
            .chain(std::fs::read_dir(&payload).into_iter().flatten())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.retain(|n| n.contains("partial") || n.contains("unpacking"));
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn same_tree(expected: &Path, actual: &Path) {
    for entry in walk(expected) {
        let relative = entry.strip_prefix(expected).unwrap();
        let copy = actual.join(relative);
        assert_eq!(std::fs::read(&entry).unwrap(), std::fs::read(&copy).unwrap(), "{}", relative.display());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o111;
        assert_eq!(mode(&entry), mode(&copy), "executable bits of {}", relative.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

fn scratch(tag: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("edgeinfer-gpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir, format!("target/gpu-test-{tag}-{}", std::process::id()))
}

#[test]
fn parts_carried_call_by_call_rebuild_the_payload_exactly() {
    let (dir, out) = scratch("carry");
    let (core, cuda) = payload(&dir);
    let packed = pack(&out, &core, &cuda, "0.5");
    assert!(packed.status.success(), "{}", stderr(&packed));
    let plan: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join(&out).join("plan.json")).unwrap()).unwrap();

    // Parts of at most 0.5 MiB; every call carries the plan first and at most 8 paths.
    let parts: Vec<&Value> =
        plan["bundles"].as_array().unwrap().iter().flat_map(|b| b["parts"].as_array().unwrap()).collect();
    assert!(parts.len() >= 9, "{plan}");
    assert!(parts.iter().all(|p| p["bytes"].as_u64().unwrap() <= 512 * 1024));
    let calls = plan["calls"].as_array().unwrap();
    assert!(calls.len() >= 2);
    for call in calls {
        let carry = call["carry"].as_array().unwrap();
        assert_eq!(carry[0], format!("{out}/plan.json"));
        assert!(carry.len() <= 8);
    }
    let mut carried: Vec<String> = calls
        .iter()
        .flat_map(|c| c["carry"].as_array().unwrap()[1..].iter())
        .map(|p| p.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    carried.sort();
    let mut names: Vec<String> = parts.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(carried, names, "every part travels exactly once");

    let device = Device::new(&dir, &out);
    device.carry(calls[0]["carry"].as_array().unwrap());
    let status = device.status();
    assert!(status["bundles"][0]["arrived"].as_u64().unwrap() >= 1, "{status}");

    // Before the last call: the bundle still missing parts is refused, naming them.
    let early = device.run(&["assemble"]);
    assert!(!early.status.success());
    let message = stderr(&early);
    let last_part = parts.last().unwrap()["name"].as_str().unwrap();
    assert!(message.contains(&format!("{last_part}: missing")), "the cuda bundle's last part: {message}");
    assert!(!device.bundle("cuda").exists());
    device.assert_no_leftovers();

    for call in &calls[1..] {
        device.carry(call["carry"].as_array().unwrap());
    }
    let status = device.status();
    for bundle in status["bundles"].as_array().unwrap() {
        assert_eq!(bundle["arrived"], bundle["parts"], "{status}");
        assert_eq!(bundle["damaged"], serde_json::json!({}), "{status}");
    }
    let assembled = device.run(&["assemble"]);
    assert!(assembled.status.success(), "{}", stderr(&assembled));
    let answer: Value = serde_json::from_slice(&assembled.stdout).unwrap();
    assert_eq!(answer["assembled"], serde_json::json!(["core", "cuda"]));
    same_tree(&core, &device.bundle("core"));
    same_tree(&cuda, &device.bundle("cuda"));
    device.assert_no_leftovers();

    // Again: kept as it is (the archive's sum is recorded with the bundle).
    let again = device.run(&["assemble"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(device.status()["bundles"].as_array().unwrap().iter().all(|b| b["assembled"] == true));

    let _ = std::fs::remove_dir_all(repo_root().join(&out));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_damaged_or_missing_part_is_named_and_nothing_is_unpacked() {
    let (dir, out) = scratch("damage");
    let (core, cuda) = payload(&dir);
    let packed = pack(&out, &core, &cuda, "1");
    assert!(packed.status.success(), "{}", stderr(&packed));
    let plan: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join(&out).join("plan.json")).unwrap()).unwrap();
    let device = Device::new(&dir, &out);
    for call in plan["calls"].as_array().unwrap() {
        device.carry(call["carry"].as_array().unwrap());
    }

    // One byte flipped in transit: status and assemble name the part and both sums.
    let cuda_part = &plan["bundles"][1]["parts"][1];
    let name = cuda_part["name"].as_str().unwrap();
    let path = device.root.join(&out).join("parts").join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let status = device.status();
    let damaged = &status["bundles"][1]["damaged"][name];
    assert!(damaged.as_str().unwrap().contains(cuda_part["sha256"].as_str().unwrap()), "{status}");
    let refused = device.run(&["assemble", "cuda"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains(name)
            && message.contains("sha256")
            && message.contains(cuda_part["sha256"].as_str().unwrap()),
        "{message}"
    );
    assert!(!device.bundle("cuda").exists(), "nothing unpacked from a damaged archive");
    device.assert_no_leftovers();

    // The intact bundle still assembles on its own; a missing part is named as missing.
    let core_only = device.run(&["assemble", "core"]);
    assert!(core_only.status.success(), "{}", stderr(&core_only));
    same_tree(&core, &device.bundle("core"));
    std::fs::remove_file(&path).unwrap();
    let missing = device.run(&["assemble"]);
    assert!(stderr(&missing).contains(&format!("{name}: missing")), "{}", stderr(&missing));

    // An unknown bundle and a plan that never arrived are clear errors too.
    let unknown = device.run(&["assemble", "mpnet"]);
    assert!(stderr(&unknown).contains("no bundle mpnet"), "{}", stderr(&unknown));
    std::fs::remove_file(device.root.join(&out).join("plan.json")).unwrap();
    let no_plan = device.run(&["status"]);
    assert!(!no_plan.status.success() && stderr(&no_plan).contains("no plan at"), "{}", stderr(&no_plan));

    // Parts that cannot fit one call (64 MiB with the working tree), parts of no size and
    // symbolic links (refused on the device) are refused when packing.
    let too_big = pack(&format!("{out}-big"), &core, &cuda, "64");
    assert!(!too_big.status.success());
    assert!(stderr(&too_big).contains("do not fit one call"), "{}", stderr(&too_big));
    let empty = pack(&format!("{out}-empty"), &core, &cuda, "0");
    assert!(stderr(&empty).contains("must be positive"), "{}", stderr(&empty));
    std::os::unix::fs::symlink("bin/tool", core.join("tool-link")).unwrap();
    let linked = pack(&format!("{out}-link"), &core, &cuda, "1");
    assert!(stderr(&linked).contains("symbolic links are not carried"), "{}", stderr(&linked));

    let _ = std::fs::remove_dir_all(repo_root().join(&out));
    let _ = std::fs::remove_dir_all(dir);
}
