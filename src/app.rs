//! Wiring: builds every stage from the settings, runs them, and stops them in order.
//!
//! Stop order matters for "acknowledged means safe": first the listeners stop taking
//! requests and finish the ones in flight (which may still append to the spool); then the
//! drain stops taking new work and waits for the deliveries in flight; then the producer is
//! flushed. Whatever is not confirmed by the end of the grace period stays in the spool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::EmbeddedBroker;
use crate::config::{AckMode, Settings};
use crate::http::admin::{self, AdminState};
use crate::http::webhook::{self, WebhookState};
use crate::http::{serve, ListenerSettings};
use crate::metrics::Metrics;
use crate::publish::drain::{self, DrainGauges, DrainSettings, Recovery, Until};
use crate::publish::Publisher;
use crate::route::Router;
use crate::sink::Sink;
use crate::source::Sources;
use crate::spool::Spool;

/// How often Kafka's reachability is probed (for readiness and outage logging).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The start-up check for events published but not deleted before the last stop.
pub fn recovery(settings: &Settings, brokers: &str, drain: &DrainSettings) -> Option<Recovery> {
    if !settings.delivery.recovery_check {
        return None;
    }
    // Only the oldest entries can have been sent: the in-flight window, the confirmed ones
    // whose delete was pending, and a read batch.
    let candidates = drain.max_in_flight + 2 * drain.delete_batch + drain.read_batch;
    Some(Recovery {
        reader: crate::publish::reader_config(settings, brokers),
        candidates,
        lookback: 4 * candidates as i64,
        timeout: Duration::from_secs(15),
        attempts: 10,
    })
}

/// A running bridge.
pub struct Application {
    webhook_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    brokers: String,
    grace: Duration,
    stop_http: watch::Sender<bool>,
    stop_drain: watch::Sender<bool>,
    trigger: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    drain: Option<JoinHandle<()>>,
    probe: JoinHandle<()>,
    publisher: Option<Publisher>,
    spool: Option<Spool>,
    tls_cert: Option<Arc<crate::http::tls::ReloadingCert>>,
    // Dropped last: the producer must be flushed before the embedded broker goes.
    embedded: Option<EmbeddedBroker>,
    /// The embedded broker's throwaway spool directory (removed on drop).
    _scratch: Option<tempfile::TempDir>,
}

/// Asks a running [`Application`] to stop (like SIGTERM does).
#[derive(Clone)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Application {
    /// Binds the listeners and starts every task; returns once the bridge is serving.
    pub async fn build(mut settings: Settings) -> anyhow::Result<Application> {
        let embedded = match &settings.kafka.brokers {
            Some(_) => None,
            None => Some(
                EmbeddedBroker::start(1)
                    .map_err(|e| anyhow::anyhow!("cannot start the embedded broker: {e}"))?,
            ),
        };
        let brokers = match (&settings.kafka.brokers, &embedded) {
            (Some(b), _) => b.clone(),
            (None, Some(e)) => e.bootstrap_servers().to_string(),
            (None, None) => unreachable!("an embedded broker starts when none is configured"),
        };
        // The embedded broker forgets everything on exit, so its spool does too: a dedupe
        // memory that outlived the broker would call the next run's events duplicates.
        let scratch = match &embedded {
            Some(_) => {
                let dir = tempfile::Builder::new()
                    .prefix("eduzz-kafka-bridge-dev-")
                    .tempdir()
                    .context("cannot create a temporary spool directory")?;
                settings.spool.dir = dir.path().join("spool");
                Some(dir)
            }
            None => None,
        };
        if embedded.is_some() {
            tracing::warn!(
                bootstrap = %brokers,
                "kafka.brokers is not set: started an EMBEDDED in-memory Kafka broker (development only, data is lost on exit). Read events with: eduzz-kafka-bridge tail --brokers {brokers} --topic <topic>"
            );
        }

        let metrics = Arc::new(Metrics::new());
        let publisher =
            Publisher::new(&settings, &brokers).context("cannot create the Kafka producer")?;
        let sources = Sources::from_settings(&settings).map_err(anyhow::Error::msg)?;
        let router = Router::from_settings(&settings).map_err(anyhow::Error::msg)?;

        let (stop_drain, stop_drain_rx) = watch::channel(false);
        let drain_gauges = Arc::new(DrainGauges::default());
        let (sink, spool, drain) = match settings.delivery.ack {
            AckMode::Spooled => {
                let spool =
                    Spool::open(&settings.spool, &settings.dedupe).map_err(anyhow::Error::msg)?;
                let st = spool.stats();
                if st.depth > 0 {
                    tracing::info!(
                        events = st.depth,
                        bytes = st.bytes,
                        "spool holds events from an earlier run; publishing them first"
                    );
                }
                let mut drain_settings = DrainSettings::new(settings.delivery.max_in_flight);
                drain_settings.stop_grace = settings.server.shutdown_grace;
                drain_settings.recovery = recovery(&settings, &brokers, &drain_settings);
                let task = tokio::spawn(drain::run(
                    spool.clone(),
                    publisher.clone(),
                    metrics.clone(),
                    drain_settings,
                    drain_gauges.clone(),
                    stop_drain_rx,
                    Until::Shutdown,
                ));
                (
                    Sink::Spooled {
                        spool: spool.clone(),
                        metrics: metrics.clone(),
                    },
                    Some(spool),
                    Some(task),
                )
            }
            AckMode::Published => (
                Sink::Published {
                    publisher: publisher.clone(),
                    timeout: settings.delivery.publish_timeout,
                    metrics: metrics.clone(),
                },
                None,
                None,
            ),
            AckMode::Received => (
                Sink::Received {
                    publisher: publisher.clone(),
                    metrics: metrics.clone(),
                },
                None,
                None,
            ),
        };

        let (stop_http, stop_http_rx) = watch::channel(false);
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (server.listen)",
                    settings.server.listen
                )
            })?;
        let webhook_addr = listener.local_addr()?;
        let proxies = crate::http::client_ip::ProxyPolicy::new(
            settings
                .server
                .trusted_proxies
                .iter()
                .map(|c| crate::config::parse_cidr(c))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
        );
        let (tls, tls_cert) = match &settings.server.tls {
            None => (None, None),
            Some(t) => {
                let (acceptor, cert) = crate::http::tls::acceptor(t).map_err(anyhow::Error::msg)?;
                (Some(acceptor), Some(cert))
            }
        };
        let webhook_state = Arc::new(WebhookState {
            proxies,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_in_flight_requests,
            )),
            sources,
            router,
            sink,
            metrics: metrics.clone(),
            max_body_bytes: settings.server.max_body_bytes,
            body_timeout: settings.server.body_timeout,
        });
        for s in webhook_state.sources.iter() {
            tracing::info!(source = %s.name, path = %s.path, format = s.format().as_str(), auth = %s.auth.describe(), "source ready");
        }
        let listener_settings = ListenerSettings {
            name: "webhook",
            max_connections: settings.server.max_connections,
            header_timeout: settings.server.header_timeout,
            max_header_bytes: settings.server.max_header_bytes,
            grace: settings.server.shutdown_grace,
            tls,
        };
        let mut servers = vec![tokio::spawn(serve(
            listener,
            listener_settings.clone(),
            move |req, peer| webhook::handle(webhook_state.clone(), req, peer),
            stop_http_rx.clone(),
        ))];

        let admin_addr = if settings.admin.listen.is_empty() {
            None
        } else {
            let listener = TcpListener::bind(&settings.admin.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (admin.listen)", settings.admin.listen)
                })?;
            let addr = listener.local_addr()?;
            let state = Arc::new(AdminState {
                metrics: metrics.clone(),
                publisher: publisher.clone(),
                spool: spool.clone(),
                drain: drain_gauges.clone(),
            });
            servers.push(tokio::spawn(serve(
                listener,
                ListenerSettings {
                    name: "admin",
                    max_connections: 64,
                    tls: None,
                    ..listener_settings
                },
                move |req, peer| admin::handle(state.clone(), req, peer),
                stop_http_rx,
            )));
            Some(addr)
        };

        let probe = {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                loop {
                    publisher.probe(Duration::from_secs(1)).await;
                    tokio::time::sleep(PROBE_INTERVAL).await;
                }
            })
        };

        tracing::info!(
            webhook = %webhook_addr,
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_default(),
            ack = settings.delivery.ack.as_str(),
            brokers = %brokers,
            "eduzz-kafka-bridge serving"
        );
        let (trigger, _) = watch::channel(false);
        Ok(Application {
            webhook_addr,
            admin_addr,
            brokers,
            grace: settings.server.shutdown_grace,
            stop_http,
            stop_drain,
            trigger,
            servers,
            drain,
            probe,
            publisher: Some(publisher),
            spool,
            tls_cert,
            embedded,
            _scratch: scratch,
        })
    }

    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bootstrap servers in use (the embedded broker's when none was configured).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Reads the TLS certificate files again (what SIGHUP does). Without TLS: Ok, nothing done.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls_cert {
            None => Ok(()),
            Some(cert) => cert.reload(),
        }
    }

    /// A handle that reloads the TLS certificate, for a signal handler.
    pub fn tls_reloader(&self) -> Option<Arc<crate::http::tls::ReloadingCert>> {
        self.tls_cert.clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.trigger.clone())
    }

    /// Runs until the stop handle fires, then stops in order within the grace period.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let mut trigger = self.trigger.subscribe();
        while !*trigger.borrow_and_update() {
            if trigger.changed().await.is_err() {
                break;
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Stops now: listeners, then the drain, then the producer.
    pub async fn shutdown(&mut self) {
        let deadline = Instant::now() + self.grace;
        tracing::info!(grace = ?self.grace, "stopping: no new requests; finishing those in flight");
        self.stop_http.send_replace(true);
        for s in self.servers.drain(..) {
            let _ = s.await;
        }
        self.stop_drain.send_replace(true);
        if let Some(d) = self.drain.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left + Duration::from_secs(1), d).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(publisher) = self.publisher.take() else {
            return;
        };
        if !publisher.flush(left.max(Duration::from_millis(100))).await {
            tracing::warn!(
                unconfirmed = publisher.queue_depth(),
                "grace period over with messages unconfirmed by Kafka{}",
                if self.spool.is_some() {
                    "; they stay in the spool"
                } else {
                    ""
                }
            );
        }
        self.probe.abort();
        let _ = (&mut self.probe).await;
        // The producer goes before the embedded broker, or it would report the broker's
        // departure as an outage.
        drop(publisher);
        if let Some(s) = self.spool.take() {
            let st = s.stats();
            s.close().await;
            tracing::info!(spool_depth = st.depth, "stopped");
        } else {
            tracing::info!("stopped");
        }
        self.embedded.take();
    }
}
