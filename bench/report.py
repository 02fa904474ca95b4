#!/usr/bin/env python3
"""Writes BENCHMARKS.md from bench/out/results.json and bench/findings.md."""
import json, os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
r = json.load(open(os.path.join(ROOT, "bench", "out", "results.json")))
pts = r["points"]


def point(contender, size, conc):
    for p in pts:
        if (p["contender"], p["size"], p["concurrency"]) == (contender, size, conc):
            return p
    return None


small = min(p["size"] for p in pts)
ORDER = ["bare", "kafka", "received", "spooled", "published"]
NAMES = {"bare": "bare hyper (the limit)", "kafka": "hyper + the idempotent producer (the Kafka-side limit)",
         "received": "`received`", "spooled": "`spooled` (the default)", "published": "`published`"}


def share(points, contender, size, conc, of="bare"):
    find = lambda c: next((p for p in points if (p["contender"], p.get("size", small), p["concurrency"]) == (c, size, conc)), None)
    p, b = find(contender), find(of)
    return p["rps"] / b["rps"] if p and b and b["rps"] else None


def verdict(ok):
    return "met" if ok else "**missed**"


def pct(x):
    return "–" if x is None else f"{x*100:.0f} %"


defaults = r.get("default_config", [])
spooled_peak_rss = max((p["peak_rss_mb"] for p in pts if p["contender"] == "spooled" and p["size"] == small), default=None)
rss256 = next((p["peak_rss_mb"] for p in pts if (p["contender"], p["size"], p["concurrency"]) == ("spooled", small, 256)), None)
half = r.get("half_peak")
outage = r.get("outage", {})
rss = outage.get("rss_mb_each_second", [])
spool = r.get("spool", {})
burst = r.get("burst")
targets = []
for label, points in (("oha, one repeated body, dedupe off", pts), ("default configuration: dedupe on, distinct signed events", defaults)):
    if not points:
        continue
    for conc in (32, 64):
        sp, rc = share(points, "spooled", small, conc), share(points, "received", small, conc)
        sr = share(points, "spooled", small, conc, of="received")
        if sp is None:
            continue
        targets.append((f"{label}, {conc} conns: `spooled` ≥ 50 % of bare and ≥ 85 % of `received`",
                        f"{pct(sp)} / {pct(sr)}", verdict(sp >= 0.5 and sr is not None and sr >= 0.85)))
        targets.append((f"{label}, {conc} conns: `received` ≥ 70 % of bare", pct(rc), verdict(rc is not None and rc >= 0.7)))
    pb = share(points, "published", small, 64)
    if pb is not None:
        targets.append((f"{label}, 64 conns: `published` ≥ 40 % of bare", pct(pb), verdict(pb >= 0.4)))
for size, goal in ((16384, 0.35), (262144, 0.20)):
    x = share(pts, "spooled", size, 64)
    if x is not None:
        targets.append((f"{size // 1024} KiB, 64 conns: `spooled` ≥ {goal*100:.0f} % of bare", pct(x), verdict(x >= goal)))
if half:
    targets.append((f"`spooled` p99 ≤ 5 ms at half its peak rate ({half['rate']} req/s, 64 conns)", f"{half['p99_ms']:.2f} ms (achieved {half['rps']:.0f} req/s)", verdict(half["p99_ms"] <= 5)))
if rss256 is not None:
    targets.append(("Peak RSS ≤ 64 MiB at 256 connections (`spooled`, 1 KiB)", f"{rss256:.1f} MiB", verdict(rss256 <= 64)))
if rss:
    down = outage["broker_down_from_second"]
    # While the broker is away, RSS climbs as the in-flight window and the spool's page cache
    # fill, then must stay flat: growth over the second half of the outage is what would
    # grow without bound.
    tail = rss[down + (len(rss) - down) // 2:]
    growth = max(tail) - min(tail)
    targets.append(("RSS flat during a broker outage (3000 req/s, broker gone from second 4 to 20)",
                    f"{rss[down]:.1f} → {max(rss):.1f} MiB as buffers fill, then {tail[0]:.1f} → {tail[-1]:.1f} MiB over the last {len(tail)} s",
                    verdict(growth <= 2)))
if spool:
    targets.append(("Spool drain ≥ 150 k events/s (200 k × 1 KiB to the broker)", f"{spool['drain_per_sec']/1000:.0f} k/s", verdict(spool["drain_per_sec"] >= 150_000)))
if burst:
    live = burst["live"]
    targets.append((f"Burst of {burst['events']:,} events into a broker that is down: new events answered while the backlog drains",
                    f"p50 {live['p50_ms']:.1f} ms, p99 {live['p99_ms']:.1f} ms at {burst['live_rate']} req/s; drained in {burst['drain_seconds']:.1f} s after the broker returned",
                    "reported"))


def summary(points, title):
    out = ["", f"### {title}", "", "| contender | 32 conns | 64 conns |", "|---|---|---|"]
    for c in ORDER:
        if any(p["contender"] == c for p in points):
            out.append(f"| {NAMES[c]} | {pct(share(points, c, small, 32))} | {pct(share(points, c, small, 64))} |")
    return out


m = r["machine"]
lines = [
    "# Benchmarks",
    "",
    f"Measured {r['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
    f"load from {m['oha']}, {r['seconds_per_point']:.0f} s per point after a 1 s warm-up, a fresh server process per point. "
    "The server, the load generator and the broker (librdkafka's mock cluster, `eduzz-kafka-bridge dev-broker`, "
    "in its own process) share the machine, so absolute numbers are noise on these shared machines: "
    "the targets are ratios within this one run. Reproduce with `bench/run.sh` (see README).",
    "",
    "## Targets",
    "",
    "| target | this run | |",
    "|---|---|---|",
]
lines += [f"| {a} | {b} | {c} |" for a, b, c in targets]
lines += ["", "## Share of bare hyper (1 KiB)"]
lines += summary(pts, "oha, one repeated signed body, dedupe off")
if defaults:
    lines += summary(defaults, "Default configuration: dedupe on, every request a distinct, correctly signed event (examples/signed_load for every contender)")
    lines += ["", "| conns | contender | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | peak RSS MiB | CPU cores |", "|---|---|---|---|---|---|---|---|---|"]
    for p in defaults:
        lines.append(f"| {p['concurrency']} | {p['contender']} | {p['rps']:.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
                     f"{p['p999_ms']:.2f} | {p['not_ok']} | {p['peak_rss_mb']:.1f} | {p['cpu_cores']:.2f} |")
lines += ["", "![throughput](bench/throughput.png)", "", "![p99](bench/p99.png)", "", "## All points", "",
          "Every request is a real Eduzz payload with a valid `x-signature`; 2xx answers only are counted. "
          "`bare` = examples/bare_hyper.rs (reads the body, answers 200); `kafka` = examples/kafka_limit.rs "
          "(reads the body, hands it to the idempotent producer, answers 200).", "",
          "| body | conns | contender | req/s | % of bare | p50 ms | p99 ms | p99.9 ms | non-2xx | peak RSS MiB | CPU cores |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
for p in sorted(pts, key=lambda p: (p["size"], p["concurrency"], ORDER.index(p["contender"]) if p["contender"] in ORDER else 9)):
    b = point("bare", p["size"], p["concurrency"])
    share = f"{p['rps']/b['rps']*100:.0f} %" if b and b["rps"] else "-"
    lines.append(f"| {p['size']//1024} KiB | {p['concurrency']} | {p['contender']} | {p['rps']:.0f} | {share} | "
                 f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['p999_ms']:.2f} | {p['not_ok']} | {p['peak_rss_mb']:.1f} | {p['cpu_cores']:.2f} |")
if spool:
    lines += ["", "## Spool", "",
              f"{spool['events']} events of {spool['body_bytes']} B from {spool['concurrency']} concurrent writers "
              "(spool on the local disk, every commit fsynced):", "",
              "| | events/s |", "|---|---|",
              f"| append (group commit), dedupe off | {spool['append_per_sec']:.0f} |",
              f"| append (group commit), dedupe on | {spool['append_per_sec_with_dedupe']:.0f} |",
              f"| drain to the broker (full spool → empty, every delivery confirmed and deleted) | {spool['drain_per_sec']:.0f} |"]
if rss:
    lines += ["", "## Broker outage", "",
              f"`spooled`, 1 KiB, oha at 3000 req/s with 32 connections for 20 s; the broker process stops after "
              f"{outage['broker_down_from_second']} s. RSS each second (MiB): {', '.join(str(x) for x in rss)}. "
              f"Answers: {outage['status_codes']}."]
if burst:
    fill, live = burst["fill"], burst["live"]
    lines += ["", "## Burst into a broker that is down", "",
              f"`spooled`, dedupe on: {burst['events']:,} distinct signed 1 KiB events from 64 connections while "
              f"`dev-broker` refuses connections (SIGUSR1): taken at {fill['rps']:.0f} req/s in {burst['fill_seconds']:.0f} s "
              f"(p99 {fill['p99_ms']:.1f} ms, non-2xx {fill['not_ok']}); spool depth then {burst['depth_before']:,}, "
              f"RSS {burst['rss_mb_after_fill']:.1f} MiB. The broker returns (SIGUSR2): the first entry leaves the spool after "
              f"{burst['first_published_after_seconds']} s (librdkafka's reconnect back-off), the spool is empty after "
              f"{burst['drain_seconds']:.1f} s. Meanwhile new events at {burst['live_rate']} req/s from 8 connections were "
              f"answered with p50 {live['p50_ms']:.2f} ms, p99 {live['p99_ms']:.2f} ms, p99.9 {live['p999_ms']:.2f} ms "
              f"({live['ok']} answered 2xx, {live['not_ok']} not): a new event waits for its own commit, never behind the backlog. "
              f"Peak RSS over the whole run: {burst['peak_rss_mb']:.1f} MiB."]
shared = r.get("shared_index", {})
if shared.get("runs"):
    runs = shared["runs"]
    lines += ["", "## Shared dedupe index (issue 15)", "",
              "`spooled` in the default configuration (dedupe on, every request a distinct, correctly signed "
              "1 KiB event from `examples/signed_load`), with and without `dedupe.shared` on a local redis-server, "
              f"{runs[0]['concurrency']} connections, alternating runs:", "",
              "| contender | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | peak RSS MiB | CPU cores |",
              "|---|---|---|---|---|---|---|---|"]
    for x in runs:
        lines.append(f"| {x['contender']} | {x['rps']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['p999_ms']:.2f} | "
                     f"{x['not_ok']} | {x['peak_rss_mb']:.1f} | {x['cpu_cores']:.2f} |")
    rates = lambda name: [x["rps"] for x in runs if x["contender"] == name]
    local, with_redis = rates(runs[0]["contender"]), rates(runs[1]["contender"])
    if local and with_redis:
        ratio = sum(with_redis) / len(with_redis) / (sum(local) / len(local))
        lines += ["", f"With the shared index `spooled` did **{ratio * 100:.0f} %** of its rate without it "
                  f"(means of the runs above). The same contender ranged {min(local):.0f}–{max(local):.0f} req/s "
                  f"without and {min(with_redis):.0f}–{max(with_redis):.0f} with the index in this run: read the "
                  "ratio against that spread."]
elif shared.get("skipped"):
    lines += ["", "## Shared dedupe index (issue 15)", "", f"Not measured: {shared['skipped']}."]
findings = os.path.join(ROOT, "bench", "findings.md")
if os.path.exists(findings):
    lines += ["", open(findings).read().rstrip()]
open(os.path.join(ROOT, "BENCHMARKS.md"), "w").write("\n".join(lines) + "\n")
print("wrote BENCHMARKS.md")
