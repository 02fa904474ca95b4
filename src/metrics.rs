//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Counters and histograms are updated where things happen; the gauges that describe state
//! owned elsewhere (spool depth, producer queue, Kafka reachability) are sampled when
//! scraped ([`GaugeValues`]), so no module has to push them.
//!
//! Every label has a bounded set of values, whatever senders post: a slug outside the
//! documented catalogue counts as `slug="other"`, and topics past the first
//! [`MAX_TOPIC_LABELS`] as `topic="other"`, so a stream of made-up slugs cannot grow
//! `/metrics` (or the process's memory) without limit.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Distinct topics counted by name in `published_total`; later ones count as `other`.
pub const MAX_TOPIC_LABELS: usize = 256;
/// The label value standing for everything outside a bounded set.
pub const OTHER: &str = "other";

/// The exemplar of a publish latency: the trace of the event (OpenMetrics exemplars, which
/// Prometheus keeps with `--enable-feature=exemplar-storage` and Grafana links to the trace).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub source: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub source: String,
    pub slug: String,
    /// accepted, published, duplicate, dropped, ping
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub source: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub source: String,
    /// The outcome: unauthorized, invalid_envelope, busy, unavailable, payload_too_large, …
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: &'static str,
    /// over_capacity, evicted_at_capacity, evicted_client_limit, bad_request_head,
    /// request_head_too_large, header_timeout, tls_handshake_failed
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// claimed, taken, leased, bypassed, refused, mark_refused, lease_lost, mark_dropped
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SalvageLabels {
    /// requeued, already_on_kafka, duplicate, damaged, lost
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconnectLabels {
    /// dropped (Redis closed the connection), read_only (it leads to a replica)
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// State sampled at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct GaugeValues {
    pub spool_depth: Option<u64>,
    pub spool_bytes: Option<u64>,
    pub spool_oldest_age_seconds: Option<f64>,
    pub producer_queue: i64,
    pub kafka_reachable: bool,
    pub parked: u64,
    pub spool_damaged_files: u64,
    pub spool_quarantined: u64,
}

/// All metrics of one bridge process.
pub struct Metrics {
    registry: Registry,
    pub(crate) http_requests: Family<RequestLabels, Counter>,
    pub(crate) events: Family<EventLabels, Counter>,
    published: Family<TopicLabels, Counter>,
    pub(crate) publish_errors: Family<ErrorLabels, Counter>,
    pub(crate) dead_lettered: Counter,
    pub(crate) archived: Counter,
    pub(crate) archive_failed: Counter,
    pub(crate) signature_failures: Family<AuthLabels, Counter>,
    pub(crate) dedupe_hits: Family<SourceLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    connections_closed: Family<ConnectionLabels, Counter>,
    pub(crate) topic_overflow: Family<SourceLabels, Counter>,
    shared_dedupe: Family<ClaimLabels, Counter>,
    pub(crate) shared_dedupe_reachable: Gauge,
    pub(crate) shared_dedupe_marks_pending: Gauge,
    shared_dedupe_reconnects: Family<ReconnectLabels, Counter>,
    publish_latency: HistogramWithExemplars<TraceExemplar>,
    pub(crate) request_duration: Histogram,
    spool_depth: Gauge,
    spool_bytes: Gauge,
    spool_oldest_age: Gauge<f64, AtomicU64>,
    spool_damaged_files: Gauge,
    spool_quarantined: Gauge,
    spool_salvaged: Family<SalvageLabels, Counter>,
    producer_queue: Gauge,
    kafka_reachable: Gauge,
    parked: Gauge,
    /// Seconds each source has been answered nothing but failures (see `http::failing`).
    pub(crate) source_failing: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    /// Topics that have a `published_total` series of their own.
    topic_labels: Mutex<HashSet<String>>,
}

/// Registers each metric under the name a scraper sees, written out in full so that a name
/// read on a dashboard (`eduzz_bridge_spool_bytes`, `eduzz_bridge_events_total`) is found by
/// grep. prometheus-client adds the prefix, a counter's `_total` and the unit's suffix itself,
/// so they are taken off the written name here, once.
struct Exposed<'r> {
    registry: &'r mut Registry,
    #[cfg(test)]
    names: Vec<&'static str>,
}

const PREFIX: &str = "eduzz_bridge_";

impl<'r> Exposed<'r> {
    fn new(registry: &'r mut Registry) -> Exposed<'r> {
        Exposed {
            registry,
            #[cfg(test)]
            names: Vec::new(),
        }
    }

    fn add(
        &mut self,
        exposed: &'static str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        #[cfg(test)]
        self.names.push(exposed);
        let name = exposed
            .strip_prefix(PREFIX)
            .expect("every metric name starts with the bridge's prefix");
        let name = name.strip_suffix("_total").unwrap_or(name);
        use prometheus_client::registry::Unit;
        match (name.strip_suffix("_seconds"), name.strip_suffix("_bytes")) {
            (Some(base), _) => self
                .registry
                .register_with_unit(base, help, Unit::Seconds, metric),
            (None, Some(base)) => self
                .registry
                .register_with_unit(base, help, Unit::Bytes, metric),
            (None, None) => self.registry.register(name, help, metric),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX.trim_end_matches('_'));
        let m = Metrics {
            http_requests: Family::default(),
            events: Family::default(),
            published: Family::default(),
            publish_errors: Family::default(),
            dead_lettered: Counter::default(),
            archived: Counter::default(),
            archive_failed: Counter::default(),
            signature_failures: Family::default(),
            dedupe_hits: Family::default(),
            refusals: Family::default(),
            connections_closed: Family::default(),
            topic_overflow: Family::default(),
            shared_dedupe: Family::default(),
            shared_dedupe_reachable: Gauge::default(),
            shared_dedupe_marks_pending: Gauge::default(),
            shared_dedupe_reconnects: Family::default(),
            publish_latency: HistogramWithExemplars::new(
                [
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ]
                .into_iter(),
            ),
            request_duration: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                5.0,
            ]),
            spool_depth: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_oldest_age: Gauge::default(),
            spool_damaged_files: Gauge::default(),
            spool_quarantined: Gauge::default(),
            spool_salvaged: Family::default(),
            producer_queue: Gauge::default(),
            kafka_reachable: Gauge::default(),
            parked: Gauge::default(),
            source_failing: Family::default(),
            topic_labels: Mutex::new(HashSet::new()),
            registry: Registry::default(),
        };
        let mut exposed = Exposed::new(&mut registry);
        m.register_counters(&mut exposed);
        m.register_gauges(&mut exposed);
        Metrics { registry, ..m }
    }

    fn register_counters(&self, r: &mut Exposed<'_>) {
        r.add(
            "eduzz_bridge_http_requests_total",
            "Webhook requests by source and HTTP status",
            self.http_requests.clone(),
        );
        r.add(
            "eduzz_bridge_events_total",
            "Events by source, slug and outcome",
            self.events.clone(),
        );
        r.add(
            "eduzz_bridge_published_total",
            "Messages confirmed by Kafka, by topic",
            self.published.clone(),
        );
        r.add(
            "eduzz_bridge_publish_errors_total",
            "Delivery failures reported by Kafka, by error",
            self.publish_errors.clone(),
        );
        r.add(
            "eduzz_bridge_dead_lettered_total",
            "Messages sent to the dead-letter topic",
            self.dead_lettered.clone(),
        );
        r.add(
            "eduzz_bridge_archived_total",
            "Archive records Kafka confirmed",
            self.archived.clone(),
        );
        r.add(
            "eduzz_bridge_archive_failed_total",
            "Archive records Kafka did not take (their events are not affected)",
            self.archive_failed.clone(),
        );
        r.add(
            "eduzz_bridge_signature_failures_total",
            "Deliveries refused by authentication, by source and reason",
            self.signature_failures.clone(),
        );
        r.add(
            "eduzz_bridge_dedupe_hits_total",
            "Deliveries recognised as already accepted",
            self.dedupe_hits.clone(),
        );
        r.add(
            "eduzz_bridge_refusals_total",
            "Webhook requests answered without taking the event, by source and reason",
            self.refusals.clone(),
        );
        r.add(
            "eduzz_bridge_connections_closed_total",
            "Connections refused or closed by a listener before an answer, by reason",
            self.connections_closed.clone(),
        );
        r.add(
            "eduzz_bridge_topic_overflow_total",
            "Events sent to the overflow topic because the limit on topics named after slugs was reached",
            self.topic_overflow.clone(),
        );
        r.add(
            "eduzz_bridge_shared_dedupe_total",
            "Claims and marks in the shared dedupe index, by result (bypassed: Redis did not answer or refused the claim; mark_refused: a mark Redis refused, kept and retried)",
            self.shared_dedupe.clone(),
        );
        r.add(
            "eduzz_bridge_shared_dedupe_reconnects_total",
            "Connections to the shared dedupe index replaced without bypassing it, by reason (dropped: Redis closed it and the round trip was sent again on a new one; read_only: it led to a replica)",
            self.shared_dedupe_reconnects.clone(),
        );
        r.add(
            "eduzz_bridge_publish_latency_seconds",
            "Time from receiving an event to Kafka confirming it",
            self.publish_latency.clone(),
        );
        r.add(
            "eduzz_bridge_request_duration_seconds",
            "Time to answer a webhook request",
            self.request_duration.clone(),
        );
    }

    fn register_gauges(&self, r: &mut Exposed<'_>) {
        r.add(
            "eduzz_bridge_spool_depth",
            "Events in the spool waiting for Kafka",
            self.spool_depth.clone(),
        );
        r.add(
            "eduzz_bridge_spool_bytes",
            "Bytes of events in the spool",
            self.spool_bytes.clone(),
        );
        r.add(
            "eduzz_bridge_spool_oldest_age_seconds",
            "Age of the oldest event in the spool",
            self.spool_oldest_age.clone(),
        );
        r.add(
            "eduzz_bridge_spool_damaged_files",
            "Spool files found damaged (moved aside for salvage, or missing) since the start: alert on any",
            self.spool_damaged_files.clone(),
        );
        r.add(
            "eduzz_bridge_spool_quarantined",
            "Spooled events whose bytes were found damaged (checksum or decode) and moved to the quarantine, kept for `spool verify`: alert on any",
            self.spool_quarantined.clone(),
        );
        r.add(
            "eduzz_bridge_spool_salvaged",
            "Events of damaged spool files, by outcome: requeued, already_on_kafka, duplicate (in the spool already), damaged or lost (not recoverable)",
            self.spool_salvaged.clone(),
        );
        r.add(
            "eduzz_bridge_producer_queue_depth",
            "Messages handed to the producer and not yet confirmed",
            self.producer_queue.clone(),
        );
        r.add(
            "eduzz_bridge_kafka_reachable",
            "1 when Kafka answers, 0 during an outage",
            self.kafka_reachable.clone(),
        );
        r.add(
            "eduzz_bridge_shared_dedupe_reachable",
            "1 while the shared dedupe index (Redis) answers; 0 while it is bypassed, or not configured",
            self.shared_dedupe_reachable.clone(),
        );
        r.add(
            "eduzz_bridge_shared_dedupe_marks_pending",
            "Marks of events this replica took that the shared dedupe index does not hold yet (Redis unreachable or refusing writes): their retries on another replica may be published again",
            self.shared_dedupe_marks_pending.clone(),
        );
        r.add(
            "eduzz_bridge_parked",
            "Events Kafka refused for good that could not be dead-lettered (they stay in the spool)",
            self.parked.clone(),
        );
        r.add(
            "eduzz_bridge_source_failing_seconds",
            "How long each source has been answered nothing but failures (0: its last answer was a 2xx); Eduzz gives up on a URL after 180",
            self.source_failing.clone(),
        );
    }

    /// The content type of [`Metrics::render`]'s text: prometheus-client writes OpenMetrics
    /// (with its `# EOF`), and a scraper that is told 0.0.4 may parse it as the older format.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// Renders every metric in the OpenMetrics text format, sampling `values` first.
    pub fn render(&self, values: GaugeValues) -> String {
        self.spool_depth.set(values.spool_depth.unwrap_or(0) as i64);
        self.spool_bytes.set(values.spool_bytes.unwrap_or(0) as i64);
        self.spool_oldest_age
            .set(values.spool_oldest_age_seconds.unwrap_or(0.0));
        self.spool_damaged_files
            .set(values.spool_damaged_files as i64);
        self.spool_quarantined.set(values.spool_quarantined as i64);
        self.producer_queue.set(values.producer_queue);
        self.kafka_reachable.set(values.kafka_reachable as i64);
        self.parked.set(values.parked as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts one event; slugs outside the documented catalogue count as `other`.
    pub fn event(&self, source: &str, slug: &str, outcome: &'static str) {
        let slug = if crate::slugs::is_documented(slug) {
            slug
        } else {
            OTHER
        };
        self.events
            .get_or_create(&EventLabels {
                source: source.to_string(),
                slug: slug.to_string(),
                outcome,
            })
            .inc();
    }

    /// Counts one webhook request refused for `reason` (an outcome label).
    pub fn refusal(&self, source: &str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                source: source.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts `n` events of a damaged spool file, by what salvage made of them.
    pub(crate) fn salvaged(&self, outcome: &'static str, n: u64) {
        self.spool_salvaged
            .get_or_create(&SalvageLabels { outcome })
            .inc_by(n);
    }

    /// Counts one claim or mark in the shared dedupe index, by `result`.
    pub(crate) fn shared_dedupe_claim(&self, result: &'static str) {
        self.shared_dedupe
            .get_or_create(&ClaimLabels { result })
            .inc();
    }

    /// Counts one connection to the shared dedupe index replaced for `reason`.
    pub(crate) fn shared_dedupe_reconnect(&self, reason: &'static str) {
        self.shared_dedupe_reconnects
            .get_or_create(&ReconnectLabels { reason })
            .inc();
    }

    /// Counts one connection a listener refused or closed for `reason`.
    pub fn connection_closed(&self, listener: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ConnectionLabels { listener, reason })
            .inc();
    }

    /// One publish confirmed `seconds` after its event was received; `trace_id`, when its
    /// trace is sampled, becomes the bucket's exemplar.
    pub(crate) fn publish_latency(&self, seconds: f64, trace_id: Option<String>) {
        let exemplar = trace_id.map(|trace_id| TraceExemplar { trace_id });
        self.publish_latency.observe(seconds, exemplar, None);
    }

    /// Counts one message Kafka confirmed on `topic` (past [`MAX_TOPIC_LABELS`] topics, as
    /// `other`).
    pub fn published(&self, topic: &str) {
        let topic = {
            let mut seen = self.topic_labels.lock().unwrap();
            if seen.contains(topic) || (seen.len() < MAX_TOPIC_LABELS && seen.insert(topic.into()))
            {
                topic
            } else {
                OTHER
            }
        };
        self.published
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.event("eduzz", "nutror.lesson_started", "accepted");
        m.http_requests
            .get_or_create(&RequestLabels {
                source: "eduzz".into(),
                status: 202,
            })
            .inc();
        m.publish_latency(0.002, None);
        m.publish_latency(0.004, Some("4bf92f3577b34da6a3ce929d0e0e4736".into()));
        let text = m.render(GaugeValues {
            spool_depth: Some(3),
            kafka_reachable: true,
            ..Default::default()
        });
        for needle in [
            "eduzz_bridge_http_requests_total{source=\"eduzz\",status=\"202\"} 1",
            "eduzz_bridge_events_total{source=\"eduzz\",slug=\"nutror.lesson_started\",outcome=\"accepted\"} 1",
            "eduzz_bridge_publish_latency_seconds_bucket",
            "eduzz_bridge_publish_latency_seconds_bucket{le=\"0.005\"} 2 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.004",
            "eduzz_bridge_spool_depth 3",
            "eduzz_bridge_kafka_reachable 1",
            "eduzz_bridge_spool_bytes 0",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }

    #[test]
    fn every_name_is_written_as_a_scraper_sees_it() {
        let m = Metrics::new();
        let mut registry = Registry::with_prefix("eduzz_bridge");
        let mut exposed = Exposed::new(&mut registry);
        m.register_counters(&mut exposed);
        m.register_gauges(&mut exposed);
        let names = exposed.names;
        assert!(names.len() > 20, "{names:?}");
        m.event("eduzz", "nutror.lesson_started", "accepted");
        m.refusal("eduzz", "busy");
        m.published("t");
        m.dead_lettered.inc();
        let text = m.render(GaugeValues::default());
        // Every metric a scraper sees is found, as it sees it, in this file. (A family without
        // samples yet is not written at all; the ones touched above stand for them.)
        let seen: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        assert!(seen.len() > 12, "{text}");
        for base in seen {
            let counter = format!("{base}_total");
            assert!(
                names.contains(&base) || names.contains(&counter.as_str()),
                "{base} is exposed but not written out in metrics.rs"
            );
        }
        for sample in [
            "eduzz_bridge_events_total{",
            "eduzz_bridge_refusals_total{",
            "eduzz_bridge_published_total{",
            "eduzz_bridge_dead_lettered_total ",
            "eduzz_bridge_spool_bytes ",
        ] {
            assert!(text.contains(sample), "{sample} not in\n{text}");
        }
    }

    #[test]
    fn labels_stay_bounded_whatever_is_posted() {
        let m = Metrics::new();
        for i in 0..2 * MAX_TOPIC_LABELS {
            m.event("json", &format!("made.up_{i}"), "accepted");
            m.published(&format!("made.up_{i}"));
        }
        m.event("eduzz", "myeduzz.invoice_negotiatied", "accepted");
        let text = m.render(GaugeValues::default());
        let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(series("eduzz_bridge_events_total{"), 2, "{text}");
        assert!(text.contains(&format!(
            "eduzz_bridge_events_total{{source=\"json\",slug=\"other\",outcome=\"accepted\"}} {}",
            2 * MAX_TOPIC_LABELS
        )));
        assert!(text.contains("slug=\"myeduzz.invoice_negotiatied\""));
        assert_eq!(
            series("eduzz_bridge_published_total{"),
            MAX_TOPIC_LABELS + 1
        );
        assert!(text.contains(&format!(
            "eduzz_bridge_published_total{{topic=\"other\"}} {MAX_TOPIC_LABELS}"
        )));
    }
}
