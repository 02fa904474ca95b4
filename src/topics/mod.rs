//! One home for topics: which topics the bridge writes, with what partitions, replication and
//! configs, and whether each is ready to be written.
//!
//! Routing ([`crate::route`]) decides a message's topic name; this module owns the rest of a
//! topic's life:
//! - [`settings`]: `[topics]` and the merging of a rule's overrides onto it;
//! - [`layout`]: the spec of every topic a config writes ([`TopicLayout`]), checked once;
//! - `budget`: how many topics senders can make the bridge create;
//! - [`plan`]: what `topics plan` / `topics apply` would change on the cluster;
//! - [`provision`]: creating each topic before its first write, in `serve`;
//! - [`Topics`]: what the drain and the ack modes ask before they write ("is this topic
//!   ready?", "wake me when one is").
//!
//! Where it sits: above [`crate::kafka`], whose admin client it drives, and below routing and
//! the delivery modes, which ask it. The router spends the budget and the delivery modes ask
//! [`Topics`], so this module must not name either: it knows routing only through
//! [`layout::RouteRules`], a trait the router implements, and the producer knows nothing of
//! topic lifecycle.

pub(crate) mod budget;
pub mod layout;
pub mod plan;
pub mod provision;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::event::{Message, TopicName};
use crate::kafka::admin::Admin;
pub use layout::{TopicLayout, TopicSpecs};
use provision::Provisioner;

/// Whether topics are ready to be written: always, when `topics.provision` is off (the
/// cluster's auto-creation or an operator makes them); once created, when it is on. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct Topics {
    provisioner: Option<Arc<Provisioner>>,
}

impl Topics {
    /// Topics are not provisioned: every topic counts as ready.
    pub fn unprovisioned() -> Topics {
        Topics::default()
    }

    /// Each topic is created through `admin` with the spec `specs` give it, before its first
    /// write.
    pub fn provisioned(admin: Admin, specs: Arc<dyn TopicSpecs>) -> Topics {
        Topics {
            provisioner: Some(Provisioner::new(admin, specs)),
        }
    }

    /// Whether `msg`'s topic can be written now (starts making it ready if not).
    pub(crate) fn ready_for(&self, msg: &Message) -> bool {
        self.provisioner.as_ref().is_none_or(|p| p.ready_for(msg))
    }

    /// Whether `topic`, written for `slug` from `source`, can be written now (starts making it
    /// ready if not).
    pub(crate) fn ready_for_topic(&self, topic: &TopicName, source: &str, slug: &str) -> bool {
        self.provisioner
            .as_ref()
            .is_none_or(|p| p.ready_for_topic(topic, source, slug))
    }

    /// Whether `topic` is known ready.
    pub(crate) fn is_ready(&self, topic: &str) -> bool {
        self.provisioner.as_ref().is_none_or(|p| p.is_ready(topic))
    }

    /// Changes each time a topic becomes ready; `None` without provisioning.
    pub(crate) fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.provisioner.as_ref().map(|p| p.subscribe())
    }

    /// Waits up to `timeout` for `msg`'s topic to be ready.
    pub(crate) async fn wait_ready(&self, msg: &Message, timeout: Duration) -> bool {
        match &self.provisioner {
            None => true,
            Some(p) => p.wait_ready(msg, timeout).await,
        }
    }

    /// Ends provisioning in the background (at shutdown).
    pub(crate) fn stop(&self) {
        if let Some(p) = &self.provisioner {
            p.stop();
        }
    }
}
