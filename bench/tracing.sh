#!/usr/bin/env bash
# What traces cost (bench/tracing.py): `spooled` with tracing off, at 1 % and at 100 %, in one
# run; about 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin eduzz-kafka-bridge --example signed_load
python3 bench/tracing.py
