#!/usr/bin/env python3
"""Load benchmark for an OpenAI-compatible /v1/completions server (tessera serve, llama-server).

Runs C concurrent streaming clients for each concurrency level, each sending requests back to
back until R requests per level are done, and prints total output tokens/s and p50/p99 of the
time to first token (TTFT) and the inter-token latency (ITL, between consecutive SSE chunks).
Standard library only. Figures, never a pass/fail: `--json FILE` writes them for comparisons.

  bench/serve/load_bench.py --url http://127.0.0.1:8080 --levels 1,4,16,64 --max-tokens 64
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def one_request(host, port, prompt, max_tokens, api_key, model):
    """Streams one completion; returns (ttft_s, [itl_s...], output_tokens) or raises."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    if model:
        body["model"] = model
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("HTTP %d: %s" % (resp.status, resp.read()[:200]))
    ttft = None
    last = None
    itl = []
    chunks = 0
    usage_tokens = None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            usage_tokens = ev["usage"].get("completion_tokens", usage_tokens)
        choices = ev.get("choices") or []
        if not choices or not choices[0].get("text"):
            continue
        now = time.perf_counter()
        chunks += 1
        if ttft is None:
            ttft = now - t0
        else:
            itl.append(now - last)
        last = now
    conn.close()
    return ttft, itl, usage_tokens if usage_tokens is not None else chunks


def run_level(host, port, concurrency, requests, prompt, max_tokens, api_key, model):
    lock = threading.Lock()
    todo = [requests]
    ttfts, itls, tokens, errors = [], [], [0], []

    def worker():
        while True:
            with lock:
                if todo[0] == 0:
                    return
                todo[0] -= 1
            try:
                ttft, itl, n = one_request(host, port, prompt, max_tokens, api_key, model)
            except Exception as e:  # report, keep the level going
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                if ttft is not None:
                    ttfts.append(ttft)
                itls.extend(itl)
                tokens[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "output_tokens": tokens[0],
        "wall_s": wall,
        "output_tok_s": tokens[0] / wall if wall > 0 else 0.0,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "itl_p50_ms": percentile(itls, 50) * 1e3,
        "itl_p99_ms": percentile(itls, 99) * 1e3,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--levels", default="1,4,16,64", help="concurrent streams per level")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per level (default: 2 x concurrency, at least 4)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="In the beginning God created the heaven and the earth.")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--label", default="", help="name printed in the table (e.g. tessera)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    # Wait (up to 5 minutes) for the model to load: /health answers 200.
    deadline = time.time() + 300
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("no 200 from %s/health within 5 minutes" % args.url)
        time.sleep(0.2)
    # One warm-up request (programs built, caches filled) that is not measured.
    one_request(host, port, args.prompt, 4, args.api_key, args.model)
    rows = []
    print("%-10s %5s %5s %6s %10s %9s %9s %8s %8s" % ("server", "conc", "reqs", "errors",
                                                      "out tok/s", "TTFT p50", "TTFT p99",
                                                      "ITL p50", "ITL p99"))
    for c in [int(x) for x in args.levels.split(",") if x]:
        n = args.requests or max(4, 2 * c)
        r = run_level(host, port, c, n, args.prompt, args.max_tokens, args.api_key, args.model)
        r["server"] = args.label or args.url
        rows.append(r)
        print("%-10s %5d %5d %6d %10.1f %7.0fms %7.0fms %6.1fms %6.1fms" % (
            (args.label or "-")[:10], c, n, r["errors"], r["output_tok_s"], r["ttft_p50_ms"],
            r["ttft_p99_ms"], r["itl_p50_ms"], r["itl_p99_ms"]))
        if r["first_error"]:
            print("  first error: " + r["first_error"], file=sys.stderr)
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
