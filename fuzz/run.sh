#!/usr/bin/env bash
# Runs one fuzz target for a while:  fuzz/run.sh envelope_route|webhook [SECONDS=600]
# Seeds come from ../shared/fixtures (or examples/payloads on a plain clone). Needs
# cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets it use the stable toolchain.
# No sanitizer: the code under test is safe Rust, and ASan flags leak into the vendored C
# libraries (zstd) where they break librdkafka's configure step.
# A finding is written to fuzz/artifacts/TARGET/; turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: fuzz/run.sh TARGET [SECONDS]}"
seconds="${2:-600}"
seeds=../../shared/fixtures
[ -d "$seeds" ] || seeds=../examples/payloads
mkdir -p "corpus/$target"
for f in "$seeds"/*.json; do
  name=$(basename "$f")
  if [ "$target" = webhook ]; then
    # First byte: 0 = signed Eduzz delivery, 1 = Toolzz with the right token.
    if grep -q '"slug"' "$f"; then p='\001'; else p='\000'; fi
    { printf "$p"; cat "$f"; } > "corpus/$target/$name"
  else
    cp "$f" "corpus/$target/$name"
  fi
done
export RUSTC_BOOTSTRAP=1
exec cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
  -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1
