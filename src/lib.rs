//! eduzz-kafka-bridge: webhooks in, Kafka out, nothing lost in between.
//!
//! Follow one webhook through the modules:
//!
//! [`http`] (listener, limits) → [`source`] (authentication + envelope → [`source::Event`])
//! → [`route`] (topic and key, or drop) → [`sink`] (what the ack mode promises) →
//! [`spool`] (durable, deduplicated) → [`publish`] (the producer and the spool's drain).
//!
//! Beside them: [`config`] (typed settings), [`metrics`], [`app`] (wiring and shutdown
//! order), [`broker`] (the embedded development broker) and [`cli`].

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod http;
pub mod message;
pub mod metrics;
pub mod publish;
pub mod route;
pub mod secret;
pub mod sink;
pub mod slugs;
pub mod source;
pub mod spool;
pub mod telemetry;
pub mod topic;
