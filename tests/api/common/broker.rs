//! The tests' own Kafka: librdkafka's mock cluster, in this process, behind a TCP proxy the test
//! controls.
//!
//! Why a proxy: the mock cluster's own "broker down" closes its listening socket and binds the
//! same port again at once, and aborts the whole process if that bind fails (a port taken
//! meanwhile, a descriptor short): one such abort took every test of a CI run with it. Here
//! the mock broker never goes down; the proxy, whose address the broker advertises in its
//! metadata, cuts every connection and refuses new ones instead, which is what a client sees
//! of a broker that went away.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr, RDKafkaType};

/// The mock cluster (one broker), created by and living with its own client.
pub struct MockKafka {
    raw: *mut rd::rd_kafka_mock_cluster_t,
    _client: Client<DefaultProducerContext>,
}

// librdkafka's mock API hands every call to the cluster's own thread through its op queue.
unsafe impl Send for MockKafka {}
unsafe impl Sync for MockKafka {}

impl MockKafka {
    fn new() -> MockKafka {
        let config = ClientConfig::new();
        let native = config.create_native_config().expect("a client config");
        let client = Client::new(
            &config,
            native,
            RDKafkaType::RD_KAFKA_PRODUCER,
            DefaultProducerContext,
        )
        .expect("a client for the mock cluster");
        let raw = unsafe { rd::rd_kafka_mock_cluster_new(client.native_ptr(), 1) };
        assert!(!raw.is_null(), "the mock cluster starts");
        MockKafka {
            raw,
            _client: client,
        }
    }

    /// The broker's own address (`host:port`), behind the proxy.
    fn address(&self) -> String {
        let text =
            unsafe { std::ffi::CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(self.raw)) };
        text.to_string_lossy().into_owned()
    }

    /// Has the broker name `addr` in its metadata, so clients connect there.
    fn advertise(&self, addr: SocketAddr) {
        let host = CString::new(addr.ip().to_string()).unwrap();
        unsafe {
            rd::rd_kafka_mock_broker_set_host_port(self.raw, 1, host.as_ptr(), addr.port() as i32)
        };
    }

    /// Answers the next requests of `api_key` with `errors`, one each.
    pub fn request_errors(&self, api_key: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        unsafe {
            rd::rd_kafka_mock_push_request_errors_array(
                self.raw,
                api_key as i16,
                errors.len(),
                errors.as_ptr(),
            )
        }
    }

    /// Answers every request about `topic` with `error`.
    pub fn topic_error(&self, topic: &str, error: RDKafkaRespErr) -> Result<(), String> {
        let topic = CString::new(topic).map_err(|e| e.to_string())?;
        unsafe { rd::rd_kafka_mock_topic_set_error(self.raw, topic.as_ptr(), error) };
        Ok(())
    }

    pub fn create_topic(&self, topic: &str, partitions: i32, replicas: i32) -> Result<(), String> {
        let topic = CString::new(topic).map_err(|e| e.to_string())?;
        let err = unsafe {
            rd::rd_kafka_mock_topic_create(self.raw, topic.as_ptr(), partitions, replicas)
        };
        ok(err)
    }

    /// Gives `partition` of `topic` the leader `broker` (`None`: no leader).
    pub fn partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: Option<i32>,
    ) -> Result<(), String> {
        let topic = CString::new(topic).map_err(|e| e.to_string())?;
        let leader = broker.unwrap_or(-1);
        let err = unsafe {
            rd::rd_kafka_mock_partition_set_leader(self.raw, topic.as_ptr(), partition, leader)
        };
        ok(err)
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        unsafe { rd::rd_kafka_mock_cluster_destroy(self.raw) }
    }
}

fn ok(err: RDKafkaRespErr) -> Result<(), String> {
    match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// A TCP proxy that passes bytes both ways, or, while down, cuts every connection.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// Both ends of every connection passed through, to cut them when going down.
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// What each connection asked and was answered, to let the answers back before a cut.
    exchanges: Arc<Mutex<Vec<Arc<Exchange>>>>,
}

/// One connection's Kafka requests passed on to the broker, and responses passed back
/// (counted by their length-prefixed frames: every request the bridge sends has a response).
#[derive(Default)]
struct Exchange {
    asked: AtomicU64,
    answered: AtomicU64,
    closed: AtomicBool,
    /// Held by the request side from its look at the gate until what it read is counted and
    /// passed on: going down takes it once, so no request slips past the count.
    passing: Mutex<()>,
}

impl Exchange {
    /// Whether a request passed on still waits for its response.
    fn waiting(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
            && self.answered.load(Ordering::SeqCst) < self.asked.load(Ordering::SeqCst)
    }
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            down: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
            exchanges: Arc::new(Mutex::new(Vec::new())),
        };
        let (down, open, exchanges) = (
            proxy.down.clone(),
            proxy.open.clone(),
            proxy.exchanges.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                {
                    let mut open = open.lock().unwrap();
                    open.retain(|s| s.peer_addr().is_ok());
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                let exchange = Arc::new(Exchange::default());
                {
                    let mut exchanges = exchanges.lock().unwrap();
                    exchanges.retain(|e| !e.closed.load(Ordering::SeqCst));
                    exchanges.push(exchange.clone());
                }
                let requests = Direction {
                    frames: exchange.clone(),
                    requests: true,
                    gate: Some(down.clone()),
                };
                let responses = Direction {
                    frames: exchange,
                    requests: false,
                    gate: None,
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    requests,
                );
                pipe(server, client, responses);
            }
        });
        proxy
    }

    /// Going down: no request is passed on any more, the responses to those already passed
    /// on come back (up to 10 s), then every connection is cut.
    ///
    /// Why not cut at once: a request the mock broker took whose response is lost is sent
    /// again, and a real broker knows the repeat by its idempotent sequence number while the
    /// mock appends it again (it checks sequences only for transactional producers), which
    /// would show as a duplicate the bridge did not make. A fixed wait for the responses was
    /// not enough on a loaded machine: copies of one batch side by side in a partition.
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for e in self.exchanges.lock().unwrap().iter() {
                drop(e.passing.lock().unwrap());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.exchanges.lock().unwrap().iter().any(|e| e.waiting())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// One way through a proxied connection: what it counts, and (requests) the gate that stops
/// them while the proxy is down.
struct Direction {
    frames: Arc<Exchange>,
    requests: bool,
    gate: Option<Arc<AtomicBool>>,
}

impl Direction {
    fn passed(&self, frames: u64) {
        let count = match self.requests {
            true => &self.frames.asked,
            false => &self.frames.answered,
        };
        count.fetch_add(frames, Ordering::SeqCst);
    }
}

/// Counts the Kafka frames (a 4-byte big-endian length, then that many bytes) in a stream fed
/// in pieces.
#[derive(Default)]
struct Frames {
    /// Bytes of the length prefix read so far.
    prefix: Vec<u8>,
    /// Bytes of the current frame's body still to come.
    body_left: usize,
}

impl Frames {
    /// Feeds `bytes`; returns how many frames they completed.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut done = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                done += u64::from(self.body_left == 0);
                continue;
            }
            let n = (4 - self.prefix.len()).min(bytes.len());
            self.prefix.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.prefix.len() == 4 {
                let len = u32::from_be_bytes(self.prefix[..].try_into().unwrap()) as usize;
                self.prefix.clear();
                self.body_left = len;
                done += u64::from(len == 0);
            }
        }
        done
    }
}

/// Copies `from` to `to` on a thread of its own until either end closes (the proxy cuts both
/// when it goes down); requests that arrive while it is down are dropped. Counts the frames
/// passed.
fn pipe(mut from: TcpStream, mut to: TcpStream, way: Direction) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        let mut frames = Frames::default();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _passing = way.requests.then(|| way.frames.passing.lock().unwrap());
            if way.gate.as_ref().is_some_and(|g| g.load(Ordering::SeqCst)) {
                // Down: requests are dropped, and the connection stays up until the proxy
                // cuts it, so the responses to those passed on before still come back.
                continue;
            }
            // Counted once passed on; a request, still under `passing`, so going down (which
            // takes it once after closing the gate) counts every request passed on.
            let complete = frames.feed(&buf[..n]);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            way.passed(complete);
        }
        way.frames.closed.store(true, Ordering::SeqCst);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// The mock cluster and the proxy in front of it.
pub(super) struct ProxiedMock {
    pub(super) kafka: MockKafka,
    proxy: Proxy,
}

impl ProxiedMock {
    pub(super) fn start() -> ProxiedMock {
        let kafka = MockKafka::new();
        let proxy = Proxy::start(kafka.address());
        kafka.advertise(proxy.addr);
        ProxiedMock { kafka, proxy }
    }

    /// What clients bootstrap from: the proxy.
    pub(super) fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }

    pub(super) fn set_down(&self, down: bool) {
        self.proxy.set_down(down);
    }
}

/// The proxy's frame count, fed a stream cut anywhere (mid-prefix, mid-body, several frames
/// in one piece), and an empty frame (a test of the harness, run with the durability tests).
pub fn frames_are_counted_however_the_stream_is_cut() {
    let mut stream = Vec::new();
    for body in [&b"abc"[..], b"", &[7u8; 300]] {
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.extend_from_slice(body);
    }
    for cut in [1, 2, 3, 5, 7, 64, stream.len()] {
        let mut frames = Frames::default();
        let counted: u64 = stream.chunks(cut).map(|piece| frames.feed(piece)).sum();
        assert_eq!(counted, 3, "pieces of {cut}");
    }
    let mut frames = Frames::default();
    assert_eq!(
        frames.feed(&stream[..stream.len() - 1]),
        2,
        "the last frame not whole"
    );
}
