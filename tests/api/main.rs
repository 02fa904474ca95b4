//! The black-box tests: the real server on random ports, real payloads posted, read back
//! from Kafka and compared byte for byte. One program (one link, one harness: see
//! [`harness`]); each file is one area of behaviour.

#![warn(clippy::too_many_lines)]

mod common;
mod harness;

mod archive;
mod cli;
mod cloudevents;
mod deploy;
mod durability;
mod fleet;
mod floods;
mod hardening;
mod lifecycle;
mod sender_contract;
mod spool;
mod tansu;
mod topics;
mod tracing;
mod webhooks;

fn main() {
    harness::run(vec![
        ("archive", archive::tests()),
        ("cli", cli::tests()),
        ("cloudevents", cloudevents::tests()),
        ("deploy", deploy::tests()),
        ("durability", durability::tests()),
        ("fleet", fleet::tests()),
        ("floods", floods::tests()),
        ("hardening", hardening::tests()),
        ("lifecycle", lifecycle::tests()),
        ("sender_contract", sender_contract::tests()),
        ("spool", spool::tests()),
        ("tansu", tansu::tests()),
        ("topics", topics::tests()),
        ("tracing", tracing::tests()),
        ("webhooks", webhooks::tests()),
    ]);
}
