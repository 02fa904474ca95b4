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
rows = []
bare = point("bare", small, 64)


def ratio(contender):
    p = point(contender, small, 64)
    return p["rps"] / bare["rps"] if p and bare and bare["rps"] else None


def verdict(ok):
    return "met" if ok else "**missed**"


spooled_peak_rss = max((p["peak_rss_mb"] for p in pts if p["contender"] == "spooled" and p["size"] == small), default=None)
half = r.get("half_peak")
outage = r.get("outage", {})
rss = outage.get("rss_mb_each_second", [])
spool = r.get("spool", {})
targets = []
if ratio("spooled") is not None:
    targets.append(("`spooled` ≥ 50 % of bare hyper req/s at 64 connections (1 KiB)", f"{ratio('spooled')*100:.0f} %", verdict(ratio("spooled") >= 0.5)))
if ratio("received") is not None:
    targets.append(("`received` ≥ 70 % of bare hyper req/s at 64 connections (1 KiB)", f"{ratio('received')*100:.0f} %", verdict(ratio("received") >= 0.7)))
if half:
    targets.append((f"`spooled` p99 ≤ 5 ms at half its peak rate ({half['rate']} req/s, 64 conns)", f"{half['p99_ms']:.2f} ms (achieved {half['rps']:.0f} req/s)", verdict(half["p99_ms"] <= 5)))
if spooled_peak_rss is not None:
    targets.append(("Peak RSS ≤ 64 MiB under sustained peak load (`spooled`, 1 KiB, any concurrency)", f"{spooled_peak_rss:.1f} MiB", verdict(spooled_peak_rss <= 64)))
if rss:
    down = outage["broker_down_from_second"]
    # While the broker is away, RSS climbs as the in-flight window and the spool's page cache
    # fill, then must stay flat: growth over the second half of the outage is what would
    # grow without bound.
    half = rss[down + (len(rss) - down) // 2:]
    growth = max(half) - min(half)
    targets.append(("RSS flat during a broker outage (3000 req/s, broker gone from second 4 to 20)",
                    f"{rss[down]:.1f} → {max(rss):.1f} MiB as buffers fill, then {half[0]:.1f} → {half[-1]:.1f} MiB over the last {len(half)} s",
                    verdict(growth <= 2 and max(rss) <= 64)))
if spool:
    targets.append(("Spool drain ≥ 100 k events/s (200 k × 1 KiB to the broker)", f"{spool['drain_per_sec']/1000:.0f} k/s", verdict(spool["drain_per_sec"] >= 100_000)))

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
lines += ["", "![throughput](bench/throughput.png)", "", "![p99](bench/p99.png)", "", "## All points", "",
          "Every request is a real Eduzz payload with a valid `x-signature`; 2xx answers only are counted. "
          "`bare` = examples/bare_hyper.rs (reads the body, answers 200).", "",
          "| body | conns | contender | req/s | % of bare | p50 ms | p99 ms | p99.9 ms | non-2xx | peak RSS MiB | CPU cores |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
for p in sorted(pts, key=lambda p: (p["size"], p["concurrency"], ["bare", "received", "spooled", "published"].index(p["contender"]) if p["contender"] in ["bare", "received", "spooled", "published"] else 9)):
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
