//! The embedded broker: librdkafka's mock cluster, for running the bridge with nothing else
//! installed.
//!
//! It speaks the Kafka protocol on a loopback port, so the bridge's real producer, `tail`,
//! kcat or any other client can connect to it. It keeps everything in memory and is gone when
//! the process exits: it is for trying the bridge out and for tests, never for production.
//!
//! The mock cluster is tied to a librdkafka handle that must stay on one thread, so it lives
//! on a thread of its own until the [`EmbeddedBroker`] is dropped.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start the embedded broker's thread")]
    Thread(#[source] std::io::Error),
    #[error("the mock cluster did not start")]
    Mock(#[source] KafkaError),
    #[error("the embedded broker's thread ended before it was ready")]
    Gone,
}

/// A running in-process Kafka-protocol broker.
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a mock cluster of `brokers` brokers on loopback ports.
    pub fn start(brokers: i32) -> Result<EmbeddedBroker, BrokerError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || match MockCluster::new(brokers) {
                Ok(cluster) => {
                    let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                    // Wait until told to stop (or until the handle is gone).
                    let _ = stop_rx.recv();
                    drop(cluster);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(BrokerError::Mock(e)));
                }
            })
            .map_err(BrokerError::Thread)?;
        let bootstrap = ready_rx.recv().map_err(|_| BrokerError::Gone)??;
        Ok(EmbeddedBroker {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `host:port` list to give clients as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
