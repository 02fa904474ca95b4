#!/usr/bin/env python3
"""The archive's cost and the replay's speed, in one run on one machine (issue 24).

1. `spooled` with the archive off and on, alternated over ROUNDS rounds of SECONDS each at 64
   connections, every request a distinct signed event (examples/signed_load): what archiving
   every delivery costs the request path and the drain, as a ratio within the run.
2. 100 000 events posted and archived, then `replay --apply` of all of them through a route
   that did not exist when they came in (a dry run first): time, rate, and a `--rate` run
   checked against its limit.

On dev-broker (librdkafka's mock cluster). Needs the release binaries (bench/archive.sh
builds them). Writes bench/out/archive.json and prints the table BENCHMARKS.md quotes.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402  (the benchmark's own helpers: Server, signed_load, dev-broker)

ROUNDS = int(os.environ.get("ARCHIVE_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
EVENTS = int(os.environ.get("ARCHIVE_EVENTS", "100000"))
NEW_ROUTE = '[[routes]]\nmatch = "*"\ntopic = "bench.replayed"\n'


def spooled_point(brokers, archive):
    """SECONDS of signed load on a fresh `spooled` bridge; accepted/s, drained/s, CPU."""
    port, admin = run.free_port(), run.free_port()
    server = run.Server("spooled", brokers, port, dedupe="local", admin_port=admin, archive=archive)
    try:
        run.signed_load(port, 64, 1, first_id=10**9)  # warm up
        cpu0, _, _ = run.proc_stats(server.proc.pid)
        t0 = time.time()
        r = run.signed_load(port, 64, SECONDS, first_id=int(t0 * 1000) % 10**8 * 100)
        while (run.spool_depth(admin) or 0) > 0:
            time.sleep(0.05)
        drained = time.time() - t0
        cpu1, _, _ = run.proc_stats(server.proc.pid)
        accepted = r["rps"] * SECONDS
        return {"archive": archive, "rps": r["rps"], "p99_ms": r.get("p99_ms"),
                "drained_per_s": accepted / drained, "cpu_cores": (cpu1 - cpu0) / drained}
    finally:
        server.stop()


def operator_config(brokers):
    path = os.path.join(run.OUT, "archive-operator.toml")
    with open(path, "w") as f:
        f.write(f"""[kafka]
brokers = "{brokers}"
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = {{ type = "hmac-sha256", secrets = ["bench-secret"] }}
{NEW_ROUTE}""")
    return path


def replay(config, since, *args):
    t0 = time.time()
    out = subprocess.run([run.BIN, "--config", config, "replay", "--from", since, *args],
                         capture_output=True, text=True, check=True, cwd=run.OUT)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = round(time.time() - t0, 3)
    return summary


def embedded_server(port, admin):
    """`serve` on its embedded broker, which provisions topics itself: the archive gets 64
    partitions, so the mock cluster's bounded tail (about 5 MB a partition) holds all EVENTS.
    Returns the process and the broker's address (from its start-up line)."""
    config = os.path.join(run.OUT, "archive-embedded.toml")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
max_connections = 8192
max_in_flight_requests = 8192
max_idle_per_client = 8192
[admin]
listen = "127.0.0.1:{admin}"
[log]
filter = "warn"
format = "json"
[archive]
partitions = 64
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = {{ type = "hmac-sha256", secrets = ["bench-secret"] }}
""")
    proc = subprocess.Popen([run.BIN, "--config", config, "serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "EMBEDDED" in line:
            brokers = json.loads(line)["bootstrap"]
            break
    run.wait_port(port)
    return proc, brokers


def replay_points():
    """EVENTS posted and archived, then replayed: a dry run, all at once, and at a set rate."""
    port, admin = run.free_port(), run.free_port()
    proc, brokers = embedded_server(port, admin)
    try:
        run.signed_load(port, 8, 1, first_id=10**9)  # warm up, before the window replayed
        time.sleep(1)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        time.sleep(1)
        posted = run.signed_load(port, 64, 600, total=EVENTS, first_id=5 * 10**8)
        while (run.spool_depth(admin) or 0) > 0:
            time.sleep(0.1)
        config = operator_config(brokers)
        dry = replay(config, since, "--dry-run")
        full = replay(config, since, "--apply", "--replay-id", "bench-full")
        paced = replay(config, since, "--apply", "--replay-id", "bench-paced", "--rate", "5000")
    finally:
        proc.terminate()
        proc.wait()
    return {"posted": posted, "dry_run": dry, "apply": full, "paced_5000": paced}


def main():
    os.makedirs(run.OUT, exist_ok=True)
    broker, brokers = run.start_broker()
    try:
        points = []
        for _ in range(ROUNDS):
            for archive in (False, True):
                p = spooled_point(brokers, archive)
                print(json.dumps(p), flush=True)
                points.append(p)
        replays = replay_points()
        print(json.dumps(replays), flush=True)
    finally:
        broker.terminate()
    result = {"cores": os.cpu_count(), "seconds": SECONDS, "rounds": points, "replay": replays}
    with open(os.path.join(run.OUT, "archive.json"), "w") as f:
        json.dump(result, f, indent=2)
    report(points, replays)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def report(points, replays):
    off = [p for p in points if not p["archive"]]
    on = [p for p in points if p["archive"]]
    print("\n| spooled, 64 connections | archive off | archive on | on / off |")
    print("|---|---|---|---|")
    for key, name in (("rps", "accepted/s"), ("drained_per_s", "drained/s"), ("cpu_cores", "CPU cores")):
        if not off or not on:
            break
        a, b = median([p[key] for p in off]), median([p[key] for p in on])
        print(f"| {name} (median of {len(off)}) | {a:,.1f} | {b:,.1f} | {b / a:.2f} |")
    for name in ("dry_run", "apply", "paced_5000"):
        r = replays[name]
        n = sum(r["by_topic"].values())
        print(f"| replay {name} | {n:,} events | {r['wall_seconds']} s | {n / r['wall_seconds']:,.0f} /s |")


if __name__ == "__main__":
    main()
