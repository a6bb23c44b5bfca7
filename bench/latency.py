#!/usr/bin/env python3
"""Latency at concurrency 1 and server RSS over N requests (Python stdlib only).

Start a host first, e.g. `cargo run --release -p edgeinfer -- up`, then:

    python3 bench/latency.py --url http://127.0.0.1:3000/embed --pid $(pgrep -f 'edgeinfer up') -n 1000

Prints the first request's latency separately (it creates the instance and parses the tokenizer),
then p50/p90/p99 of the rest, and RSS before and after.
"""
import argparse
import http.client
import json
import statistics
import time
import urllib.parse


def rss_kib(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:3000/embed")
    parser.add_argument("--pid", type=int, default=None, help="server pid, for RSS")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--text", default="A 24-token sentence about deploying small NLP models to edge hosts with WebAssembly.")
    args = parser.parse_args()

    url = urllib.parse.urlparse(args.url)
    body = json.dumps({"inputs": args.text})
    headers = {"content-type": "application/json"}
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)

    def once():
        started = time.perf_counter()
        connection.request("POST", url.path, body, headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"status {response.status}: {payload[:200]!r}")
        return elapsed

    rss_before = rss_kib(args.pid)
    first = once()
    samples = sorted(once() for _ in range(args.n - 1))
    rss_after = rss_kib(args.pid)

    def pct(p):
        return samples[min(len(samples) - 1, int(p / 100 * len(samples)))] * 1000

    print(f"requests: {args.n}, first: {first * 1000:.2f} ms")
    print(f"p50 {pct(50):.2f} ms  p90 {pct(90):.2f} ms  p99 {pct(99):.2f} ms  mean {statistics.mean(samples) * 1000:.2f} ms")
    if rss_before is not None:
        print(f"RSS before {rss_before / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
