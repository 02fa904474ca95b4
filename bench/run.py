#!/usr/bin/env python3
"""Side-by-side load benchmark of eduzz-kafka-bridge (see bench/run.sh and BENCHMARKS.md).

In one run on one machine it measures the limit (a bare hyper server, examples/bare_hyper.rs)
and the bridge in each ack mode, posting a real, correctly signed Eduzz payload with oha, over
a sweep of concurrency and body size. A fresh server process serves each point, so peak RSS
(VmHWM) and CPU time belong to that point alone. The broker is the development broker
(librdkafka's mock cluster) in its own process.

The contenders: `bare` (examples/bare_hyper.rs), `kafka` (examples/kafka_limit.rs: hyper and the
idempotent producer, nothing else) and the bridge in each ack mode. Extra runs: p99 of `spooled`
at half of its own peak rate, RSS during a broker outage, every contender in the default
configuration (dedupe on, distinct signed events from examples/signed_load.rs), a burst of
500 000 events into a broker that is down and then returns, the shared dedupe index, and the
spool benchmark (append and drain rates). Results go to bench/out/results.json; BENCHMARKS.md
and the plots are written from them.
"""
import hashlib, hmac, json, os, platform, shutil, signal, socket, subprocess, sys, time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.path.join(ROOT, "target", "release", "eduzz-kafka-bridge")
BARE = os.path.join(ROOT, "target", "release", "examples", "bare_hyper")
KAFKA_LIMIT = os.path.join(ROOT, "target", "release", "examples", "kafka_limit")
SPOOL_BENCH = os.path.join(ROOT, "target", "release", "examples", "spool_bench")
PLOT = os.path.join(ROOT, "target", "release", "examples", "bench_plot")
SIGNED_LOAD = os.path.join(ROOT, "target", "release", "examples", "signed_load")
OHA = os.environ.get("OHA", "oha")
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8,32,64,256").split(",")]
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1024,16384,262144").split(",")]
CONTENDERS = [c for c in os.environ.get("BENCH_CONTENDERS", "bare,kafka,received,spooled,published").split(",") if c]
SECRET = b"bench-secret"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def payload(size):
    """A real Eduzz envelope (docs' shape), padded in data to `size` bytes."""
    doc = {
        "id": "bench0000000000000000000",
        "event": "nutror.lesson_started",
        "data": {
            "producer": {"email": "fulano@eduzz.com", "name": "Fulano da Silva"},
            "learner": {"email": "learner@eduzz.com", "name": "Ciclano da Silva"},
            "course": {"hash": "4bba1d18c02755a13ee97521ae61958c3cf9e665", "title": "Título do Curso"},
            "lesson": {"id": "3866", "title": "Título da Aula"},
            "createdAt": "2023-09-25T19:18:29Z",
            "notes": "",
        },
        "sentDate": "2024-02-29T14:33:02.020Z",
    }
    base = len(json.dumps(doc, ensure_ascii=False).encode())
    doc["data"]["notes"] = "x" * max(0, size - base)
    body = json.dumps(doc, ensure_ascii=False).encode()
    return body, hmac.new(SECRET, body, hashlib.sha256).hexdigest()


def proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss, hwm


class Server:
    """`dedupe`: None (off: oha repeats one body), "local" (each replica's spool), or a Redis
    URL (local + the shared index)."""

    def __init__(self, contender, brokers, port, dedupe=None, admin_port=None, archive=False, extra=""):
        self.port = port
        admin = f"127.0.0.1:{admin_port}" if admin_port else ""
        if dedupe is None:
            dedupe_toml = """# oha posts one body over and over: with dedupe on, every request after the first would be
# a cheap duplicate. Off, each request is a real spool write. (Dedupe's cost: spool_bench.)
enabled = false"""
        elif dedupe == "local":
            dedupe_toml = "enabled = true"
        else:
            dedupe_toml = f'enabled = true\nshared = "{dedupe}"'
        if contender == "bare":
            cmd = [BARE, f"127.0.0.1:{port}"]
        elif contender == "kafka":
            cmd = [KAFKA_LIMIT, f"127.0.0.1:{port}", brokers]
        else:
            spool = os.path.join(OUT, f"spool-{contender}-{port}")
            shutil.rmtree(spool, ignore_errors=True)
            self.spool = spool
            config = os.path.join(OUT, f"bridge-{contender}-{port}.toml")
            with open(config, "w") as f:
                f.write(f"""
[server]
listen = "127.0.0.1:{port}"
max_connections = 8192
max_in_flight_requests = 8192
# Every connection of the load generator comes from 127.0.0.1, like a load balancer's: the
# per-address limit on idle connections (64) would close most of them at 256 connections.
max_idle_per_client = 8192
[admin]
listen = "{admin}"
[kafka]
brokers = "{brokers}"
[delivery]
ack = "{contender}"
[spool]
dir = "{spool}"
max_bytes = 17179869184
[dedupe]
{dedupe_toml}
[log]
filter = "warn"
[archive]
# Off unless a point measures it (bench/archive.py): the other points stay comparable with
# runs from before the archive existed.
enabled = {"true" if archive else "false"}
[topics]
# dev-broker is librdkafka's mock cluster: it answers no admin requests, so topics are left
# to its auto-creation.
provision = false
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = {{ type = "hmac-sha256", secrets = ["bench-secret"] }}
{extra}
""")
            cmd = [BIN, "--config", config, "serve"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "spool", None):
            shutil.rmtree(self.spool, ignore_errors=True)
            os.remove(self.spool.replace("spool-", "bridge-", 1) + ".toml")


def oha(port, conc, body_file, signature, seconds, rate=None):
    cmd = [OHA, "-z", f"{seconds}s", "-c", str(conc), "--no-tui", "--output-format", "json",
           "-m", "POST", "-T", "application/json", "-H", f"x-signature: {signature}",
           "-D", body_file, f"http://127.0.0.1:{port}/webhooks/eduzz"]
    if rate:
        cmd[1:1] = ["-q", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def measure(contender, brokers, size, conc, body_file, signature, seconds=SECONDS, rate=None):
    port = free_port()
    server = Server(contender, brokers, port)
    try:
        oha(port, conc, body_file, signature, 1)  # warm up
        cpu0, _, _ = proc_stats(server.proc.pid)
        t0 = time.time()
        r = oha(port, conc, body_file, signature, seconds, rate)
        elapsed = time.time() - t0
        cpu1, rss, hwm = proc_stats(server.proc.pid)
    finally:
        server.stop()
    codes = r.get("statusCodeDistribution", {})
    ok = sum(n for c, n in codes.items() if c.startswith("2"))
    # oha cancels the requests still open when the duration ends: not the server's failures.
    errors = {k: n for k, n in r.get("errorDistribution", {}).items() if "deadline" not in k}
    total = sum(codes.values()) + sum(errors.values())
    p = r["latencyPercentiles"]
    point = {
        "contender": contender, "size": size, "concurrency": conc,
        "rps": ok / r["summary"]["total"] if r["summary"]["total"] else 0.0,
        "p50_ms": (p["p50"] or 0) * 1000, "p99_ms": (p["p99"] or 0) * 1000,
        "p999_ms": (p["p99.9"] or 0) * 1000,
        "ok": ok, "not_ok": total - ok,
        "peak_rss_mb": hwm, "cpu_cores": (cpu1 - cpu0) / elapsed,
        "rate": rate,
    }
    print(json.dumps(point), flush=True)
    return point


def signed_load_cmd(port, conc, seconds, total=None, rate=None, first_id=0):
    cmd = [SIGNED_LOAD, f"http://127.0.0.1:{port}/webhooks/eduzz", SECRET.decode(), str(conc), str(seconds)]
    env = dict(os.environ, LOAD_FIRST_ID=str(first_id))
    if total:
        env["LOAD_TOTAL"] = str(total)
    if rate:
        env["LOAD_RATE"] = str(rate)
    return cmd, env


def signed_load(port, conc, seconds, **kw):
    cmd, env = signed_load_cmd(port, conc, seconds, **kw)
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)


def measure_signed(contender, brokers, conc, dedupe, name=None):
    """One point under examples/signed_load: a fresh server, a warm-up with ids of its own (so
    the measured events are all new), then SECONDS of load, with the server's CPU and peak RSS."""
    port = free_port()
    server = Server(contender, brokers, port, dedupe=dedupe)
    try:
        signed_load(port, conc, 1, first_id=10**9)  # warm up
        cpu0, _, _ = proc_stats(server.proc.pid)
        t0 = time.time()
        r = signed_load(port, conc, SECONDS)
        cpu1, _, hwm = proc_stats(server.proc.pid)
        r.update({"contender": name or contender, "concurrency": conc, "peak_rss_mb": hwm,
                  "cpu_cores": (cpu1 - cpu0) / (time.time() - t0)})
    finally:
        server.stop()
    print(json.dumps(r), flush=True)
    return r


def default_config(brokers, sizes=(1024,), concurrency=(32, 64)):
    """Every contender in the default configuration: dedupe on, every request a distinct,
    correctly signed event (examples/signed_load), the same generator for the limit too."""
    points = []
    for size in sizes:
        for conc in concurrency:
            for contender in CONTENDERS:
                dedupe = None if contender in ("bare", "kafka") else "local"
                r = measure_signed(contender, brokers, conc, dedupe)
                r["size"] = size
                points.append(r)
    return points


def spool_depth(admin_port):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("eduzz_bridge_spool_depth "):
                return int(float(line.split()[1]))
    return None


def burst(events=500_000, live_rate=1000, live_seconds=10):
    """A burst of `events` distinct signed events into `spooled` while the broker is down,
    then the broker returns: how long the backlog takes to drain, and the answer latency of
    new events posted at `live_rate` while it drains."""
    broker, brokers = start_broker()
    port, admin_port = free_port(), free_port()
    server = Server("spooled", brokers, port, dedupe="local", admin_port=admin_port)
    wait_port(admin_port)
    out = {"events": events, "live_rate": live_rate}
    try:
        signed_load(port, 8, 1, first_id=10**9)  # the topic exists before the outage
        broker.send_signal(signal.SIGUSR1)
        time.sleep(1)
        t0 = time.time()
        out["fill"] = signed_load(port, 64, 900, total=events, first_id=0)
        out["fill_seconds"] = time.time() - t0
        out["depth_before"] = spool_depth(admin_port)
        out["rss_mb_after_fill"] = proc_stats(server.proc.pid)[1]
        cmd, env = signed_load_cmd(port, 8, live_seconds, rate=live_rate, first_id=2 * 10**9)
        broker.send_signal(signal.SIGUSR2)
        up = time.time()
        live = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        samples, first_drop = [], None
        while time.time() - up < 300:
            depth = spool_depth(admin_port)
            t = round(time.time() - up, 2)
            samples.append((t, depth))
            if first_drop is None and depth is not None and depth < out["depth_before"]:
                first_drop = t
            if depth == 0:
                break
            time.sleep(0.2)
        out["drain_seconds"] = samples[-1][0]
        out["first_published_after_seconds"] = first_drop
        out["depth_samples"] = samples
        out["live"] = json.loads(live.communicate()[0])
        out["peak_rss_mb"] = proc_stats(server.proc.pid)[2]
    finally:
        server.stop()
        broker.send_signal(signal.SIGTERM)
        broker.wait()
    print(json.dumps({k: v for k, v in out.items() if k != "depth_samples"}), flush=True)
    return out


def shared_index_cost(brokers, conc=64, rounds=3):
    """`spooled` in the default configuration (dedupe on, every request a distinct signed
    event) with and without the shared dedupe index on a local redis-server, alternating."""
    if shutil.which("redis-server") is None:
        return {"skipped": "redis-server is not installed"}
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(rport)
    runs = []
    try:
        for _ in range(rounds):
            for name, dedupe in (("spooled, dedupe local", "local"),
                                 ("spooled, dedupe shared (Redis)", f"redis://127.0.0.1:{rport}/")):
                runs.append(measure_signed("spooled", brokers, conc, dedupe, name=name))
    finally:
        redis.terminate()
        redis.wait()
    return {"runs": runs}


def outage_rss(size, body_file, signature):
    """RSS of `spooled` while the broker is gone for most of the run."""
    broker, brokers = start_broker()
    port = free_port()
    server = Server("spooled", brokers, port)
    samples = []
    load = subprocess.Popen([OHA, "-z", "20s", "-c", "32", "-q", "3000", "--no-tui", "--output-format", "json",
                             "-m", "POST", "-T", "application/json", "-H", f"x-signature: {signature}",
                             "-D", body_file, f"http://127.0.0.1:{port}/webhooks/eduzz"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for second in range(21):
        if second == 4:
            broker.send_signal(signal.SIGTERM)
            broker.wait()
        samples.append(round(proc_stats(server.proc.pid)[1], 1))
        time.sleep(1)
    r = json.loads(load.communicate()[0])
    server.stop()
    codes = r.get("statusCodeDistribution", {})
    return {"rss_mb_each_second": samples, "broker_down_from_second": 4,
            "accepted": sum(n for c, n in codes.items() if c.startswith("2")),
            "status_codes": codes}


def start_broker():
    """A `dev-broker` process and its address."""
    broker = subprocess.Popen([BIN, "dev-broker"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return broker, broker.stdout.readline().strip()


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "kernel": platform.release(), "oha": subprocess.run([OHA, "--version"], capture_output=True, text=True).stdout.strip()}


def main():
    os.makedirs(OUT, exist_ok=True)
    broker, brokers = start_broker()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "seconds_per_point": SECONDS, "points": []}
    try:
        bodies = {}
        for size in SIZES:
            body, sig = payload(size)
            path = os.path.join(OUT, f"payload-{size}.json")
            with open(path, "wb") as f:
                f.write(body)
            bodies[size] = (path, sig)
        for size in SIZES:
            for conc in CONCURRENCY:
                for contender in CONTENDERS:
                    results["points"].append(measure(contender, brokers, size, conc, *bodies[size]))
        small = SIZES[0]
        spooled = [p for p in results["points"] if p["contender"] == "spooled" and p["size"] == small]
        if spooled:
            peak = max(p["rps"] for p in spooled)
            results["half_peak"] = measure("spooled", brokers, small, 64, *bodies[small], rate=int(peak / 2))
        results["outage"] = outage_rss(small, *bodies[small])
        results["default_config"] = default_config(brokers)
        results["burst"] = burst()
        results["shared_index"] = shared_index_cost(brokers)
        out = subprocess.run([SPOOL_BENCH, brokers, "200000", "1024", "256"], capture_output=True, text=True, check=True)
        results["spool"] = json.loads(out.stdout)
        print(json.dumps(results["spool"]), flush=True)
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait()
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
