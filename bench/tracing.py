#!/usr/bin/env python3
"""What traces cost, in one run on one machine (issue 25).

`spooled` in the default configuration (dedupe on, every request a distinct signed event from
examples/signed_load) at 8 and 64 connections, with tracing off, sampled at 1 % and at 100 %,
alternated over ROUNDS rounds of SECONDS each, each point on a fresh bridge. The spans go over
OTLP/HTTP to a sink in this script that reads every export and answers 200 (it counts the
requests and bytes it got, so a point at 100 % shows that spans really left). The ratios to
"off" within the run are the result; absolute figures move with the machine.

On dev-broker (librdkafka's mock cluster). Needs the release binaries (bench/tracing.sh builds
them). Writes bench/out/tracing.json and prints the table BENCHMARKS.md quotes.
"""
import http.server
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402  (the benchmark's own helpers: Server, signed_load, dev-broker)

ROUNDS = int(os.environ.get("TRACING_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = (8, 64)
RATIOS = (None, 0.01, 1.0)


class Sink(http.server.BaseHTTPRequestHandler):
    """OTLP/HTTP `POST /v1/traces`: reads the body, answers an empty ExportTraceServiceResponse."""
    received = {"requests": 0, "bytes": 0}
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (the handler's name is http.server's)
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        with Sink.lock:
            Sink.received["requests"] += 1
            Sink.received["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


def start_sink():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def telemetry(sink, ratio):
    if ratio is None:
        return ""
    return (f'[telemetry.otlp]\nendpoint = "http://127.0.0.1:{sink.server_address[1]}"\n'
            f'protocol = "http/protobuf"\nsampling_ratio = {ratio}\n')


def point(brokers, sink, conc, ratio):
    """SECONDS of signed load at `conc` connections on a fresh `spooled` bridge."""
    port, admin = run.free_port(), run.free_port()
    server = run.Server("spooled", brokers, port, dedupe="local", admin_port=admin,
                        extra=telemetry(sink, ratio))
    try:
        run.signed_load(port, conc, 1, first_id=10**9)  # warm up
        with Sink.lock:
            before = dict(Sink.received)
        cpu0, _, _ = run.proc_stats(server.proc.pid)
        t0 = time.time()
        r = run.signed_load(port, conc, SECONDS, first_id=int(t0 * 1000) % 10**8 * 100)
        cpu1, _, hwm = run.proc_stats(server.proc.pid)
        cpu = (cpu1 - cpu0) / (time.time() - t0)
        while (run.spool_depth(admin) or 0) > 0:
            time.sleep(0.05)
    finally:
        server.stop()
    with Sink.lock:
        exported = {k: Sink.received[k] - before[k] for k in before}
    return {"connections": conc, "ratio": ratio, "rps": r["rps"], "p50_ms": r.get("p50_ms"),
            "p99_ms": r.get("p99_ms"), "cpu_cores": cpu, "peak_rss_mb": hwm,
            "otlp_requests": exported["requests"], "otlp_bytes": exported["bytes"]}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def name(ratio):
    return "off" if ratio is None else f"{ratio:.0%}"


def report(points):
    print("\n| spooled | tracing | accepted/s | p50 ms | p99 ms | CPU cores | / off | OTLP MB sent |")
    print("|---|---|---|---|---|---|---|---|")
    for conc in CONNECTIONS:
        off = median([p["rps"] for p in points if p["connections"] == conc and p["ratio"] is None])
        for ratio in RATIOS:
            ps = [p for p in points if p["connections"] == conc and p["ratio"] == ratio]
            rps = median([p["rps"] for p in ps])
            print(f"| {conc} conns | {name(ratio)} | {rps:,.0f} | {median([p['p50_ms'] for p in ps]):.2f} "
                  f"| {median([p['p99_ms'] for p in ps]):.2f} | {median([p['cpu_cores'] for p in ps]):.2f} "
                  f"| {rps / off:.2f} | {median([p['otlp_bytes'] for p in ps]) / 1e6:.1f} |")


def main():
    os.makedirs(run.OUT, exist_ok=True)
    sink = start_sink()
    broker, brokers = run.start_broker()
    points = []
    try:
        for _ in range(ROUNDS):
            for conc in CONNECTIONS:
                for ratio in RATIOS:
                    p = point(brokers, sink, conc, ratio)
                    print(json.dumps(p), flush=True)
                    points.append(p)
    finally:
        broker.terminate()
        sink.shutdown()
    with open(os.path.join(run.OUT, "tracing.json"), "w") as f:
        json.dump({"cores": os.cpu_count(), "seconds": SECONDS, "points": points}, f, indent=2)
    report(points)


if __name__ == "__main__":
    main()
