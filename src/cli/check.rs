//! `check-config`: every problem of a config at once, or the routing table it implies.

use std::path::Path;

use crate::config::Config;

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
    println!("{}: OK", path.display());
    println!(
        "ack mode: {}; kafka: {}",
        config.delivery.ack.as_str(),
        config
            .kafka
            .brokers
            .as_deref()
            .unwrap_or("embedded development broker")
    );
    for source in sources.iter() {
        println!();
        println!(
            "source {}: POST {} (format {}, auth {}{})",
            source.name,
            source.path,
            source.format().as_str(),
            source.auth.describe(),
            if source.publish_ping {
                ", ping published"
            } else {
                ""
            }
        );
        let slugs = source.format().documented_slugs();
        let width = slugs.iter().map(|s| s.len()).max().unwrap_or(4).max(4);
        println!("  {:width$}  {:40}  {:22}  rule", "slug", "topic", "key");
        for slug in slugs {
            if slug == "ping" && !source.publish_ping {
                println!(
                    "  {slug:width$}  {:40}  {:22}  answered 200, not published",
                    "-", "-"
                );
                continue;
            }
            let row = router.explain(&source.name, &slug);
            println!(
                "  {slug:width$}  {:40}  {:22}  {}",
                row.topic.as_deref().unwrap_or("(dropped)"),
                row.key,
                row.rule
            );
        }
    }
    Ok(0)
}
