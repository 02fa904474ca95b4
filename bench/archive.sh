#!/usr/bin/env bash
# The archive's cost and the replay's speed (bench/archive.py): about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin eduzz-kafka-bridge --example signed_load
python3 bench/archive.py
