#!/usr/bin/env python3
"""Records the OTLP/HTTP JSON bodies the real OpenTelemetry JS SDKs send, for the JSON reader's
differential tests (src/otlp/jsonfast/tests.rs): runs fixtures/js/forked_senders.js of each
generation (installed by scripts/setup-js.sh) against a capturing OTLP/HTTP server on an
ephemeral port and writes every JSON body, inflated, to fixtures/otlp/js/<generation>/.

    scripts/record-js-json.py [GENERATION...]      # default: every fixtures/js/sdk-* generation
"""
import gzip
import http.server
import os
import pathlib
import subprocess
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Capture(http.server.BaseHTTPRequestHandler):
    bodies = []

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                body += self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    break
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "") == "gzip":
            body = gzip.decompress(body)
        json_body = self.headers.get("Content-Type", "").startswith("application/json")
        if json_body:
            Capture.bodies.append((self.path.rsplit("/", 1)[-1], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if json_body else "application/x-protobuf")
        reply = b"{}" if json_body else b""
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def record(generation):
    Capture.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    modules = subprocess.run(
        ["bash", str(ROOT / "scripts/setup-js.sh"), generation],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Children 0 (http/json, cumulative) and 3 (http/json, gzip, delta); the others' exports
    # (protobuf, gRPC to nowhere) are not kept.
    subprocess.run(
        ["node", str(ROOT / "fixtures/js/forked_senders.js"), url, "http://127.0.0.1:9", "4", "2"],
        env={**os.environ, "NODE_PATH": modules}, capture_output=True, timeout=120,
    )
    server.shutdown()
    out = ROOT / "fixtures/otlp/js" / generation
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    counts = {}
    for signal, body in Capture.bodies:
        if not body:
            continue
        counts[signal] = counts.get(signal, 0) + 1
        (out / f"{signal}-{counts[signal]}.json").write_bytes(body)
    print(generation, counts)


for g in sys.argv[1:] or sorted(p.name for p in (ROOT / "fixtures/js").glob("sdk-*")):
    record(g)
