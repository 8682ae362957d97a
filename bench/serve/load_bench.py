#!/usr/bin/env python3
"""Load benchmark for an OpenAI-compatible /v1/completions server (tessera serve, llama-server).

Runs C concurrent streaming clients for each concurrency level, each sending requests back to
back until R requests per level are done, and prints total output tokens/s and p50/p99 of the
time to first token (TTFT) and the inter-token latency (ITL, between consecutive SSE chunks).
Standard library only. Figures, never a pass/fail: `--json FILE` writes them for comparisons.

  bench/serve/load_bench.py --url http://127.0.0.1:8080 --levels 1,4,16,64 --max-tokens 64

All streams of a level run in one thread, multiplexed over non-blocking sockets (selectors), so
the client costs less CPU per token (on a machine of few cores the server shares them with it):
here, 16 streams of 64 tokens against tessera serve, about 30 us of CPU per token against 50 us
for a thread per stream on http.client. Every read is timestamped when it arrives; the events it
holds share that time.
"""
import argparse
import http.client
import json
import selectors
import socket
import sys
import time
import urllib.parse


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def request_bytes(host, port, prompt, max_tokens, api_key, model):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    if model:
        body["model"] = model
    data = json.dumps(body).encode()
    head = ["POST /v1/completions HTTP/1.1", "Host: %s:%d" % (host, port),
            "Content-Type: application/json", "Content-Length: %d" % len(data),
            "Connection: close"]
    if api_key:
        head.append("Authorization: Bearer " + api_key)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class Stream:
    """One streamed completion on its own connection: HTTP response, chunked body, SSE events."""

    def __init__(self, host, port, payload):
        self.sock = socket.create_connection((host, port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.t0 = time.perf_counter()
        self.sock.sendall(payload)
        self.sock.setblocking(False)
        self.raw = b""         # bytes not yet parsed as headers or chunk framing
        self.body = b""        # de-chunked body not yet split into lines
        self.headers_done = False
        self.chunked = False
        self.chunk_left = 0    # bytes of the current chunk still to read (chunked)
        self.done = False
        self.error = None
        self.ttft = None
        self.last = None
        self.itl = []
        self.chunks = 0
        self.usage_tokens = None

    def feed(self, data, now):
        """Consumes bytes read at time `now`; sets done (or error) at the end of the stream."""
        self.raw += data
        if not self.headers_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.raw[:end].decode("latin-1").split("\r\n")
            self.raw = self.raw[end + 4:]
            self.headers_done = True
            parts = head[0].split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            for h in head[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    self.chunked = True
            if status != 200:
                self.error = "HTTP %d: %s" % (status, self.raw[:200])
                self.done = True
                return
        if self.chunked:
            while self.raw:
                if self.chunk_left == 0:
                    eol = self.raw.find(b"\r\n")
                    if eol < 0:
                        break
                    size = int(self.raw[:eol].split(b";")[0] or b"0", 16)
                    if size == 0:  # last chunk: the stream is over
                        self.raw = b""
                        self._lines(now, final=True)
                        self.done = True
                        return
                    self.raw = self.raw[eol + 2:]
                    self.chunk_left = size + 2  # the data and its CRLF
                take = min(self.chunk_left, len(self.raw))
                piece = self.raw[:take]
                self.raw = self.raw[take:]
                self.chunk_left -= take
                if self.chunk_left == 0:
                    piece = piece[:-2]
                elif self.chunk_left == 1:
                    piece = piece[:-1]
                self.body += piece
        else:
            self.body += self.raw
            self.raw = b""
        self._lines(now)

    def eof(self, now):
        if not self.headers_done:
            self.error = "the connection closed before a response"
        else:
            self._lines(now, final=True)
        self.done = True

    def _lines(self, now, final=False):
        while True:
            eol = self.body.find(b"\n")
            if eol < 0:
                break
            line = self.body[:eol].strip()
            self.body = self.body[eol + 1:]
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                self.done = True
                continue
            ev = json.loads(data)
            if ev.get("usage"):
                self.usage_tokens = ev["usage"].get("completion_tokens", self.usage_tokens)
            choices = ev.get("choices") or []
            if not choices or not choices[0].get("text"):
                continue
            self.chunks += 1
            if self.ttft is None:
                self.ttft = now - self.t0
            else:
                self.itl.append(now - self.last)
            self.last = now

    def tokens(self):
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


def run_level(host, port, concurrency, requests, prompt, max_tokens, api_key, model):
    payload = request_bytes(host, port, prompt, max_tokens, api_key, model)
    sel = selectors.DefaultSelector()
    ttfts, itls, errors = [], [], []
    tokens = 0
    todo = requests

    def start():
        nonlocal todo
        while todo > 0:
            todo -= 1
            try:
                s = Stream(host, port, payload)
            except OSError as e:  # report, keep the level going
                errors.append(str(e))
                continue
            sel.register(s.sock, selectors.EVENT_READ, s)
            return

    t0 = time.perf_counter()
    for _ in range(min(concurrency, requests)):
        start()
    while sel.get_map():
        for key, _ in sel.select(timeout=600):
            s = key.data
            try:
                data = s.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                data = None
                s.error = str(e)
                s.done = True
            now = time.perf_counter()
            try:
                if data:
                    s.feed(data, now)
                elif data is not None:
                    s.eof(now)
            except (ValueError, UnicodeDecodeError) as e:
                s.error = "bad response: %s" % e
                s.done = True
            if not s.done:
                continue
            sel.unregister(s.sock)
            s.sock.close()
            if s.error:
                errors.append(s.error)
            else:
                if s.ttft is not None:
                    ttfts.append(s.ttft)
                itls.extend(s.itl)
                tokens += s.tokens()
            start()
    wall = time.perf_counter() - t0
    sel.close()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "output_tokens": tokens,
        "wall_s": wall,
        "output_tok_s": tokens / wall if wall > 0 else 0.0,
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
    warm = run_level(host, port, 1, 1, args.prompt, 4, args.api_key, args.model)
    if warm["first_error"]:
        print("warm-up request failed: " + warm["first_error"], file=sys.stderr)
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
