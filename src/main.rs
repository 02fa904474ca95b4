#![warn(clippy::too_many_lines)]

use clap::Parser;

/// mimalloc: the request path allocates small, short-lived buffers on several threads, where
/// glibc's allocator showed up at ~14 % of CPU in profiles (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Fault points named in FAILPOINTS (tests only: see the `fault-points` feature).
    #[cfg(feature = "fault-points")]
    let _faults = fail::FailScenario::setup();
    let cli = eduzz_kafka_bridge::cli::Cli::parse();
    std::process::exit(eduzz_kafka_bridge::cli::run(cli));
}
