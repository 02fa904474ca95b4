//! `check-config`: every problem of a config at once, or the routing table it implies; with
//! `--explain PAYLOAD`, what the bridge would do with one delivery, published nowhere.

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use rdkafka::message::Headers;

use crate::config::Config;
use crate::event::Message;
use crate::route::Decision;
use crate::source::Source;

/// Loads and builds `path` the way `serve` does; prints every problem, or the routing table.
pub(super) fn run(path: &Path) -> anyhow::Result<i32> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return Ok(2);
        }
    };
    let (sources, router) = (&config.sources, &config.router);
    say!("{}: OK", path.display());
    say!(
        "ack mode: {}; kafka: {}",
        config.delivery.ack.as_str(),
        config
            .kafka
            .brokers
            .as_deref()
            .unwrap_or("embedded development broker")
    );
    say!(
        "dedupe: {}",
        match (&config.shared_dedupe, config.dedupe.enabled) {
            (Some(shared), _) => format!("shared by every replica, {}", shared.describe()),
            (None, true) => "per replica (its spool); no dedupe.shared".into(),
            (None, false) => "off".into(),
        }
    );
    say!("archive: {}", describe_archive(&config));
    say!("tracing: {}", describe_tracing(&config));
    for source in sources.iter() {
        say!();
        say!(
            "source {}: POST {} (format {}, auth {}{}); answers {} when an event is taken, 200 for every other success",
            source.name,
            source.path,
            source.format().as_str(),
            source.auth.describe(),
            if source.publish_ping {
                ", ping published"
            } else {
                ""
            },
            source.accepted_status.as_u16(),
        );
        let slugs = source.format().documented_slugs();
        let width = slugs.iter().map(|s| s.len()).max().unwrap_or(4).max(4);
        say!("  {:width$}  {:40}  {:22}  rule", "slug", "topic", "key");
        for slug in slugs {
            if slug == "ping" && !source.publish_ping {
                say!(
                    "  {slug:width$}  {:40}  {:22}  answered 200, not published",
                    "-",
                    "-"
                );
                continue;
            }
            let row = router.explain(&source.name, &slug);
            say!(
                "  {slug:width$}  {:40}  {:22}  {}",
                row.topic.as_deref().unwrap_or("(dropped)"),
                row.key,
                row.rule
            );
        }
    }
    Ok(0)
}

/// Dry run: which source takes `payload`, and the record it would become. Authentication is
/// not checked (a file has no request headers); everything after it runs as `serve` runs it.
pub(super) fn explain(path: &Path, payload: &Path, only: Option<&str>) -> anyhow::Result<i32> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return Ok(2);
        }
    };
    let body = Bytes::from(std::fs::read(payload)?);
    let candidates: Vec<&std::sync::Arc<Source>> = config
        .sources
        .iter()
        .filter(|s| only.is_none_or(|name| *s.name == *name))
        .collect();
    if candidates.is_empty() {
        eprintln!("no source is named '{}'", only.unwrap_or_default());
        return Ok(2);
    }
    say!("payload: {} ({} bytes)", payload.display(), body.len());
    let headers = http::HeaderMap::new();
    for source in candidates {
        match source.read(&headers, body.clone(), SystemTime::now()) {
            Ok(event) => {
                print_record(&config, source, &event);
                return Ok(0);
            }
            Err(e) => say!("source {}: not taken: {e}", source.name),
        }
    }
    say!("no source takes this payload: the bridge would answer 400");
    Ok(2)
}

fn print_record(config: &Config, source: &Source, event: &crate::event::Event) {
    say!(
        "source {}: POST {} (format {})",
        source.name,
        source.path,
        source.format().as_str()
    );
    let hint = match source.auth.describe().starts_with("hmac") {
        true => "; `sign --secret S FILE` prints the signature to post it with",
        false => "",
    };
    say!(
        "  auth:       {} (not checked in a dry run{hint})",
        source.auth.describe()
    );
    say!("  slug:       {}", event.slug);
    say!("  id:         {}", event.id);
    if event.is_ping() && !source.publish_ping {
        say!("  answer:     200, not published (Eduzz's activation ping)");
        return;
    }
    let (decision, rule) = config
        .router
        .preview(&source.name, &event.slug, &event.id, &event.doc);
    say!("  rule:       {rule}");
    let (topic, key) = match decision {
        Decision::Drop { .. } => {
            say!("  answer:     200, not published (the rule drops it)");
            return;
        }
        Decision::Publish { topic, key } | Decision::Overflow { topic, key } => (topic, key),
    };
    let spec = config
        .topics
        .spec(&config.router, &source.name, &event.slug, &topic);
    say!("  topic:      {topic}");
    say!("  key:        {}", String::from_utf8_lossy(&key));
    say!(
        "  partitions: {} ({}created on first write)",
        spec.partitions,
        if config.topics.provisions() {
            ""
        } else {
            "not "
        }
    );
    print_message(config, source, &Message::new(event, topic, key));
    say!("nothing was published (dry run)");
}

/// The headers, value and size of the record, and the answer the sender would get.
fn print_message(config: &Config, source: &Source, message: &Message) {
    say!("  headers:");
    for h in crate::kafka::headers::of(message).iter() {
        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
        say!("    {}: {value}", h.key);
    }
    say!(
        "  value:      the payload, byte for byte ({} bytes)",
        message.body.len()
    );
    let (size, limit) = (
        crate::kafka::headers::record_size(message),
        config.kafka.max_record_bytes(),
    );
    say!("  record:     {size} bytes with key and headers (the producer takes at most {limit})");
    if size > limit {
        say!("  answer:     413 (record_too_large): Kafka would refuse the record for good");
        return;
    }
    say!(
        "  answer:     {} (taken), 200 if it is a repeat within the dedupe window",
        source.accepted_status.as_u16()
    );
}

/// Where traces go, and which sources continue an incoming trace context.
fn describe_tracing(config: &crate::config::Config) -> String {
    let trusting: Vec<&str> = config
        .sources
        .iter()
        .filter(|s| s.trust_traceparent)
        .map(|s| &*s.name)
        .collect();
    let trusting = match trusting.is_empty() {
        true => String::new(),
        false => format!(
            "; incoming traceparent continued for {}",
            trusting.join(", ")
        ),
    };
    match &config.tracing {
        Some(otlp) => format!("{}{trusting}", otlp.describe()),
        None => format!(
            "off (messages carry a traceparent only when a trusted sender sent one){trusting}"
        ),
    }
}

/// Where deliveries are archived, and which sources are not.
fn describe_archive(config: &crate::config::Config) -> String {
    let Some(a) = &config.archive else {
        return "off".into();
    };
    let off: Vec<&str> = config
        .sources
        .iter()
        .filter(|s| !s.archive)
        .map(|s| &*s.name)
        .collect();
    let off = match off.is_empty() {
        true => String::new(),
        false => format!("; not archived: {}", off.join(", ")),
    };
    format!("{} ({}){off}", a.name, a.spec.describe())
}
