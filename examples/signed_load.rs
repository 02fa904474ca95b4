//! A load generator for the default configuration: every request a *distinct*, correctly
//! signed Eduzz event, so dedupe (local and shared) does real work on each one. oha can only
//! repeat one body, which with dedupe on makes every request after the first a duplicate.
//!
//! Bodies are signed before the clock starts, so the generator spends its time on HTTP only.
//! `cargo run --release --example signed_load -- URL SECRET CONNECTIONS SECONDS [SIZE]`
//! prints one JSON object: requests answered 2xx per second, latency percentiles, non-2xx.
//! Environment: `LOAD_TOTAL` posts exactly that many events (SECONDS is then a cap),
//! `LOAD_RATE` paces all connections together to that many requests per second, and
//! `LOAD_FIRST_ID` numbers the events from there (so two runs post distinct events).

use std::sync::Arc;
use std::time::{Duration, Instant};

use eduzz_kafka_bridge::source::auth::sign_hex;

/// A distinct Eduzz event of about `size` bytes, and its signature.
fn signed(secret: &[u8], id: usize, size: usize) -> (bytes::Bytes, String) {
    let mut doc = serde_json::json!({
        "id": format!("load{id:020}"),
        "event": "nutror.lesson_started",
        "data": {
            "learner": {"email": "learner@eduzz.com", "name": "Ciclano da Silva"},
            "course": {"hash": "4bba1d18c02755a13ee97521ae61958c3cf9e665", "title": "Título do Curso"},
            "notes": ""
        },
        "sentDate": "2024-02-29T14:33:02.020Z"
    });
    let base = serde_json::to_vec(&doc).unwrap().len();
    doc["data"]["notes"] = "x".repeat(size.saturating_sub(base)).into();
    let body = serde_json::to_vec(&doc).unwrap();
    let signature = sign_hex(secret, &body);
    (body.into(), signature)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, secret, conns, seconds, rest @ ..] = args.as_slice() else {
        eprintln!("usage: signed_load URL SECRET CONNECTIONS SECONDS [SIZE]");
        std::process::exit(2);
    };
    let conns: usize = conns.parse().expect("CONNECTIONS is a number");
    let seconds: f64 = seconds.parse().expect("SECONDS is a number");
    let size: usize = rest.first().map_or(1024, |s| s.parse().expect("SIZE"));
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse::<f64>().expect(name))
    };
    let (total, rate) = (env("LOAD_TOTAL"), env("LOAD_RATE"));
    let first_id = env("LOAD_FIRST_ID").unwrap_or(0.0) as usize;
    // Enough distinct bodies for the run at 60 000 requests/s (more than the bridge does here
    // with dedupe on) or the given rate; a worker that runs out stops, and the output says so.
    let per_worker = match total {
        Some(total) => (total / conns as f64).ceil() as usize,
        None => (rate.unwrap_or(60_000.0) * seconds / conns as f64).ceil() as usize + 1,
    };
    let pace = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()
        .unwrap();
    let (url, secret) = (Arc::new(url.clone()), secret.clone().into_bytes());
    let bodies: Vec<Vec<(bytes::Bytes, String)>> = (0..conns)
        .map(|w| {
            (0..per_worker)
                .map(|n| signed(&secret, first_id + w * per_worker + n, size))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = bodies
        .into_iter()
        .map(|bodies| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (mut ok, mut not_ok, mut latencies) = (0u64, 0u64, Vec::new());
                let mut ticks = pace.map(|p| {
                    let mut i = tokio::time::interval(p);
                    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    i
                });
                for (body, signature) in bodies {
                    if let Some(t) = &mut ticks {
                        t.tick().await;
                    }
                    if Instant::now() >= until {
                        return (ok, not_ok, latencies, false);
                    }
                    let t = Instant::now();
                    let sent = client
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .header("x-signature", signature)
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => ok += 1,
                        _ => not_ok += 1,
                    }
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (ok, not_ok, latencies, total.is_none())
            })
        })
        .collect();
    let (mut ok, mut not_ok, mut latencies, mut exhausted) = (0, 0, Vec::new(), false);
    for w in workers {
        let (o, n, l, out_of_bodies) = w.await.unwrap();
        ok += o;
        not_ok += n;
        latencies.extend(l);
        exhausted |= out_of_bodies;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let i = (latencies.len() as f64 * q) as usize;
        latencies
            .get(i.min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "rps": ok as f64 / elapsed, "ok": ok, "not_ok": not_ok,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "bodies_exhausted": exhausted,
        })
    );
}
