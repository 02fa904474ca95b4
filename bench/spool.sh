#!/usr/bin/env bash
# The spool's targets (issue 26, bench/spool.py): the disk's fdatasync, `bare`, `received` and
# `spooled` at 8 and 64 connections in the default configuration, 16 and 256 KiB bodies, and
# spool_bench's append and drain rates, in one run; about 8 minutes on 2 cores (BURST=1 adds
# the 500 000-event burst, about 3 more).
set -euo pipefail
cd "$(dirname "$0")/.."
oha_root="$HOME/.cache/eduzz-kafka-bridge/oha"
if [ ! -x "$oha_root/bin/oha" ]; then
  cargo install oha --version 1.16.0 --locked --root "$oha_root"
fi
export OHA="$oha_root/bin/oha"
cargo build --release --locked --bin eduzz-kafka-bridge --example bare_hyper --example spool_bench --example signed_load
python3 bench/spool.py
