"""Moving a payload larger than one device call can carry: bundles packed here, carried in parts
over consecutive calls, checked and unpacked there.

The device tool copies the working tree plus at most 8 ignored paths, 64 MiB in all, into each
call, and keeps ignored files between calls while the machine stays warm. So `pack` turns each
bundle (a directory) into a tar.xz archive split into parts, and writes a plan: every part's size
and sha256, every archive's sha256, and which parts each call carries. On the device, `status`
says which parts have arrived intact, and `assemble` rebuilds each complete bundle, checks the
archive's sum and unpacks it beside the parts. A missing or damaged part is named (with the
expected and actual sums); nothing half-unpacked is ever left where a bundle belongs.

Standard library only: the device has Python but reaches no package index.
"""
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

PLAN = "plan.json"
PARTS = "parts"
FORMAT = 1
MiB = 1 << 20
# What one device call may carry, working tree included.
CALL_LIMIT = 64 * MiB
# Paths one call may carry (the plan is one of them).
CALL_PATHS = 8


class TransferError(Exception):
    """A part or archive that is missing, damaged or from another plan; the message says which."""


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_xz(source, archive):
    """`source`'s tree as a tar.xz at `archive`: modes kept, owners and times normalised so the
    same tree gives the same archive. The external `xz` (threaded) when present."""
    def normalise(info):
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with open(archive, "wb") as out:
        xz = shutil.which("xz")
        process = None
        if xz:
            process = subprocess.Popen([xz, "-6", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
            sink = process.stdin
        else:
            sink = lzma.open(out, "wb", preset=6)
        with tarfile.open(fileobj=sink, mode="w|") as tar:
            for path in sorted(Path(source).rglob("*")):
                tar.add(path, arcname=str(path.relative_to(source)), recursive=False, filter=normalise)
        sink.close()
        if process and process.wait() != 0:
            raise TransferError(f"xz failed compressing {source}")


def tree_bytes(source):
    return sum(p.stat().st_size for p in Path(source).rglob("*") if p.is_file() and not p.is_symlink())


def pack(bundles, work, part_bytes, tree_size=0, carried_as=None):
    """Packs `bundles` ([(name, directory)], in the order they should travel) into `work`:
    `work/parts/NAME-NNN` and `work/plan.json`. `tree_size`: bytes of the working tree each call
    also carries; `carried_as`: `work` relative to the repository (what the calls name).
    Returns the plan."""
    work = Path(work)
    if part_bytes <= 0:
        raise TransferError(f"parts of {part_bytes} bytes: the part size must be positive")
    budget = CALL_LIMIT - tree_size - 64 * 1024  # the plan itself, with room to spare
    if part_bytes > budget:
        raise TransferError(
            f"parts of {part_bytes} bytes do not fit one call: {CALL_LIMIT} bytes less the working "
            f"tree's {tree_size} leaves {budget}"
        )
    parts_dir = work / PARTS
    parts_dir.mkdir(parents=True, exist_ok=True)
    plan_bundles, keep = [], set()
    for name, source in bundles:
        if not name.replace("-", "").isalnum():
            raise TransferError(f"bundle name {name!r}: letters, digits and '-' only")
        links = [str(p) for p in Path(source).rglob("*") if p.is_symlink()]
        if links:
            raise TransferError(f"bundle {name}: symbolic links are not carried ({', '.join(links[:3])})")
        archive = work / f"{name}.tar.xz"
        _tar_xz(source, archive)
        parts = []
        with open(archive, "rb") as f:
            for index in range(10**6):
                chunk = f.read(part_bytes)
                if not chunk:
                    break
                part = f"{name}-{index:03d}"
                (parts_dir / part).write_bytes(chunk)
                keep.add(part)
                parts.append({"name": part, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
        plan_bundles.append({
            "name": name,
            "archive_bytes": archive.stat().st_size,
            "archive_sha256": sha256_file(archive),
            "unpacked_bytes": tree_bytes(source),
            "parts": parts,
        })
        archive.unlink()
    for stale in parts_dir.iterdir():
        if stale.name not in keep:
            stale.unlink()
    identity = hashlib.sha256("".join(b["archive_sha256"] for b in plan_bundles).encode()).hexdigest()[:16]
    plan = {"format": FORMAT, "id": identity, "part_bytes": part_bytes, "bundles": plan_bundles}
    plan["calls"] = _calls(plan, Path(carried_as or work), budget)
    (work / PLAN).write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def _calls(plan, work, budget):
    """Parts grouped into calls in plan order: as many as fit `budget` and the path limit."""
    relative = lambda name: f"{work.as_posix()}/{PARTS}/{name}"
    calls, current, size = [], [], 0
    for bundle in plan["bundles"]:
        for part in bundle["parts"]:
            if current and (size + part["bytes"] > budget or len(current) + 1 >= CALL_PATHS):
                calls.append(current)
                current, size = [], 0
            current.append(relative(part["name"]))
            size += part["bytes"]
    if current:
        calls.append(current)
    return [{"carry": [f"{work.as_posix()}/{PLAN}"] + carry} for carry in calls]


def load_plan(work):
    path = Path(work) / PLAN
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise TransferError(f"no plan at {path}: carry it with the parts") from None
    except ValueError as e:
        raise TransferError(f"{path} is not a plan: {e}") from None
    if plan.get("format") != FORMAT:
        raise TransferError(f"{path}: plan format {plan.get('format')!r}, this script reads {FORMAT}")
    return plan


def _check_part(work, part):
    """None when the part is here and intact, else why not."""
    path = Path(work) / PARTS / part["name"]
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size != part["bytes"]:
        return f"{size} bytes, expected {part['bytes']}"
    actual = sha256_file(path)
    if actual != part["sha256"]:
        return f"sha256 {actual}, expected {part['sha256']}"
    return None


def status(work):
    """Which parts of the plan are here intact, missing or damaged, per bundle."""
    plan = load_plan(work)
    bundles = []
    for bundle in plan["bundles"]:
        problems = {p["name"]: _check_part(work, p) for p in bundle["parts"]}
        bundles.append({
            "name": bundle["name"],
            "parts": len(bundle["parts"]),
            "arrived": sum(1 for v in problems.values() if v is None),
            "missing": [n for n, v in problems.items() if v == "missing"],
            "damaged": {n: v for n, v in problems.items() if v not in (None, "missing")},
            "assembled": _assembled(work, bundle),
        })
    return {"plan": plan["id"], "bundles": bundles}


def bundle_dir(work, name):
    return Path(work) / "payload" / name


def _assembled(work, bundle):
    marker = bundle_dir(work, bundle["name"]) / ".archive-sha256"
    return marker.exists() and marker.read_text().strip() == bundle["archive_sha256"]


def _safe_members(tar, dest):
    for member in tar:
        target = (dest / member.name).resolve()
        if member.issym() or member.islnk() or member.isdev() or not target.is_relative_to(dest.resolve()):
            raise TransferError(f"archive member {member.name!r} is not a plain file or directory inside the bundle")
        member.mode &= 0o755
        yield member


def assemble(work, names=None):
    """Rebuilds, checks and unpacks each bundle of the plan (or those in `names`) into
    `work/payload/NAME`. Every bundle that can be is assembled; then TransferError names every
    missing or damaged part of those that cannot. A bundle already unpacked from the same archive
    is kept as it is."""
    work = Path(work)
    plan = load_plan(work)
    known = {b["name"] for b in plan["bundles"]}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise TransferError(f"no bundle {', '.join(unknown)} in plan {plan['id']} (it has {', '.join(sorted(known))})")
    done, failures = [], []
    for bundle in plan["bundles"]:
        if names and bundle["name"] not in names:
            continue
        if _assembled(work, bundle):
            done.append(bundle["name"])
            continue
        problems = {p["name"]: _check_part(work, p) for p in bundle["parts"]}
        problems = {n: v for n, v in problems.items() if v}
        if problems:
            listed = "; ".join(f"{n}: {v}" for n, v in problems.items())
            failures.append(f"bundle {bundle['name']} of plan {plan['id']} cannot be assembled: {listed}")
            continue
        digest = hashlib.sha256()
        spool = work / f".{bundle['name']}.tar.xz.partial"
        with open(spool, "wb") as out:
            for part in bundle["parts"]:
                data = (work / PARTS / part["name"]).read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != bundle["archive_sha256"]:
            spool.unlink()
            failures.append(
                f"bundle {bundle['name']}: archive sha256 {digest.hexdigest()}, expected {bundle['archive_sha256']}"
            )
            continue
        final = bundle_dir(work, bundle["name"])
        staging = final.with_name(f".{bundle['name']}.unpacking-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with lzma.open(spool) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
                # Members are checked here; `filter` (Python 3.12+) only silences its warning.
                extra = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
                tar.extractall(staging, members=_safe_members(tar, staging), **extra)
            (staging / ".archive-sha256").write_text(bundle["archive_sha256"] + "\n")
        except (TransferError, lzma.LZMAError, EOFError, tarfile.TarError, OSError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            failures.append(f"bundle {bundle['name']}: cannot unpack its archive: {e}")
            continue
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            spool.unlink()
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        done.append(bundle["name"])
    if failures:
        assembled = f" (assembled: {', '.join(done)})" if done else ""
        raise TransferError("\n".join(failures) + assembled)
    return done
