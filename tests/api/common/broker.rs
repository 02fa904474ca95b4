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
use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            down: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (down, open) = (proxy.down.clone(), proxy.open.clone());
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
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(down.clone()),
                );
                pipe(server, client, None);
            }
        });
        proxy
    }

    /// Going down: no request is passed on any more, the answers to those already passed on
    /// get a moment to come back, then every connection is cut.
    ///
    /// Why not cut at once: a request the mock broker took whose answer is lost is sent again,
    /// and a real broker knows the repeat by its idempotent sequence number while the mock
    /// appends it again (it checks sequences only for transactional producers), which would
    /// show as a duplicate the bridge did not make.
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            std::thread::sleep(std::time::Duration::from_millis(300));
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to` on a thread of its own until either end closes, or (with `gate`)
/// until the proxy goes down: what arrives then is not passed on.
fn pipe(mut from: TcpStream, mut to: TcpStream, gate: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if gate.as_ref().is_some_and(|g| g.load(Ordering::SeqCst)) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
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
