#!/usr/bin/env python3
"""Nightly-style load test of the HTTP layer (issue 9), against `dsv4 serve` on the demo model.

Phase 1: IDLE idle connections and LORIS slow-loris connections (one header byte per second) stay open while
STREAMS concurrent streaming chat requests run, and GET /health is timed every 100 ms on a fresh connection;
every /health must answer within 1 s and every stream must end with [DONE].
Phase 2: LARGE requests of BYTES each (POST /tokenize, fresh connections, 8 at a time); the server's RSS is
read from /proc before, at its peak and after, and must stay within --rss-bound-mb over the start.

  scripts/http_load_test.py --bin build/dsv4                 # the full run (about 3 minutes)
  scripts/http_load_test.py --bin build/dsv4 --large 100     # quicker

Prints one JSON line with the measurements; exits 1 when a bound is broken.
"""
import argparse
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def start_server(bin_path, extra):
    log = open("/tmp/dsv4_http_load.log", "w")
    p = subprocess.Popen([bin_path, "serve", "--host", "127.0.0.1", "--port", "0"] + extra, stdout=log,
                         stderr=subprocess.STDOUT)
    for _ in range(1200):
        time.sleep(0.1)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open("/tmp/dsv4_http_load.log").read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            sys.exit("server exited: see /tmp/dsv4_http_load.log")
    sys.exit("server did not start")


def health_latency(port):
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        ok = c.getresponse().status == 200
        c.close()
    except OSError:
        ok = False
    return time.monotonic() - t0, ok


def stream(port, results, i):
    body = json.dumps({"messages": [{"role": "user", "content": f"Tell me story {i}."}], "max_tokens": 64,
                       "ignore_eos": True, "stream": True})
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read().decode("utf-8", "replace")
        results[i] = r.status == 200 and "data: [DONE]" in data
        c.close()
    except OSError as e:
        results[i] = False
        print(f"stream {i}: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/dsv4")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--loris", type=int, default=200)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--large", type=int, default=1000)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--rss-bound-mb", type=float, default=300.0)
    a = ap.parse_args()

    # Every socket is a descriptor on both ends; the server inherits the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Idle and slow connections would be closed by the default deadlines (that is the defence); here they must
    # stay open for the whole phase to show that holding them costs the others nothing.
    proc, port = start_server(a.bin, ["--max-num-seqs", str(a.streams), "--http-idle-timeout", "600",
                                      "--http-header-timeout", "600", "--max-connections", "4096"])
    out = {}
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.idle)]
        loris = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.loris)]
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
        stop = threading.Event()

        def trickle():
            k = 0
            while not stop.is_set():
                for s in loris:
                    try:
                        s.send(head[k % len(head):k % len(head) + 1])
                    except OSError:
                        pass
                k += 1
                stop.wait(1.0)

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1)
        results = [None] * a.streams
        threads = [threading.Thread(target=stream, args=(port, results, i)) for i in range(a.streams)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        lat, fails = [], 0
        while any(t.is_alive() for t in threads):
            d, ok = health_latency(port)
            lat.append(d)
            fails += not ok
            time.sleep(0.1)
        for t in threads:
            t.join()
        stop.set()
        out.update(phase1_seconds=round(time.monotonic() - t0, 2), health_checks=len(lat),
                   health_max_s=round(max(lat), 4), health_p50_s=round(sorted(lat)[len(lat) // 2], 4),
                   health_failures=fails, streams_ok=sum(bool(r) for r in results), streams=a.streams,
                   idle_open=a.idle, loris_open=a.loris, rss_phase1_mb=round(rss_mb(proc.pid), 1))
        for s in idle + loris:
            s.close()
        time.sleep(1)

        # Phase 2: large bodies on fresh connections, 8 at a time.
        text = ("lorem ipsum dolor sit amet " * (a.bytes // 27 + 1))[: a.bytes]
        body = json.dumps({"prompt": text})
        base = rss_mb(proc.pid)
        peak = base
        lock = threading.Lock()
        done = [0, 0]

        def large(n):
            nonlocal peak
            for _ in range(n):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    c.request("POST", "/tokenize", body, {"Content-Type": "application/json"})
                    r = c.getresponse()
                    r.read()
                    ok = r.status == 200
                    c.close()
                except OSError:
                    ok = False
                with lock:
                    done[0 if ok else 1] += 1
                    peak = max(peak, rss_mb(proc.pid))

        t0 = time.monotonic()
        workers = [threading.Thread(target=large, args=(a.large // 8 + (i < a.large % 8),)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        time.sleep(1)
        after = rss_mb(proc.pid)
        out.update(large_requests=a.large, large_bytes=len(body), large_ok=done[0], large_failed=done[1],
                   phase2_seconds=round(time.monotonic() - t0, 1), rss_before_mb=round(base, 1),
                   rss_peak_mb=round(peak, 1), rss_after_mb=round(after, 1), rss_bound_mb=a.rss_bound_mb)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(json.dumps(out))
    bad = []
    if out["health_max_s"] >= 1.0 or out["health_failures"]:
        bad.append("/health slower than 1 s or failing")
    if out["streams_ok"] != a.streams:
        bad.append("a stream failed")
    if out["large_failed"]:
        bad.append("a large request failed")
    if out["rss_after_mb"] - out["rss_before_mb"] > a.rss_bound_mb:
        bad.append("RSS grew beyond the bound")
    if bad:
        sys.exit("FAIL: " + "; ".join(bad))


if __name__ == "__main__":
    main()
