//! The admin endpoints: `/healthz`, `/readyz`, `/metrics`, and the parked events
//! (`/parked`, see [`super::parked`]), on their own listener.
//!
//! Liveness says only that the process answers. Readiness says whether a load balancer
//! should send webhooks here: Kafka reachable (or, in `spooled` mode, room left in the
//! spool, since the spool absorbs an outage) and no backpressure.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::answer::{self, Answer};
use super::failing::FailingSources;
use crate::delivery::drain::{DrainControl, DrainGauges};
use crate::kafka::Publisher;
use crate::metrics::{GaugeValues, Metrics};
use crate::spool::Spool;

/// What the admin endpoints read.
pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
    pub spool: Option<Spool>,
    pub drain: Arc<DrainGauges>,
    /// What the parked endpoints ask of the drain.
    pub control: Arc<DrainControl>,
    /// How long each source has gone without a 2xx.
    pub failing: Arc<FailingSources>,
}

/// Paths served by the admin listener.
pub(crate) const ADMIN_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/parked",
    "/parked/redrive",
    "/parked/purge",
];

impl AdminState {
    /// Whether this instance should get traffic, and why not.
    pub(crate) fn readiness(&self) -> (bool, serde_json::Value) {
        let kafka = self.publisher.health().is_reachable();
        let spool_full = self.spool.as_ref().is_some_and(|s| s.is_full());
        let spool_broken = self.spool.as_ref().is_some_and(|s| s.is_broken());
        // With a spool, an outage is absorbed until the spool fills; without one, a request
        // can only be taken while Kafka answers.
        let ready = !spool_full && !spool_broken && (kafka || self.spool.is_some());
        let mut state = json!({
            "ready": ready,
            "kafka": if kafka { "reachable" } else { "unreachable" },
            "spool": match &self.spool {
                None => "disabled",
                Some(_) if spool_broken => "unwritable",
                Some(_) if spool_full => "full",
                Some(_) => "ok",
            },
        });
        // Damaged files moved aside this run: the spool goes on with a fresh file (ready),
        // but an operator should know (see README, "A damaged spool").
        let damaged = self.spool.as_ref().map_or(0, |s| s.damaged_files());
        if damaged > 0 {
            state["spool_damaged_files"] = damaged.into();
        }
        (ready, state)
    }

    async fn gauges(&self) -> GaugeValues {
        let (depth, bytes, age) = match &self.spool {
            Some(s) => {
                let st = s.stats();
                let age = s.oldest_age().await.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                (Some(st.depth), Some(st.bytes), Some(age))
            }
            None => (None, None, None),
        };
        GaugeValues {
            spool_depth: depth,
            spool_bytes: bytes,
            spool_oldest_age_seconds: age,
            producer_queue: self.publisher.queue_depth() as i64,
            kafka_reachable: self.publisher.health().is_reachable(),
            parked: self.drain.parked.load(Ordering::Relaxed),
            spool_damaged_files: self.spool.as_ref().map_or(0, |s| s.damaged_files()),
            spool_quarantined: self.spool.as_ref().map_or(0, |s| s.quarantined()),
        }
    }
}

/// Handles one request on the admin listener.
pub(crate) async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
    _peer: std::net::SocketAddr,
) -> Answer {
    let path = req.uri().path();
    if !ADMIN_PATHS.contains(&path) {
        return answer::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try /healthz, /readyz, /metrics or /parked",
        );
    }
    let changes_state = path.starts_with("/parked/");
    match (changes_state, req.method()) {
        (true, &Method::POST) => {}
        (true, _) => return answer::method_not_allowed("POST"),
        (false, &Method::GET | &Method::HEAD) => {}
        (false, _) => return answer::method_not_allowed("GET"),
    }
    match path {
        "/parked" => super::parked::list(&state).await,
        "/parked/redrive" => super::parked::redrive(&state),
        "/parked/purge" => super::parked::purge(&state, req.uri().query()).await,
        "/healthz" => answer::json(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => {
            let (ready, body) = state.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            answer::json(status, body)
        }
        _ => {
            state.failing.sample();
            let text = state.metrics.render(state.gauges().await);
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(Metrics::CONTENT_TYPE),
            );
            r
        }
    }
}
