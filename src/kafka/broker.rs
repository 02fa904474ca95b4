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

/// What the broker's thread is asked to do.
enum BrokerRequest {
    /// End the broker (the handle is dropped; topic handles may outlive it).
    Stop,
    CreateTopic {
        topic: String,
        partitions: i32,
        replication_factor: i32,
        done: mpsc::Sender<Result<(), KafkaError>>,
    },
    /// Takes every broker of the cluster down (connections closed, new ones refused) or up:
    /// an outage that ends, with the same address and topics after it.
    SetUp { up: bool },
}

/// A running in-process Kafka-protocol broker.
pub struct EmbeddedBroker {
    bootstrap: String,
    commands: Option<mpsc::Sender<BrokerRequest>>,
    thread: Option<JoinHandle<()>>,
}

/// Creates topics on the embedded broker (the mock cluster has no CreateTopics API, so the
/// admin side asks its thread instead). Cheap to clone; fails once the broker is gone.
#[derive(Debug, Clone)]
pub struct EmbeddedTopics(mpsc::Sender<BrokerRequest>);

impl std::fmt::Debug for BrokerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerRequest")
    }
}

impl EmbeddedTopics {
    /// Creates `topic` with `partitions`; blocks until the broker's thread has done it.
    pub fn create(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
    ) -> Result<(), KafkaError> {
        let (done, result) = mpsc::channel();
        let command = BrokerRequest::CreateTopic {
            topic: topic.to_string(),
            partitions,
            replication_factor,
            done,
        };
        self.0.send(command).map_err(|_| KafkaError::Canceled)?;
        result.recv().map_err(|_| KafkaError::Canceled)?
    }
}

impl EmbeddedBroker {
    /// Starts a mock cluster of `brokers` brokers on loopback ports.
    pub fn start(brokers: i32) -> Result<EmbeddedBroker, BrokerError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, received) = mpsc::channel::<BrokerRequest>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || match MockCluster::new(brokers) {
                Ok(cluster) => {
                    let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                    // Serve commands until the handle is gone.
                    for command in received {
                        match command {
                            BrokerRequest::Stop => break,
                            BrokerRequest::CreateTopic {
                                topic,
                                partitions,
                                replication_factor,
                                done,
                            } => {
                                let created =
                                    cluster.create_topic(&topic, partitions, replication_factor);
                                let _ = done.send(created);
                            }
                            BrokerRequest::SetUp { up } => {
                                for id in 1..=brokers {
                                    let r = if up {
                                        cluster.broker_up(id)
                                    } else {
                                        cluster.broker_down(id)
                                    };
                                    if let Err(e) = r {
                                        tracing::warn!(broker = id, error = %e, "cannot change the mock broker's state");
                                    }
                                }
                            }
                        }
                    }
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
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Creates topics on this broker.
    pub fn topics(&self) -> EmbeddedTopics {
        EmbeddedTopics(
            self.commands
                .clone()
                .expect("the broker runs until dropped"),
        )
    }

    /// Takes the brokers down (`false`) or brings them back (`true`), keeping their address
    /// and topics: a broker outage for benchmarks and manual tests.
    pub fn set_up(&self, up: bool) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(BrokerRequest::SetUp { up });
        }
    }

    /// `host:port` list to give clients as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(BrokerRequest::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
