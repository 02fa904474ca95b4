//! A bounded load generator that remembers which events were acknowledged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eduzz_kafka_bridge::source::auth::sign_hex;

use super::{eduzz_event, SECRET};

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Answered 2xx: the bridge promised to deliver these.
    pub acked: Vec<String>,
    /// Answered non-2xx (status kept).
    pub refused: Vec<(String, u16)>,
    /// No answer (connection refused or cut).
    pub failed: Vec<String>,
}

impl LoadResult {
    pub fn merge(&mut self, other: LoadResult) {
        self.acked.extend(other.acked);
        self.refused.extend(other.refused);
        self.failed.extend(other.failed);
    }

    pub fn acked_set(&self) -> HashSet<String> {
        self.acked.iter().cloned().collect()
    }
}

/// Posts distinct signed events (`{prefix}-{worker}-{n}`) to `url` from `workers` tasks until
/// `stop` is set, `max_per_worker` is reached, or `limit` passes.
pub async fn run(
    url: String,
    prefix: &str,
    slug: &str,
    workers: usize,
    max_per_worker: usize,
    limit: Duration,
    stop: Arc<AtomicBool>,
) -> LoadResult {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        let (prefix, slug) = (prefix.to_string(), slug.to_string());
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            for n in 0..max_per_worker {
                if stop.load(Ordering::Relaxed) || started.elapsed() >= limit {
                    break;
                }
                let id = format!("{prefix}-{w}-{n}");
                let body = eduzz_event(&id, &slug);
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-signature", sign_hex(SECRET.as_bytes(), &body))
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().is_success() => r.acked.push(id),
                    Ok(resp) => {
                        r.refused.push((id, resp.status().as_u16()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        r.failed.push(id);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            r
        }));
    }
    let mut all = LoadResult::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    all
}

/// Posts exactly `workers × per_worker` distinct events (no stop flag, a generous time limit).
pub async fn send(
    url: String,
    prefix: &str,
    slug: &str,
    workers: usize,
    per_worker: usize,
) -> LoadResult {
    run(
        url,
        prefix,
        slug,
        workers,
        per_worker,
        Duration::from_secs(60),
        Arc::new(AtomicBool::new(false)),
    )
    .await
}
