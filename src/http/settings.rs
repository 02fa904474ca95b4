//! `[server]` and `[admin]`: the listeners' settings, and the checked form they run as.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::client_ip::ProxyPolicy;
use super::tls::Tls;
use crate::cidr::Cidr;
use crate::problem::Problems;

/// `[server]`: the public webhook listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the webhook listener, e.g. `0.0.0.0:8080` (port 0 picks a free port).
    pub listen: String,
    /// Largest request body accepted; larger ones get 413 without being read whole. At most
    /// the producer's `message.max.bytes` (librdkafka's default is 1 000 000): the default
    /// leaves the rest of it for the record's key and headers.
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers, counted from when the connection opens or the
    /// previous answer was sent: it also closes idle keep-alive connections.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest request head (request line + headers); larger ones get 431.
    pub max_header_bytes: usize,
    /// Most authenticated webhook requests being processed at once; more get 503. A request
    /// takes its slot only once its body is in and its signature or token checked out.
    pub max_in_flight_requests: usize,
    /// Most bytes of request bodies held in memory at once, all connections together (bodies
    /// still arriving and those being processed); a body that would go over it gets 503.
    pub max_body_memory_bytes: usize,
    /// Most connections from one client address that are idle or still sending a request
    /// that has not been authenticated yet; past it, that client's oldest such connection is
    /// closed. Keep `max_idle_per_client × max_body_bytes` well under `max_body_memory_bytes`,
    /// so no single address can hold the body budget. Behind a load balancer every connection
    /// comes from its address: raise it there, and let the balancer bound its own clients.
    pub max_idle_per_client: usize,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed, e.g. your load balancer.
    pub trusted_proxies: Vec<String>,
    /// Serve HTTPS with these PEM files (reloaded on SIGHUP); unset: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Time allowed to receive the whole body once the headers are in.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Most connections open at once. At the cap, the oldest idle connection (else the oldest
    /// one still sending an unauthenticated request) is closed to make room; only when every
    /// connection is busy with an authenticated request does a new one get 503.
    pub max_connections: usize,
    /// Time given to in-flight requests after SIGTERM/SIGINT before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 960 * 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_in_flight_requests: 1024,
            max_body_memory_bytes: 256 * 1024 * 1024,
            max_idle_per_client: 64,
            trusted_proxies: Vec::new(),
            tls: None,
            body_timeout: Duration::from_secs(15),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// `server.tls`: certificate chain and private key for the public listener, as PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[admin]`: `/healthz`, `/readyz`, `/metrics`. Never the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener; empty disables it.
    pub listen: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// The public listener, ready to bind: address, limits, proxies and TLS all checked.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_in_flight_requests: usize,
    pub max_body_memory_bytes: usize,
    pub max_idle_per_client: usize,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub proxies: ProxyPolicy,
    pub tls: Option<Tls>,
}

/// The largest body the bridge can be told to take: a spooled event is framed with a 32-bit
/// length (see `spool::record`), with room to spare for the message around the body.
const MAX_BODY_BYTES: usize = 1 << 30;

impl ServerSettings {
    /// Checks and builds the listener's settings (reading the TLS files once); problems go to
    /// `problems` under `server.…`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<Server> {
        let mark = problems.mark();
        let listen = address(&self.listen, "server.listen", "0.0.0.0:8080", problems);
        for (ok, key, message) in [
            (
                self.max_body_bytes > 0,
                "server.max_body_bytes",
                "must be greater than 0",
            ),
            (
                self.max_body_bytes <= MAX_BODY_BYTES,
                "server.max_body_bytes",
                "must be at most 1073741824 (1 GiB): a spooled event is one length-prefixed part of a spool record, and Kafka refuses far smaller messages",
            ),
            (
                self.max_header_bytes >= 8192,
                "server.max_header_bytes",
                "must be at least 8192",
            ),
            (
                self.max_in_flight_requests > 0,
                "server.max_in_flight_requests",
                "must be greater than 0",
            ),
            (
                self.max_connections > 0,
                "server.max_connections",
                "must be greater than 0",
            ),
            (
                self.max_body_memory_bytes >= self.max_body_bytes,
                "server.max_body_memory_bytes",
                "must be at least server.max_body_bytes",
            ),
            (
                self.max_idle_per_client > 0,
                "server.max_idle_per_client",
                "must be greater than 0",
            ),
        ] {
            problems.require(ok, key, message);
        }
        let trusted: Vec<Cidr> = self
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, c)| problems.check(format!("server.trusted_proxies[{i}]"), c.parse()))
            .collect();
        let tls = match &self.tls {
            None => None,
            Some(t) => Some(problems.check("server.tls", Tls::load(t))?),
        };
        let listen = listen?;
        problems.none_since(mark).then(|| Server {
            listen,
            max_body_bytes: self.max_body_bytes,
            header_timeout: self.header_timeout,
            max_header_bytes: self.max_header_bytes,
            max_in_flight_requests: self.max_in_flight_requests,
            max_body_memory_bytes: self.max_body_memory_bytes,
            max_idle_per_client: self.max_idle_per_client,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
            proxies: ProxyPolicy::new(trusted),
            tls,
        })
    }
}

impl AdminSettings {
    /// The admin listener's address (`None`: disabled); problems go under `admin.listen`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<Option<SocketAddr>> {
        if self.listen.is_empty() {
            return Some(None);
        }
        address(
            &self.listen,
            "admin.listen",
            "127.0.0.1:9090 (empty disables the admin listener)",
            problems,
        )
        .map(Some)
    }
}

fn address(text: &str, key: &str, example: &str, problems: &mut Problems) -> Option<SocketAddr> {
    let addr = text.parse().ok();
    if addr.is_none() {
        problems.push(key, format!("'{text}' is not an address like {example}"));
    }
    addr
}
