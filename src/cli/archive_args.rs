//! What `events find`, `replay` and `dead-letters` share: which cluster, which window of
//! time, which deliveries.

use clap::Args;
use globset::{Glob, GlobMatcher};

use crate::archive::ArchivedDelivery;
use crate::config::Config;
use crate::kafka::Cluster;

/// The cluster to read: `--brokers`, else the config's `kafka.brokers`.
#[derive(Debug, Args, Clone)]
pub(super) struct ClusterArgs {
    /// Bootstrap servers (default: kafka.brokers; the embedded broker of `serve` logs its own).
    #[arg(long)]
    pub brokers: Option<String>,
}

impl ClusterArgs {
    /// The cluster, with the config's client properties (TLS, SASL).
    pub(super) fn cluster(&self, config: &Config) -> anyhow::Result<Cluster> {
        let brokers = self
            .brokers
            .clone()
            .or_else(|| config.kafka.brokers.clone());
        let Some(brokers) = brokers else {
            anyhow::bail!("no cluster to read: set kafka.brokers or pass --brokers (the embedded broker of `serve` logs its address at start)");
        };
        Ok(config.kafka.connect(&brokers))
    }
}

/// Which archived deliveries: by id, slug, source and receive time.
#[derive(Debug, Args, Clone, Default)]
pub(super) struct FilterArgs {
    /// The event's id.
    #[arg(long)]
    pub id: Option<String>,
    /// Slugs, as a glob (`myeduzz.invoice_*`).
    #[arg(long)]
    pub slug: Option<String>,
    /// Received at or after: RFC 3339 (`2026-12-01T00:00:00Z`), a date (`2026-12-01`, UTC),
    /// or a time ago (`36h`).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Received at or before (same forms as --from).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// The source's name.
    #[arg(long)]
    pub source: Option<String>,
}

/// A filter, built: the glob compiled once.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    pub(super) args: FilterArgs,
    slug: Option<GlobMatcher>,
}

impl FilterArgs {
    pub(super) fn build(&self) -> anyhow::Result<Filter> {
        let slug = match &self.slug {
            Some(g) => Some(
                Glob::new(g)
                    .map_err(|e| anyhow::anyhow!("--slug {g:?}: {e}"))?
                    .compile_matcher(),
            ),
            None => None,
        };
        if let (Some(from), Some(to)) = (self.from, self.to) {
            anyhow::ensure!(from <= to, "--from is after --to");
        }
        Ok(Filter {
            args: self.clone(),
            slug,
        })
    }
}

impl Filter {
    /// Whether `d` is one of the deliveries asked for.
    pub(super) fn matches(&self, d: &ArchivedDelivery) -> bool {
        let a = &self.args;
        let received = d.received_at_ms();
        a.id.as_ref().is_none_or(|id| *id == d.id)
            && a.source.as_ref().is_none_or(|s| *s == d.source)
            && self.slug.as_ref().is_none_or(|g| g.is_match(&d.slug))
            && a.from.is_none_or(|f| received.is_some_and(|r| r >= f))
            && a.to.is_none_or(|t| received.is_some_and(|r| r <= t))
    }

    /// Where a scan of the archive can start: an archive record is written after its event
    /// was received, so nothing received since `--from` is stamped earlier.
    pub(super) fn scan_start(&self) -> crate::kafka::scan::ScanStart {
        match self.args.from {
            Some(ms) => crate::kafka::scan::ScanStart::Time(ms),
            None => crate::kafka::scan::ScanStart::Beginning,
        }
    }
}

/// A point in time, as milliseconds since the epoch: RFC 3339, a date (UTC midnight), `now`,
/// or a duration ago (`90m`, `2d`).
pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    let now = jiff::Timestamp::now().as_millisecond();
    if s == "now" {
        return Ok(now);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if s.parse::<jiff::civil::Date>().is_ok() {
        if let Ok(t) = format!("{s}T00:00:00Z").parse::<jiff::Timestamp>() {
            return Ok(t.as_millisecond());
        }
    }
    match humantime::parse_duration(s) {
        Ok(ago) => Ok(now - ago.as_millis() as i64),
        Err(_) => Err(format!(
            "{s:?} is not a time: give RFC 3339 (2026-12-01T09:00:00Z), a date (2026-12-01) or a time ago (36h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_dates_or_durations_ago() {
        assert_eq!(parse_time("2026-12-01T00:00:01Z"), Ok(1_796_083_201_000));
        assert_eq!(parse_time("2026-12-01"), Ok(1_796_083_200_000));
        let ago = parse_time("2h").unwrap();
        let now = jiff::Timestamp::now().as_millisecond();
        assert!((now - 2 * 3_600_000 - ago).abs() < 5_000);
        assert!(parse_time("yesterday-ish").is_err());
    }
}
