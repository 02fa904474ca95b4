//! Delivery reports: how the outcome of a message gets back to whoever sent it.
//!
//! librdkafka calls the producer's context back once per message, on the producer's polling
//! thread. A request in a direct ack mode, or a tool, waits for its own message: it gets a
//! [`Delivery`], a future of that one report. The drain has thousands of messages in flight;
//! it gives each a token and takes their reports in batches from one queue ([`Reports`]), so
//! a report costs it no future, no wake-up of its own and no turn of its loop.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::ProducerContext;
use tokio::sync::{mpsc, oneshot};

use super::health::BridgeContext;

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// What Kafka said of one message.
pub type Outcome = Result<Delivered, KafkaError>;

/// Who is told of a message's outcome.
pub enum ReportTo {
    /// One waiter, through a [`Delivery`].
    Waiter(oneshot::Sender<Outcome>),
    /// A queue shared by many messages, each named by its token.
    Queue { queue: ReportQueue, token: u64 },
}

impl ReportTo {
    /// A report for one waiter, and the future it waits on.
    pub fn waiter() -> (ReportTo, Delivery) {
        let (tx, rx) = oneshot::channel();
        (ReportTo::Waiter(tx), Delivery(rx))
    }

    /// Tells the outcome; a waiter or queue that is gone no longer cares.
    pub fn report(self, outcome: Outcome) {
        match self {
            ReportTo::Waiter(tx) => {
                let _ = tx.send(outcome);
            }
            ReportTo::Queue { queue, token } => {
                let _ = queue.0.send((token, outcome));
            }
        }
    }
}

/// The delivery report of one message, to come.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Outcome>);

impl Future for Delivery {
    type Output = Outcome;

    /// A report whose [`ReportTo`] was dropped without reporting (the message was never
    /// handed over) is `Canceled`.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(KafkaError::Canceled)))
    }
}

/// The sending side of a report queue: given, with a token, to each message sent.
#[derive(Clone, Debug)]
pub struct ReportQueue(mpsc::UnboundedSender<(u64, Outcome)>);

impl ReportQueue {
    /// What a message sent with `token` reports to.
    pub fn to(&self, token: u64) -> ReportTo {
        ReportTo::Queue {
            queue: self.clone(),
            token,
        }
    }
}

/// The receiving side of a report queue. Unbounded, because what it holds is bounded by what
/// its owner keeps in flight.
#[derive(Debug)]
pub struct Reports(mpsc::UnboundedReceiver<(u64, Outcome)>);

impl Reports {
    /// Waits for at least one report, then moves up to `limit` of those waiting into `into`.
    /// Never returns 0 while its owner holds a [`ReportQueue`] of its own.
    pub async fn recv_many(&mut self, into: &mut Vec<(u64, Outcome)>, limit: usize) -> usize {
        self.0.recv_many(into, limit).await
    }
}

/// A new report queue.
pub fn report_queue() -> (ReportQueue, Reports) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ReportQueue(tx), Reports(rx))
}

/// Each message carries its [`ReportTo`] through librdkafka, and is reported on as it comes
/// back: only the partition and offset, or the error (the payload is not copied back).
impl ProducerContext for BridgeContext {
    type DeliveryOpaque = Box<ReportTo>;

    fn delivery(&self, result: &DeliveryResult<'_>, to: Box<ReportTo>) {
        let outcome = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        to.report(outcome);
    }
}
