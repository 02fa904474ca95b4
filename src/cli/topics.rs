//! `topics plan` and `topics apply`: the topics the routes write, against what the cluster has.
//!
//! Every topic the rules make of the documented slug catalogue is listed with what would
//! change: missing topics are created, partition counts below the wanted one are raised.
//! Nothing is ever deleted and no partition count is lowered (Kafka cannot lower one, and a
//! delete loses data); config drift is reported, not changed, because an operator may have
//! tuned a topic on purpose. Raising the partitions of a topic moves keys to other
//! partitions, so per-key order holds only within the old layout and within the new one:
//! `plan` says so for every raise.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::event::TopicName;
use crate::kafka::admin::{Admin, AdminError, Created, Existing};
use crate::topics::plan::{self, changes, describe, Change, DynamicRule, WantedTopic};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Show what exists on the cluster and what `apply` would change.
    Plan(TopicsArgs),
    /// Create missing topics and raise partition counts (never deletes, never lowers).
    Apply(TopicsArgs),
}

#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// Brokers to ask (default: kafka.brokers of the config).
    #[arg(long)]
    brokers: Option<String>,
}

pub(super) fn run(config: &Path, command: TopicsCommand) -> anyhow::Result<i32> {
    let (args, apply) = match command {
        TopicsCommand::Plan(a) => (a, false),
        TopicsCommand::Apply(a) => (a, true),
    };
    let config = super::load(config)?;
    let Some(brokers) = args.brokers.or(config.kafka.brokers.clone()) else {
        anyhow::bail!("kafka.brokers is not set: the embedded broker lives inside `serve` (which creates each topic on its first write); pass --brokers to plan against another cluster");
    };
    let admin = Admin::new(&config.kafka.connect(&brokers), None)?;
    let (mut wanted, dynamic) = wanted(&config);
    wanted.sort_by(|a, b| a.topic.cmp(&b.topic));
    super::runtime()?.block_on(async {
        say!(
            "topics of {} on {brokers}",
            if apply { "apply" } else { "plan" }
        );
        let width = wanted
            .iter()
            .map(|w| w.topic.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut tally = Tally::default();
        for w in &wanted {
            let existing = match admin.describe(&w.topic, !w.spec.config.is_empty()).await {
                Ok(e) => e,
                Err(e) => {
                    say!(
                        "  {:width$}  cannot read: {}",
                        w.topic,
                        crate::problem::with_causes(&e)
                    );
                    tally.failed += 1;
                    continue;
                }
            };
            let changes = changes(&w.spec, existing.as_ref());
            report(w, existing.as_ref(), &changes, width, &mut tally);
            if apply {
                for change in &changes {
                    tally.applied(&w.topic, width, act(&admin, w, change).await);
                }
            }
        }
        dynamic_rules(&dynamic);
        tally.summary(apply);
        Ok(if tally.failed > 0 { 1 } else { 0 })
    })
}

/// Every topic the routes write for the documented slugs, the overflow topic, the dead
/// letters; and the rules that name topics after slugs.
fn wanted(config: &crate::config::Config) -> (Vec<WantedTopic>, Vec<DynamicRule>) {
    let slugs: Vec<(&str, Vec<String>)> = config
        .sources
        .iter()
        .map(|s| {
            let mut slugs = s.format().documented_slugs();
            slugs.retain(|slug| slug != "ping" || s.publish_ping);
            (&*s.name, slugs)
        })
        .collect();
    let (mut wanted, dynamic) = plan::wanted_topics(&config.router, &config.topics, &slugs);
    if let Some(dlq) = &config.delivery.dead_letter_topic {
        wanted.push(WantedTopic {
            topic: TopicName::from(dlq.as_str()),
            spec: Arc::clone(config.topics.defaults()),
            rule: "delivery.dead_letter_topic".into(),
            key: "the original key".into(),
        });
    }
    (wanted, dynamic)
}

fn report(
    w: &WantedTopic,
    existing: Option<&Existing>,
    changes: &[Change],
    width: usize,
    tally: &mut Tally,
) {
    let has = existing.map_or("-".to_string(), |e| format!("{} partitions", e.partitions));
    if changes.is_empty() {
        say!("  {:width$}  ok ({has}; {})", w.topic, w.rule);
        tally.ok += 1;
        return;
    }
    say!(
        "  {:width$}  wanted: {} ({}); has: {has}",
        w.topic,
        w.spec.describe(),
        w.rule
    );
    for change in changes {
        say!("  {:width$}    {}", "", describe(change, &w.key));
        tally.count(change);
    }
}

/// Carries out one change; `None` for those `apply` only reports.
async fn act(
    admin: &Admin,
    w: &WantedTopic,
    change: &Change,
) -> Option<Result<String, AdminError>> {
    match change {
        Change::Create => Some(admin.create(&w.topic, &w.spec).await.map(|c| match c {
            Created::Created => format!("created with {}", w.spec.describe()),
            Created::AlreadyThere => "already there (created meanwhile)".into(),
        })),
        Change::Raise { to, .. } => Some(
            admin
                .add_partitions(&w.topic, *to)
                .await
                .map(|()| format!("raised to {to} partitions")),
        ),
        _ => None,
    }
}

/// Rules whose topics are named after slugs, so `serve` also creates topics for slugs first
/// seen at run time.
fn dynamic_rules(dynamic: &[DynamicRule]) {
    if dynamic.is_empty() {
        return;
    }
    say!();
    say!(
        "topics named after slugs first seen at run time (serve creates each on its first write):"
    );
    for d in dynamic {
        say!("  {} \"{}\": {}", d.rule, d.template, d.spec.describe());
    }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    counts: BTreeMap<&'static str, usize>,
    done: usize,
    failed: usize,
}

impl Tally {
    fn count(&mut self, change: &Change) {
        let what = match change {
            Change::Create => "to create",
            Change::Raise { .. } => "to raise",
            Change::MoreThanWanted { .. } => "with more partitions than wanted",
            Change::Drift { .. } => "config drifts",
            Change::ConfigsUnread(_) => "with configs not checked",
        };
        *self.counts.entry(what).or_default() += 1;
    }

    fn applied(&mut self, topic: &str, width: usize, result: Option<Result<String, AdminError>>) {
        match result {
            None => {}
            Some(Ok(what)) => {
                self.done += 1;
                say!("  {topic:width$}    -> {what}");
            }
            Some(Err(e)) => {
                self.failed += 1;
                say!(
                    "  {topic:width$}    -> FAILED: {}",
                    crate::problem::with_causes(&e)
                );
            }
        }
    }

    fn summary(&self, apply: bool) {
        let mut parts = vec![format!("{} ok", self.ok)];
        parts.extend(self.counts.iter().map(|(what, n)| format!("{n} {what}")));
        if apply {
            parts.push(format!("{} changed", self.done));
        }
        if self.failed > 0 {
            parts.push(format!("{} failed", self.failed));
        }
        say!();
        say!("{}", parts.join(", "));
        say!(
            "never done: deleting a topic, lowering a partition count, changing a topic's configs"
        );
    }
}
