#!/usr/bin/env python3
"""The spool's targets (issue 26), in one run on one machine.

- The disk's own limit: the p50 of one 4 KiB pwrite + fdatasync in the directory the spools
  live in (bench/out), measured before and after the load points; the `spooled` p50 at 8
  connections is compared with it.
- Default configuration (dedupe on, every request a distinct signed event from
  examples/signed_load): `bare` hyper, `received` and `spooled` at 8 and 64 connections,
  alternated over ROUNDS rounds, each point on a fresh server; medians.
- Large bodies (oha, one body, dedupe off, as the earlier targets were measured): `bare` and
  `spooled` at 16 KiB and 256 KiB, 64 connections.
- examples/spool_bench: append with dedupe off and on, and the drain of a full spool.
- With BURST=1, the 500 000-event burst into a broker that is down (peak RSS).
- With BEFORE_BIN=path, `spooled` of that build (the release before the change) at 8 and 64
  connections too, alternated with the others: the change's own before/after in one run.

On dev-broker (librdkafka's mock cluster) in its own process. Needs the release binaries
(bench/spool.sh builds them). Writes bench/out/spool.json and prints the tables BENCHMARKS.md
quotes.
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402  (the benchmark's own helpers: Server, signed_load, oha, dev-broker)

ROUNDS = int(os.environ.get("SPOOL_ROUNDS", "3"))
CONNECTIONS = (8, 64)
CONTENDERS = ("bare", "received", "spooled")
LARGE = (16384, 262144)
BEFORE_BIN = os.environ.get("BEFORE_BIN")


def fdatasync_ms(samples=2000):
    """p50 and p99 of a 4 KiB pwrite + fdatasync at rotating offsets of a 1 MiB file."""
    path = os.path.join(run.OUT, "fdatasync.probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, 1 << 20)
        os.fsync(fd)
        block = os.urandom(4096)
        times = []
        for i in range(samples):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % 256) * 4096)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.remove(path)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)]}


def default_points(brokers):
    points = []
    for _ in range(ROUNDS):
        for conc in CONNECTIONS:
            for contender in CONTENDERS:
                dedupe = None if contender == "bare" else "local"
                points.append(run.measure_signed(contender, brokers, conc, dedupe))
            if BEFORE_BIN:
                points.append(before(brokers, conc))
    return points


def before(brokers, conc):
    """`spooled` of the build at BEFORE_BIN, labelled `before`."""
    current, run.BIN = run.BIN, BEFORE_BIN
    try:
        return run.measure_signed("spooled", brokers, conc, "local", name="before")
    finally:
        run.BIN = current


def large_points(brokers):
    points = []
    for size in LARGE:
        body, sig = run.payload(size)
        path = os.path.join(run.OUT, f"payload-{size}.json")
        with open(path, "wb") as f:
            f.write(body)
        for _ in range(max(1, ROUNDS - 1)):
            for contender in ("bare", "spooled"):
                points.append(run.measure(contender, brokers, size, 64, path, sig))
    return points


def median_of(points, key, **match):
    xs = [p[key] for p in points if all(p.get(k) == v for k, v in match.items())]
    return statistics.median(xs) if xs else float("nan")


def report(res):
    disk = statistics.median([d["p50_ms"] for d in res["fdatasync"]])
    pts = res["default"]
    p50s = ", ".join("%.3f" % d["p50_ms"] for d in res["fdatasync"])
    p99s = ", ".join("%.3f" % d["p99_ms"] for d in res["fdatasync"])
    print(f"\nfdatasync p50: {p50s} ms (median {disk:.3f}); p99 {p99s} ms")
    print("\n| conns | contender | req/s (median) | p50 ms | p99 ms | / bare | CPU cores | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    shown = CONTENDERS + (("before",) if BEFORE_BIN else ())
    for conc in CONNECTIONS:
        bare = median_of(pts, "rps", contender="bare", concurrency=conc)
        for c in shown:
            m = lambda k: median_of(pts, k, contender=c, concurrency=conc)  # noqa: E731
            print(f"| {conc} | {c} | {m('rps'):,.0f} | {m('p50_ms'):.2f} | {m('p99_ms'):.2f} "
                  f"| {m('rps') / bare:.0%} | {m('cpu_cores'):.2f} | {m('peak_rss_mb'):.1f} |")
    p50_8 = median_of(pts, "p50_ms", contender="spooled", concurrency=8)
    print(f"\n8 conns: spooled p50 {p50_8:.2f} ms = {p50_8 / disk:.1f} × fdatasync p50")
    for conc in CONNECTIONS:
        s = median_of(pts, "rps", contender="spooled", concurrency=conc)
        print(f"{conc} conns: spooled {s / median_of(pts, 'rps', contender='bare', concurrency=conc):.0%} of bare, "
              f"{s / median_of(pts, 'rps', contender='received', concurrency=conc):.0%} of received")
    print("\n| size | bare req/s | spooled req/s | spooled / bare | spooled p50 ms |")
    print("|---|---|---|---|---|")
    for size in LARGE:
        b = median_of(res["large"], "rps", contender="bare", size=size)
        s = median_of(res["large"], "rps", contender="spooled", size=size)
        p = median_of(res["large"], "p50_ms", contender="spooled", size=size)
        print(f"| {size // 1024} KiB | {b:,.0f} | {s:,.0f} | {s / b:.0%} | {p:.2f} |")
    print(f"\nspool_bench: {json.dumps(res['spool_bench'])}")
    if res.get("burst"):
        print(f"burst: {json.dumps(res['burst'])}")


def main():
    os.makedirs(run.OUT, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": run.machine(),
           "seconds_per_point": run.SECONDS, "rounds": ROUNDS, "fdatasync": [fdatasync_ms()]}
    broker, brokers = run.start_broker()
    try:
        res["default"] = default_points(brokers)
        res["large"] = large_points(brokers)
        out = subprocess.run([run.SPOOL_BENCH, brokers, "200000", "1024", "256"],
                             capture_output=True, text=True, check=True)
        res["spool_bench"] = json.loads(out.stdout)
    finally:
        broker.terminate()
        broker.wait()
    if os.environ.get("BURST") == "1":
        res["burst"] = run.burst()
    res["fdatasync"].append(fdatasync_ms())
    with open(os.path.join(run.OUT, "spool.json"), "w") as f:
        json.dump(res, f, indent=1)
    report(res)


if __name__ == "__main__":
    main()
