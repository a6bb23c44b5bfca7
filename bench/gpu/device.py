#!/usr/bin/env python3
"""The GPU rows of BENCHMARKS.md, run on the device machine from what `bench/gpu/pack` sent.

    python3 bench/gpu/device.py status [--probe]    # which parts arrived intact (every call)
    python3 bench/gpu/device.py assemble            # rebuild, check and unpack complete bundles
    python3 bench/gpu/device.py measure --out DIR   # the GPU rows, as JSON and Markdown in DIR

`measure` runs, on one GPU and within one device call (~4 min):
  * the raw ONNX Runtime ceiling on CUDA (pre-tokenized batches, in-process, best batch size);
  * CUDA parity: the same sentences embedded by edgeinfer on the CUDA provider and on the CPU
    provider of the same onnxruntime-gpu library (cosine, largest difference);
  * closed-loop load at several concurrencies against edgeinfer (CUDA), the native Rust pipeline
    (CUDA, no Wasm) and the seeds' stack (FastAPI + onnxruntime-gpu, CUDA provider);
and writes gpu-results.json and gpu.md. `--device cpu` runs the same steps on the CPU (a dry run
of the script where there is no GPU). Each step that fails is reported and the others go on.
Standard library only: the device reaches no package index.
"""
import argparse
import glob
import json
import math
import os
import platform
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transfer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORK = Path("target/gpu")
SENTENCE = "The delivery was late again, and nobody from customer service answered my three emails about the refund last week."
PARITY_SENTENCES = [
    SENTENCE,
    "A short one.",
    "GPUs run the same graph with different kernels, so the numbers differ in the last bits.",
    "Wie spät ist es in Berlin?",
    "set a timer for ten minutes",
    "The quick brown fox jumps over the lazy dog " * 8,
]
# CUDA 13 libraries ONNX Runtime's CUDA provider loads (DESIGN.md), by their sonames.
CUDA_LIBRARIES = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudnn.so.9"]


def log(message):
    print(f"[gpu] {message}", file=sys.stderr, flush=True)


def cuda_library_dirs():
    """Directories holding the CUDA libraries: pip's nvidia-* packages (PyTorch's), torch/lib,
    the CUDA toolkit, the system's."""
    roots = site.getsitepackages() + [site.getusersitepackages()]
    candidates = []
    for root in roots:
        candidates += glob.glob(os.path.join(root, "nvidia", "*", "lib"))
        candidates += glob.glob(os.path.join(root, "nvidia", "cu13", "lib"))
        candidates.append(os.path.join(root, "torch", "lib"))
    candidates += glob.glob("/usr/local/cuda*/lib64") + ["/usr/lib/x86_64-linux-gnu", "/usr/lib64"]
    found, dirs = {}, []
    for directory in candidates:
        hits = [name for name in CUDA_LIBRARIES if os.path.exists(os.path.join(directory, name))]
        for name in hits:
            found.setdefault(name, directory)
        if hits and directory not in dirs:
            dirs.append(directory)
    return dirs, found


def probe():
    """What the machine has, for the first call's report."""
    facts = {"python": platform.python_version(), "machine": platform.machine()}
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        facts["gpus"] = out.stdout.strip().splitlines() or out.stderr.strip()
    else:
        facts["gpus"] = "nvidia-smi not found"
    dirs, found = cuda_library_dirs()
    facts["cuda_library_dirs"] = dirs
    facts["cuda_libraries_missing"] = [n for n in CUDA_LIBRARIES if n not in found]
    facts["cpus"] = os.cpu_count()
    facts["free_disk_gib"] = round(shutil.disk_usage(".").free / 2**30, 1)
    return facts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=60):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until_serving(url, process, body, timeout=180):
    """Seconds until `url` answers 200; a server that says its model is unavailable (edgeinfer's
    503 ModelUnavailable: the CUDA provider did not register, say) fails at once."""
    started = time.time()
    while time.time() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before serving")
        try:
            post(url, body, timeout=10)
            return time.time() - started
        except urllib.error.HTTPError as e:
            answer = e.read().decode(errors="replace")
            if e.code == 503 and "ModelUnavailable" in answer:
                raise RuntimeError(f"the model is unavailable: {answer[:1500]}") from None
            time.sleep(0.25)
        except Exception:
            time.sleep(0.25)
    raise RuntimeError(f"not serving {url} after {timeout} s")


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Payload:
    """Where the assembled bundles put things (see bench/gpu/pack)."""

    def __init__(self, work):
        self.core = transfer.bundle_dir(work, "core")
        self.cuda = transfer.bundle_dir(work, "cuda")
        self.seeds = transfer.bundle_dir(work, "seeds")
        self.bin = self.core / "bin"
        self.app = self.core / "app"
        self.ort_dir = self.core / "onnxruntime"
        self.model = self.app / "models/minilm/model.onnx"
        self.tokenizer = self.app / "models/minilm/tokenizer.json"

    def ort_library(self):
        return next(iter(sorted(self.ort_dir.glob("libonnxruntime.so.*"))))

    def link_cuda_provider(self):
        """ONNX Runtime loads its CUDA provider from beside libonnxruntime.so."""
        provider = self.cuda / "libonnxruntime_providers_cuda.so"
        link = self.ort_dir / provider.name
        if provider.exists() and not link.exists():
            if link.is_symlink():  # dangling: the bundle was unpacked again elsewhere
                link.unlink()
            link.symlink_to(provider.resolve())
        return link.exists()


def environment(payload, device):
    # Errors without backtraces: the report keeps the last lines of a failing tool's output.
    env = dict(os.environ, RUST_LOG="warn", RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0",
               ORT_DYLIB_PATH=str(payload.ort_library()))
    if device.startswith("cuda"):
        dirs, _ = cuda_library_dirs()
        paths = dirs + [str(payload.ort_dir)] + os.environ.get("LD_LIBRARY_PATH", "").split(":")
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    return env


def bench_tool(payload, env, *args, timeout=300):
    command = [str(payload.bin / "edgeinfer-bench")] + [str(a) for a in args]
    log(" ".join(command))
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"edgeinfer-bench {args[0]} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def start(system, payload, env, device, port, logs):
    """One server on 127.0.0.1:PORT; returns the process."""
    if system == "edgeinfer":
        config = payload.app / ("gpu.toml" if device.startswith("cuda") else "cpu.toml")
        command = [str(payload.bin / "edgeinfer"), "up", "-f", str(payload.app / "spin.toml"),
                   "--runtime-config-file", str(config), "--listen", f"127.0.0.1:{port}"]
    elif system == "native":
        command = [str(payload.bin / "edgeinfer-bench"), "native", "--ort-library", str(payload.ort_library()),
                   "--model", str(payload.model), "--tokenizer", str(payload.tokenizer), "--device", device,
                   "--listen", f"127.0.0.1:{port}"]
    else:
        command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(ROOT / "bench/seeds"), "--host",
                   "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
        # One uvicorn worker, as in bench/run's default (--seeds-workers 1).
        env = dict(env, MODEL_DIR=str(payload.model.parent), DEVICE=device,
                   PYTHONPATH=str(seeds_path(payload)), INTRA_THREADS="2")
    log(" ".join(command))
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(logs / f"{system}.log", "w"))


def seeds_path(payload):
    """The seeds' Python packages for this interpreter, with onnxruntime-gpu's libraries linked in."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    path = payload.seeds / tag
    if not path.exists():
        have = sorted(p.name for p in payload.seeds.glob("cp*"))
        raise RuntimeError(f"no seeds' packages for Python {platform.python_version()} ({tag}); packed: {have}")
    capi = path / "onnxruntime/capi"
    for library in list(payload.ort_dir.glob("libonnxruntime*.so*")):
        link = capi / library.name
        if not link.exists():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(library.resolve())
    return path


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def parity(payload, device, logs):
    """edgeinfer's /embed on `device` against the CPU provider of the same library."""
    answers = {}
    for side in [device, "cpu"]:
        env = environment(payload, side)
        port = free_port()
        process = start("edgeinfer", payload, env, side, port, logs)
        try:
            url = f"http://127.0.0.1:{port}/embed"
            ready_s = wait_until_serving(url, process, {"inputs": "warm up"})
            answers[side] = {"vectors": post(url, {"inputs": PARITY_SENTENCES}), "ready_s": round(ready_s, 2)}
        finally:
            stop(process)
    gpu, cpu = answers[device]["vectors"], answers["cpu"]["vectors"]
    return {
        "sentences": len(PARITY_SENTENCES),
        "min_cosine": min(cosine(a, b) for a, b in zip(gpu, cpu)),
        "max_abs_diff": max(abs(x - y) for a, b in zip(gpu, cpu) for x, y in zip(a, b)),
        "ready_s": {side: answers[side]["ready_s"] for side in answers},
    }


def load_points(payload, env, device, systems, concurrencies, seconds, logs):
    rows = []
    for system in systems:
        port = free_port()
        try:
            process = start(system, payload, env, device, port, logs)
        except Exception as e:
            rows.append({"system": system, "error": f"{type(e).__name__}: {e}"})
            continue
        try:
            url = f"http://127.0.0.1:{port}/embed"
            wait_until_serving(url, process, {"inputs": SENTENCE})
            for concurrency in concurrencies:
                point = bench_tool(payload, env, "load", "--url", url, "--body", json.dumps({"inputs": SENTENCE}),
                                   "--label", system, "--concurrency", concurrency, "--seconds", seconds,
                                   "--warmup", 1, timeout=seconds + 120)
                point.update(system=system, concurrency=concurrency)
                rows.append(point)
        except Exception as e:
            rows.append({"system": system, "error": f"{e}; log: {(logs / f'{system}.log').read_text()[-1500:]}"})
        finally:
            stop(process)
    return rows


def step(results, name, action):
    started = time.time()
    try:
        results[name] = action()
    except Exception as e:
        results[name] = {"error": f"{type(e).__name__}: {e}"}
        log(f"{name} failed: {e}")
    log(f"{name}: {time.time() - started:.1f} s")


def measure(args):
    work = Path(args.work)
    payload = Payload(work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    results = {"device": args.device, "probe": probe(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    assembled = {b["name"] for b in transfer.status(work)["bundles"] if b["assembled"]}
    if "core" not in assembled:
        results["error"] = "the core bundle (host, bench tool, ONNX Runtime, app) is not assembled"
    elif args.device.startswith("cuda") and not payload.link_cuda_provider():
        results["error"] = "the cuda bundle (libonnxruntime_providers_cuda.so) is not assembled"
    else:
        env = environment(payload, args.device)
        model = ["--ort-library", payload.ort_library(), "--model", payload.model, "--tokenizer", payload.tokenizer,
                 "--device", args.device]
        step(results, "ceiling", lambda: bench_tool(payload, env, "ceiling", *model, "--text", SENTENCE,
                                                    "--batch-sizes", args.batch_sizes, "--seconds", args.seconds))
        step(results, "inproc", lambda: bench_tool(payload, env, "inproc", *model, "--text", SENTENCE, "--n", 300))
        step(results, "parity", lambda: parity(payload, args.device, logs))
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        step(results, "load", lambda: load_points(payload, env, args.device, args.systems.split(","), concurrencies,
                                                  args.seconds, logs))
    (out / "gpu-results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "gpu.md").write_text(report(results))
    print(report(results))


def report(results):
    lines = [f"GPU run ({results['device']}): {results['probe'].get('gpus')}, Python {results['probe']['python']}", ""]
    if "error" in results:
        return "\n".join(lines + [f"Not measured: {results['error']}", ""])

    def summary(title, result, describe):
        if result and "error" in result:
            lines.append(f"- {title}: failed: {result['error']}")
        elif result:
            lines.append(f"- {title}: {describe(result)}")

    summary("raw ONNX Runtime ceiling", results.get("ceiling"),
            lambda r: f"{r['best_sequences_per_s']:.0f} sequences/s at batch {r['best_batch_size']}")
    summary("native pipeline in-process, one sentence at a time", results.get("inproc"),
            lambda r: f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
    summary("parity with the CPU provider", results.get("parity"),
            lambda r: f"{r['sentences']} sentences, min cosine {r['min_cosine']:.6f}, largest difference "
                      f"{r['max_abs_diff']:.2e}")
    load = results.get("load")
    if isinstance(load, dict):
        summary("load", load, str)
        load = []
    lines += ["", "| system | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for row in load or []:
        if "error" in row:
            lines.append(f"| {row['system']} | | | | | {row['error'][:200]} |")
        else:
            latency = row["latency_ms"]
            lines.append(f"| {row['system']} | {row['concurrency']} | {row['requests_per_s']:.1f} | {latency['p50']:.2f} | "
                         f"{latency['p99']:.2f} | {row['errors']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(WORK), help="where the plan and parts are (default: target/gpu)")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="which parts arrived intact")
    status.add_argument("--probe", action="store_true", help="also report the GPU, Python and CUDA libraries")
    assemble = commands.add_parser("assemble", help="rebuild, check and unpack the complete bundles")
    assemble.add_argument("bundles", nargs="*", help="only these bundles (default: all)")
    run = commands.add_parser("measure", help="the GPU rows")
    run.add_argument("--out", default=os.environ.get("OUT", "target/gpu/out"))
    run.add_argument("--device", default="cuda:0")
    run.add_argument("--systems", default="edgeinfer,native,seeds")
    run.add_argument("--concurrency", default="1,32,128")
    run.add_argument("--batch-sizes", default="1,8,32,64,128")
    run.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    try:
        if args.command == "status":
            report_ = transfer.status(args.work)
            if args.probe:
                report_["probe"] = probe()
            print(json.dumps(report_, indent=1))
        elif args.command == "assemble":
            print(json.dumps({"assembled": transfer.assemble(args.work, args.bundles)}))
        else:
            measure(args)
    except transfer.TransferError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
