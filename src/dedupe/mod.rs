//! Remembering which events were already taken, so a retried delivery is not published twice.
//!
//! Two memories, one question ("was `(source, event id)` taken before?"):
//! - each replica's [spool](crate::spool) remembers what *it* took, in the same transaction
//!   that stores the event (always on with `dedupe.enabled`);
//! - with `dedupe.shared`, the [`SharedIndex`] on Redis remembers what *any* replica took, so
//!   a retry that a load balancer sends to another replica is recognised too.
//!
//! The shared index is asked first and the spool second: a replica that cannot reach Redis
//! still dedupes what reaches it, and marks its events in Redis once Redis is back.

mod shared;

use std::time::Duration;

use serde::Deserialize;

use crate::problem::Problems;
use crate::secret::Secret;
pub use shared::{Claim, SharedIndex, SharedSettings, Ticket};

/// `[dedupe]`: remembering which (source, event id) pairs were already accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupeSettings {
    pub enabled: bool,
    /// How long an accepted id is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered by one replica's spool; the oldest are forgotten first.
    pub max_entries: u64,
    /// A Redis URL (`redis://`, `rediss://`, or `env:NAME` / `file:PATH` holding one) for a
    /// dedupe index shared by every replica; without it each replica dedupes on its own.
    pub shared: Option<Secret>,
    /// How long a replica's claim on an event holds while it stores the event; the claim of a
    /// replica that died meanwhile expires after this, and a retry is then taken.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest one round trip to the shared index may take before it is bypassed (a request
    /// waits up to about twice this for its claim, and as long for its mark).
    #[serde(with = "humantime_serde")]
    pub shared_timeout: Duration,
    /// Prefix of the shared index's keys (one Redis can serve several deployments).
    pub key_prefix: String,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(24 * 3600),
            max_entries: 1_000_000,
            shared: None,
            lease: Duration::from_secs(30),
            shared_timeout: Duration::from_secs(1),
            key_prefix: "eduzz-kafka-bridge:".into(),
        }
    }
}

impl DedupeSettings {
    /// Checks the settings and builds the shared index's settings when one is configured;
    /// problems go to `problems` under `dedupe.…`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<SharedSettings> {
        problems.require(
            !self.enabled || self.max_entries > 0,
            "dedupe.max_entries",
            "must be greater than 0 (or set dedupe.enabled = false)",
        );
        let secret = self.shared.as_ref()?;
        problems.require(self.enabled, "dedupe.shared", "needs dedupe.enabled = true");
        problems.require(
            self.lease >= Duration::from_secs(1),
            "dedupe.lease",
            "must be at least 1s (it must outlast storing an event)",
        );
        problems.require(
            !self.shared_timeout.is_zero() && self.shared_timeout * 4 <= self.lease,
            "dedupe.shared_timeout",
            "must be greater than 0 and at most a quarter of dedupe.lease (a claim waits up to twice it, and so does its mark)",
        );
        let url = problems.check("dedupe.shared", secret.resolve())?;
        let url = String::from_utf8_lossy(secrecy::ExposeSecret::expose_secret(&url));
        problems.check("dedupe.shared", SharedSettings::new(&url, self))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MINIMAL as SOURCE;
    use crate::config::Config;

    fn problems(extra: &str) -> Vec<String> {
        match Config::from_toml(&format!("{SOURCE}\n{extra}")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn a_shared_index_is_built_from_its_url_without_showing_the_password() {
        let c = Config::from_toml(&format!(
            "{SOURCE}\n[dedupe]\nshared = \"redis://:hunter2@redis.internal:6380/1\"\n"
        ))
        .unwrap();
        let described = c.shared_dedupe.unwrap().describe();
        assert!(described.contains("redis.internal:6380"), "{described}");
        assert!(!described.contains("hunter2"), "{described}");
        assert!(Config::from_toml(SOURCE).unwrap().shared_dedupe.is_none());
    }

    #[test]
    fn shared_settings_that_cannot_work_are_refused_with_their_keys() {
        let bad_url = problems("[dedupe]\nshared = \"http://nope\"\n");
        assert!(bad_url[0].starts_with("dedupe.shared:"), "{bad_url:?}");
        let unset = problems("[dedupe]\nshared = \"env:EKB_TEST_NO_SUCH_VARIABLE\"\n");
        assert!(unset[0].contains("EKB_TEST_NO_SUCH_VARIABLE"), "{unset:?}");
        let short = problems("[dedupe]\nshared = \"redis://r\"\nlease = \"500ms\"\n");
        assert!(
            short.iter().any(|p| p.starts_with("dedupe.lease:")),
            "{short:?}"
        );
        let slow = problems("[dedupe]\nshared = \"redis://r\"\nshared_timeout = \"40s\"\n");
        assert!(slow[0].starts_with("dedupe.shared_timeout:"), "{slow:?}");
        let off = problems("[dedupe]\nenabled = false\nshared = \"redis://r\"\n");
        assert!(off[0].starts_with("dedupe.shared:"), "{off:?}");
        // In `published` mode a claim must outlast waiting for Kafka.
        let published = "[delivery]\nack = \"published\"\npublish_timeout = \"45s\"\n";
        let p = problems(&format!("{published}[dedupe]\nshared = \"redis://r\"\n"));
        assert!(p[0].starts_with("dedupe.lease:"), "{p:?}");
        assert!(problems(&format!(
            "{published}[dedupe]\nshared = \"redis://r\"\nlease = \"95s\"\n"
        ))
        .is_empty());
    }
}
