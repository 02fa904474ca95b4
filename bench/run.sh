#!/usr/bin/env bash
# The benchmark, end to end: builds release binaries, installs oha once, runs every point
# (bench/run.py), draws the plots and writes BENCHMARKS.md. About 25 minutes on 2 cores.
# The shared-dedupe comparison needs redis-server (apt-get install redis-server).
#   BENCH_SECONDS=5 BENCH_CONCURRENCY=1,8,64,256 BENCH_SIZES=1024,16384,262144 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! fc-list 2>/dev/null | grep -q DejaVuSans.ttf && [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  apt-get update -qq && apt-get install -y -qq fonts-dejavu-core
fi
oha_root="$HOME/.cache/eduzz-kafka-bridge/oha"
if [ ! -x "$oha_root/bin/oha" ]; then
  cargo install oha --version 1.16.0 --locked --root "$oha_root"
fi
export OHA="$oha_root/bin/oha"
cargo build --release --locked --bin eduzz-kafka-bridge --example bare_hyper --example kafka_limit --example spool_bench --example bench_plot --example signed_load
python3 bench/run.py
./target/release/examples/bench_plot bench/out/results.json bench
python3 bench/report.py
