#![warn(clippy::too_many_lines)]

use clap::Parser;

/// mimalloc: the request path allocates small, short-lived buffers on several threads, where
/// glibc's allocator showed up at ~14 % of CPU in profiles (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (its place in `mi_option_e`, the same in mimalloc 2
/// and 3; the crate names no constant for it). The test below checks the place by its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed pages before it gives them back to the system, unless the
/// operator says otherwise with `MIMALLOC_PURGE_DELAY`. mimalloc 3 keeps them 1 s; a burst that
/// frees the drain's window and the request buffers many times a second then holds on to all
/// of it: the 500 000-event burst peaked at 155 MiB with 1 s and 132 MiB with 10 ms (mimalloc
/// 2's default), for the same request rate (BENCHMARKS.md, issue 26). 0 costs 5-10 % of the
/// rate at 8 connections for little more memory back.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Whether the operator set the purge delay, under either of the names mimalloc reads (the
/// current one and the older `reset_delay`), in any case, as mimalloc compares them.
fn purge_delay_set_by_operator() -> bool {
    std::env::vars_os().any(|(name, _)| {
        name.to_str().is_some_and(|name| {
            ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
                .iter()
                .any(|known| name.eq_ignore_ascii_case(known))
        })
    })
}

fn tune_allocator() {
    if !purge_delay_set_by_operator() {
        // SAFETY: sets one option's value; mimalloc reads it at its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

fn main() {
    tune_allocator();
    // Fault points named in FAILPOINTS (tests only: see the `fault-points` feature).
    #[cfg(feature = "fault-points")]
    let _faults = fail::FailScenario::setup();
    let cli = eduzz_kafka_bridge::cli::Cli::parse();
    std::process::exit(eduzz_kafka_bridge::cli::run(cli));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_the_option_set_and_operators_can_still_set_their_own() {
        // SAFETY: reads options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if !purge_delay_set_by_operator() {
            assert_eq!(
                get(),
                1000,
                "mimalloc 3's default purge delay: the option's place"
            );
        }
        let before = get();
        tune_allocator();
        let expected = if !purge_delay_set_by_operator() {
            PURGE_DELAY_MS
        } else {
            before
        };
        assert_eq!(get(), expected);
    }
}
