//! eduzz-kafka-bridge: webhooks in, Kafka out, nothing lost in between.
//!
//! Follow one webhook through the modules, each talking only to those below it:
//!
//! [`http`] (listeners, limits, answers) → [`pipeline`] (one delivery in, one outcome out) →
//! [`source`] (authentication + envelope) / [`route`] (topic and key, or drop) /
//! [`delivery`] (what the ack mode promises; the spool's drain) → [`dedupe`] (the fleet's
//! shared index) / [`spool`] (durable, deduplicated) / [`kafka`] (producer, readers, topic
//! names, the embedded broker) → [`event`] (the data that travels).
//!
//! Beside them: [`config`] (composes every component's settings and builds them once),
//! [`metrics`], [`telemetry`], [`app`] (wiring and shutdown order) and [`cli`]; and the small
//! leaves [`problem`] (config problems with their keys), [`retry`] (back-off and outages),
//! [`secret`], [`cidr`], [`slugs`].

#![warn(clippy::too_many_lines)]
#![warn(unreachable_pub)]

pub mod app;
pub mod archive;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod delivery;
pub mod event;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod problem;
#[cfg(test)]
mod properties;
pub mod retry;
pub mod route;
pub mod secret;
pub(crate) mod slugs;
pub mod source;
pub mod spool;
pub mod telemetry;
pub mod topics;
