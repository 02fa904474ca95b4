//! Wiring: builds every part from the configuration, runs them, and stops them in order.
//!
//! Stop order matters for "acknowledged means safe": first the listeners stop taking
//! requests and finish the ones in flight (which may still append to the spool); then the
//! drain stops taking new work and waits for the deliveries in flight; then the producer is
//! flushed. Whatever is not confirmed by the end of the grace period stays in the spool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::archive::Archive;
use crate::config::Config;
use crate::dedupe::SharedIndex;
use crate::delivery::drain::{Drain, DrainControl, DrainGauges, DrainSettings, DrainStop, Until};
use crate::delivery::recover::Recovery;
use crate::delivery::{AckMode, DeadLetters, Delivery};
use crate::http::admin::{self, AdminState};
use crate::http::tls::ReloadingCert;
use crate::http::webhook::Webhook;
use crate::http::{serve, ListenerSettings, Server};
use crate::kafka::admin::Admin;
use crate::kafka::broker::EmbeddedBroker;
use crate::kafka::{Cluster, Publisher};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::spool::Spool;
use crate::topics::Topics;

/// How often Kafka's reachability is probed (for readiness and outage logging).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The drain's settings for a configuration, with the start-up recovery check when on.
pub(crate) fn drain_settings(config: &Config, connection: &Cluster) -> DrainSettings {
    let mut drain = DrainSettings::new(config.delivery.max_in_flight);
    drain.stop_grace = config.server.shutdown_grace;
    if config.delivery.recovery_check {
        let candidates = drain.recovery_candidates();
        drain.recovery = Some(Recovery::new(connection.clone(), candidates));
    }
    drain
}

/// A running bridge.
pub struct Application {
    webhook_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    brokers: String,
    grace: Duration,
    /// Asked to stop (SIGTERM, a [`StopHandle`]).
    requested: CancellationToken,
    /// Listeners: stop accepting, finish the requests in flight.
    stop_http: CancellationToken,
    /// Drain: stop reading the spool, wait for what is in flight.
    stop_drain: DrainStop,
    servers: TaskTracker,
    drain: Option<JoinHandle<()>>,
    probe: JoinHandle<()>,
    publisher: Option<Publisher>,
    /// Topic provisioning in the background, stopped before the producer is flushed.
    topics: Topics,
    spool: Option<Spool>,
    shared_dedupe: Option<SharedIndex>,
    tls_cert: Option<Arc<ReloadingCert>>,
    // Dropped last: the producer must be flushed before the embedded broker goes.
    embedded: Option<Embedded>,
}

/// The embedded development broker, and the throwaway spool directory that goes with it.
struct Embedded {
    broker: EmbeddedBroker,
    _scratch: tempfile::TempDir,
}

/// Asks a running [`Application`] to stop (like SIGTERM does).
#[derive(Clone)]
pub struct StopHandle(CancellationToken);

impl StopHandle {
    pub fn stop(&self) {
        self.0.cancel();
    }
}

/// What the delivery side started: the mode, its spool and drain when spooled, the shared
/// dedupe index when configured.
struct DeliveryParts {
    delivery: Delivery,
    spool: Option<Spool>,
    shared_dedupe: Option<SharedIndex>,
    drain: Option<JoinHandle<()>>,
    gauges: Arc<DrainGauges>,
    /// What the admin listener can ask of the drain.
    control: Arc<DrainControl>,
}

impl Application {
    /// Binds the listeners and starts every task; returns once the bridge is serving.
    pub async fn build(mut config: Config) -> anyhow::Result<Application> {
        let embedded = start_embedded(&mut config)?;
        let brokers = match (&config.kafka.brokers, &embedded) {
            (Some(b), _) => b.clone(),
            (None, Some(e)) => e.broker.bootstrap_servers().to_string(),
            (None, None) => unreachable!("an embedded broker starts when none is configured"),
        };
        let connection = config.kafka.connect(&brokers);
        let metrics = Arc::new(Metrics::new());
        let publisher = Publisher::new(&connection, config.delivery.producer_tuning())
            .context("cannot create the Kafka producer")?;
        let topics = provision_topics(&config, &connection, embedded.as_ref())?;
        let stop_drain = DrainStop::default();
        let parts = start_delivery(
            &config,
            &connection,
            (&publisher, &topics),
            &metrics,
            &stop_drain,
        )?;

        let Config {
            server,
            admin: admin_listen,
            sources,
            router,
            delivery,
            ..
        } = config;
        for s in sources.iter() {
            tracing::info!(source = %s.name, path = %s.path, format = s.format().as_str(), auth = %s.auth.describe(), "source ready");
        }
        let shared_dedupe = parts.shared_dedupe;
        let stop_http = CancellationToken::new();
        let servers = TaskTracker::new();
        let probe = spawn_probe(publisher.clone(), router.overflow_topic().to_string());
        let pipeline = Pipeline::new(sources, router, parts.delivery, metrics.clone());
        let webhook = Arc::new(Webhook::new(pipeline, &server));
        let admin_state = Arc::new(AdminState {
            metrics,
            publisher: publisher.clone(),
            spool: parts.spool.clone(),
            drain: parts.gauges.clone(),
            control: parts.control.clone(),
            failing: webhook.failing(),
        });
        let (webhook_addr, listener) =
            spawn_webhook(&server, webhook, &servers, &stop_http).await?;
        let admin_addr = match admin_listen {
            None => None,
            Some(addr) => {
                Some(spawn_admin(addr, &listener, admin_state, &servers, &stop_http).await?)
            }
        };
        servers.close();

        tracing::info!(
            webhook = %webhook_addr,
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_default(),
            ack = delivery.ack.as_str(),
            brokers = %brokers,
            "eduzz-kafka-bridge serving"
        );
        Ok(Application {
            webhook_addr,
            admin_addr,
            brokers,
            grace: server.shutdown_grace,
            requested: CancellationToken::new(),
            stop_http,
            stop_drain,
            servers,
            drain: parts.drain,
            probe,
            publisher: Some(publisher),
            topics,
            spool: parts.spool,
            shared_dedupe,
            tls_cert: server.tls.map(|t| t.cert),
            embedded,
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

    /// A handle that reloads the TLS certificate (what SIGHUP does); `None` without TLS.
    pub fn tls_reloader(&self) -> Option<Arc<ReloadingCert>> {
        self.tls_cert.clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.requested.clone())
    }

    /// Runs until the stop handle fires, then stops in order within the grace period.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        self.requested.cancelled().await;
        self.shutdown().await;
        Ok(())
    }

    /// Stops now: listeners, then the drain, then the producer, all within one grace period
    /// counted from now (the drain gets what the listeners leave; whatever is unconfirmed at
    /// the end stays in the spool).
    pub async fn shutdown(&mut self) {
        let deadline = Instant::now() + self.grace;
        tracing::info!(grace = ?self.grace, "stopping: no new requests; finishing those in flight");
        self.stop_http.cancel();
        let _ = tokio::time::timeout_at(deadline, self.servers.wait()).await;
        if let Some(index) = self.shared_dedupe.take() {
            // The last requests' claims are marked (or kept, and logged) before the exit.
            let left = deadline.saturating_duration_since(Instant::now());
            index.flush(left).await;
        }
        // The drain ends in order (deleting what Kafka confirmed) a little before the
        // deadline; it is cut off only if even that does not happen in time.
        let margin = (self.grace / 10).min(Duration::from_millis(500));
        self.stop_drain
            .stop_by(deadline.checked_sub(margin).unwrap_or(deadline));
        if let Some(mut drain) = self.drain.take() {
            if tokio::time::timeout_at(deadline, &mut drain).await.is_err() {
                // Entries are deleted only once Kafka confirmed them: stopping the drain here
                // leaves the unconfirmed ones in the spool for the next start.
                drain.abort();
                let _ = drain.await;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(publisher) = self.publisher.take() else {
            return;
        };
        self.topics.stop();
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
            // Dropped now rather than waited for: the producer would otherwise go on trying
            // to deliver them while it shuts down.
            publisher.purge();
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
        // So do the topic admin's clients: their connections to a broker gone would be
        // logged as errors after a clean stop.
        drop(std::mem::take(&mut self.topics));
        self.embedded.take();
    }
}

/// Without `kafka.brokers`: the embedded broker, and a throwaway spool beside it. The embedded
/// broker forgets everything on exit, so its spool does too: a dedupe memory that outlived
/// the broker would call the next run's events duplicates.
fn start_embedded(config: &mut Config) -> anyhow::Result<Option<Embedded>> {
    if config.kafka.brokers.is_some() {
        return Ok(None);
    }
    let broker = EmbeddedBroker::start(1).context("cannot start the embedded broker")?;
    let scratch = tempfile::Builder::new()
        .prefix("eduzz-kafka-bridge-dev-")
        .tempdir()
        .context("cannot create a temporary spool directory")?;
    config.spool.dir = scratch.path().join("spool");
    let brokers = broker.bootstrap_servers();
    tracing::warn!(
        bootstrap = %brokers,
        "kafka.brokers is not set: started an EMBEDDED in-memory Kafka broker (development only, data is lost on exit). Read events with: eduzz-kafka-bridge tail --brokers {brokers} --topic <topic>"
    );
    Ok(Some(Embedded {
        broker,
        _scratch: scratch,
    }))
}

/// With `topics.provision` on, a topic is written only once it is created with the
/// partitions its route asks for (on the embedded broker, through the broker itself).
fn provision_topics(
    config: &Config,
    connection: &Cluster,
    embedded: Option<&Embedded>,
) -> anyhow::Result<Topics> {
    if !config.topics.provisions() {
        return Ok(Topics::unprovisioned());
    }
    let admin = Admin::new(connection, embedded.map(|e| e.broker.topics()))
        .context("cannot create the Kafka admin client")?;
    let specs = config.topics.with_routes(Arc::new(config.router.clone()));
    Ok(Topics::provisioned(admin, specs))
}

/// The producer, and whether each topic is ready to be written.
type KafkaParts<'a> = (&'a Publisher, &'a Topics);

/// The ack mode's delivery, claiming events in the shared dedupe index when one is set.
fn start_delivery(
    config: &Config,
    connection: &Cluster,
    kafka: KafkaParts<'_>,
    metrics: &Arc<Metrics>,
    stop_drain: &DrainStop,
) -> anyhow::Result<DeliveryParts> {
    let mut parts = start_mode(config, connection, kafka, metrics, stop_drain)?;
    parts.delivery = parts
        .delivery
        .with_max_record_bytes(config.kafka.max_record_bytes());
    if let Some(settings) = &config.shared_dedupe {
        let index = SharedIndex::start(settings.clone(), metrics.clone());
        parts.delivery = parts.delivery.with_shared_index(index.clone());
        parts.shared_dedupe = Some(index);
    }
    Ok(parts)
}

/// The ack mode's delivery; in `spooled` mode the spool is opened and its drain started.
fn start_mode(
    config: &Config,
    connection: &Cluster,
    (publisher, topics): KafkaParts<'_>,
    metrics: &Arc<Metrics>,
    stop_drain: &DrainStop,
) -> anyhow::Result<DeliveryParts> {
    let gauges = Arc::new(DrainGauges::default());
    let control = Arc::new(DrainControl::default());
    let archive = Archive::of(config.archive.as_ref(), publisher, topics, metrics);
    let d = &config.delivery;
    let dead_letters = DeadLetters::new(
        publisher.clone(),
        d.dead_letter_topic.clone(),
        metrics.clone(),
    );
    if d.ack != AckMode::Spooled {
        let delivery = Delivery::direct(
            d.ack,
            publisher.clone(),
            topics.clone(),
            dead_letters,
            d.publish_timeout,
            metrics.clone(),
        )
        .with_archive(archive);
        return Ok(DeliveryParts {
            delivery,
            spool: None,
            shared_dedupe: None,
            drain: None,
            gauges,
            control,
        });
    }
    let spool = Spool::open(&config.spool, &config.dedupe).context("cannot open the spool")?;
    let st = spool.stats();
    if st.depth > 0 {
        tracing::info!(
            events = st.depth,
            bytes = st.bytes,
            "spool holds events from an earlier run; publishing them first"
        );
    }
    let settings = drain_settings(config, connection);
    // Damaged spool files (moved aside at open, or while running) are salvaged meanwhile.
    tokio::spawn(crate::delivery::salvage::run_salvager(
        spool.clone(),
        settings.recovery.clone(),
        metrics.clone(),
        stop_drain.token(),
    ));
    let drain = Drain::new(
        spool.clone(),
        publisher.clone(),
        topics.clone(),
        dead_letters,
        metrics.clone(),
        settings,
        gauges.clone(),
    )
    .with_archive(archive.clone())
    .with_control(control.clone());
    let task = tokio::spawn(drain.run(stop_drain.clone(), Until::Shutdown));
    Ok(DeliveryParts {
        delivery: Delivery::spooled(spool.clone(), metrics.clone()).with_archive(archive),
        spool: Some(spool),
        shared_dedupe: None,
        drain: Some(task),
        gauges,
        control,
    })
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// The public listener, serving the pipeline through the webhook handler.
async fn spawn_webhook(
    server: &Server,
    webhook: Arc<Webhook>,
    servers: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, ListenerSettings)> {
    let settings = ListenerSettings {
        name: "webhook",
        max_connections: server.max_connections,
        max_idle_per_client: server.max_idle_per_client,
        header_timeout: server.header_timeout,
        max_header_bytes: server.max_header_bytes,
        grace: server.shutdown_grace,
        tls: server.tls.as_ref().map(|t| t.acceptor.clone()),
        metrics: webhook.metrics().clone(),
    };
    let tcp = bind(server.listen, "server.listen").await?;
    let addr = tcp.local_addr()?;
    let handler = move |req, peer| webhook.clone().handle(req, peer);
    servers.spawn(serve(tcp, settings.clone(), handler, stop.clone()));
    Ok((addr, settings))
}

/// The admin listener: like the public one, without TLS and with a small connection cap.
async fn spawn_admin(
    addr: SocketAddr,
    public: &ListenerSettings,
    state: Arc<AdminState>,
    servers: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let tcp = bind(addr, "admin.listen").await?;
    let addr = tcp.local_addr()?;
    let settings = ListenerSettings {
        name: "admin",
        max_connections: 64,
        max_idle_per_client: 64,
        tls: None,
        ..public.clone()
    };
    let handler = move |req, peer| admin::handle(state.clone(), req, peer);
    servers.spawn(serve(tcp, settings, handler, stop.clone()));
    Ok(addr)
}

/// Probes Kafka by asking for the metadata of one topic (the overflow topic): the answer's
/// size and cost do not grow with the number of topics on the cluster.
fn spawn_probe(publisher: Publisher, topic: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            publisher.probe(&topic, Duration::from_secs(1)).await;
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    })
}
