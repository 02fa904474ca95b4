//! Creating each topic before its first write, in `serve`.
//!
//! The first message for a topic starts its provisioning in the background: ask the cluster
//! whether it exists, create it with its [`TopicSpec`] if not. Until the topic is ready its
//! messages wait (in the spool, in order, like those of a topic whose partitions have no
//! leader); other topics go on. A refusal (ACLs, a policy) gets one clear log line and is
//! retried with backoff, so the events flow once an operator creates the topic or grants the
//! right, and nothing is dead-lettered for a topic that is merely missing.
//!
//! A cluster that cannot create topics through the admin API at all (one that does not
//! implement CreateTopics, or librdkafka's mock cluster reached by address: `dev-broker`) is
//! left to its auto-creation, said once at warn level. One that does not answer CreateTopics
//! in time is not taken for that (a real cluster between controllers looks the same for a
//! while): a topic its metadata shows is written as it is, a missing one waits, and the log
//! says the admin request went unanswered rather than that the cluster is unreachable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::layout::TopicSpecs;
use crate::event::{Message, TopicName};
use crate::kafka::admin::{Admin, AdminError, Created, TopicSpec};
use crate::retry::Backoff;

/// First wait before another attempt at a topic that could not be made ready (doubles).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts at a topic that could not be made ready.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The topics known ready, and the background work on the others.
pub struct Provisioner {
    admin: Admin,
    specs: Arc<dyn TopicSpecs>,
    /// Topics ready (`true`) or being provisioned (`false`).
    topics: Mutex<HashMap<TopicName, bool>>,
    /// Bumped each time a topic becomes ready, to wake whoever waits for one.
    ready: watch::Sender<u64>,
    /// The cluster has no CreateTopics: everything is left to auto-creation.
    unsupported: AtomicBool,
    stop: CancellationToken,
}

impl Provisioner {
    pub fn new(admin: Admin, specs: Arc<dyn TopicSpecs>) -> Arc<Provisioner> {
        Arc::new(Provisioner {
            admin,
            specs,
            topics: Mutex::default(),
            ready: watch::Sender::new(0),
            unsupported: AtomicBool::new(false),
            stop: CancellationToken::new(),
        })
    }

    /// Whether `msg`'s topic can be written now; if it is not known yet, starts making it
    /// ready in the background.
    pub fn ready_for(self: &Arc<Self>, msg: &Message) -> bool {
        self.ready_for_topic(&msg.topic, &msg.source, &msg.slug)
    }

    /// Whether `topic`, written for `slug` from `source`, can be written now; as
    /// [`Provisioner::ready_for`].
    pub fn ready_for_topic(self: &Arc<Self>, topic: &TopicName, source: &str, slug: &str) -> bool {
        if self.unsupported.load(Ordering::Relaxed) {
            return true;
        }
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ready) = topics.get(topic) {
            return *ready;
        }
        topics.insert(topic.clone(), false);
        let spec = self.specs.spec(source, slug, topic);
        tokio::spawn(self.clone().provision(topic.clone(), spec));
        false
    }

    /// Whether `topic` is known ready (never starts anything).
    pub fn is_ready(&self, topic: &str) -> bool {
        self.unsupported.load(Ordering::Relaxed)
            || self
                .topics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(topic)
                .copied()
                .unwrap_or(false)
    }

    /// Changes each time a topic becomes ready.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    /// Waits up to `timeout` for `msg`'s topic to be ready (for the ack modes without a
    /// spool, where the request itself waits).
    pub async fn wait_ready(self: &Arc<Self>, msg: &Message, timeout: Duration) -> bool {
        let mut changed = self.subscribe();
        let wait = async {
            while !self.ready_for(msg) {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Ends the background work (at shutdown).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Makes `topic` ready, retrying with backoff until it is (or the bridge stops).
    async fn provision(self: Arc<Self>, topic: TopicName, spec: Arc<TopicSpec>) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            let attempt = backoff.failures() + 1;
            let wait = match self.ensure(&topic, &spec).await {
                Ok(()) => return self.mark_ready(&topic),
                Err(e) if e.is_unsupported() => {
                    if !self.unsupported.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "this cluster cannot create topics through the admin API; topics are left to its auto-creation, with its default partition count (set topics.provision = false to say so in the config)");
                    }
                    return self.mark_ready(&topic);
                }
                Err(e) => {
                    let wait = backoff.fail();
                    log_failure(&topic, &spec, &e, attempt, wait);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Creates `topic`, or finds it there already.
    ///
    /// Creation is asked first: "already exists" is an answer too, and asking for the
    /// metadata of a missing topic first could race the broker's auto-creation. Only when
    /// creation is refused is the topic looked up: one an operator made is good enough.
    async fn ensure(&self, topic: &str, spec: &TopicSpec) -> Result<(), AdminError> {
        let refusal = match self.admin.create(topic, spec).await {
            Ok(Created::Created) => {
                tracing::info!(topic, spec = %spec.describe(), "topic created");
                return Ok(());
            }
            Ok(Created::AlreadyThere) => None,
            Err(e) if e.is_unsupported() => return Err(e),
            Err(e) => Some(e),
        };
        match (self.admin.partitions(topic).await, refusal) {
            (Ok(Some(partitions)), _) => {
                if partitions < spec.partitions {
                    tracing::info!(topic, partitions, wanted = spec.partitions, "topic has fewer partitions than its route asks for; `topics plan` shows it, `topics apply` raises it");
                }
                Ok(())
            }
            // A refusal is what to fix; short of one, unanswered metadata means the cluster is
            // out of reach, whatever creation said.
            (Err(e), Some(refusal)) if !refusal.is_refusal() => Err(e),
            (_, Some(refusal)) => Err(refusal),
            (Ok(None), None) => Ok(()),
            (Err(e), None) => Err(e),
        }
    }

    fn mark_ready(&self, topic: &TopicName) {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), true);
        self.ready.send_modify(|n| *n += 1);
    }
}

/// One line when a topic first cannot be made ready, then one every ten attempts.
fn log_failure(topic: &str, spec: &TopicSpec, error: &AdminError, attempt: u32, next: Duration) {
    if attempt != 1 && attempt % 10 != 0 {
        return;
    }
    let refused = error.is_refusal();
    let error = crate::problem::with_causes(error);
    if refused {
        tracing::error!(topic, spec = %spec.describe(), %error, attempt, retry_in = ?next, "cannot create the topic: the cluster refuses (create it, or grant CREATE on it); its events wait in the spool until it exists");
    } else {
        tracing::warn!(topic, %error, attempt, retry_in = ?next, "cannot check or create the topic yet; its events wait in the spool");
    }
}
