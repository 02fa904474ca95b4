//! The seam between the batcher and Redis: one pipelined round trip, and starting over on a
//! new connection. Behind it in production is redis-rs's [`ConnectionManager`] (which
//! reconnects by itself after a dropped connection); the batcher's tests put a scripted Redis
//! there instead, so faults that take seconds to stage on a real server take none.

use std::future::Future;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Value};

use super::SharedSettings;

/// Why a round trip brought no replies.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unreachable {
    #[error("no answer within dedupe.shared_timeout")]
    TimedOut,
    /// The client could not even be set up (a bad TLS setting, …); nothing was sent.
    #[error("cannot set up a connection: {0}")]
    Setup(#[source] std::sync::Arc<redis::RedisError>),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl Unreachable {
    /// Whether Redis (or something between) closed a connection that worked: a
    /// `CLIENT KILL`, a proxy's idle timeout, a server restart. The round trip can be sent
    /// again at once on a new connection. A refused connection is not one: Redis is down.
    pub(super) fn dropped(&self) -> bool {
        match self {
            Unreachable::Redis(e) => e.is_connection_dropped() && !e.is_connection_refusal(),
            Unreachable::TimedOut | Unreachable::Setup(_) => false,
        }
    }
}

/// One pipelined round trip to Redis, and what to do when the connection leads astray.
pub(super) trait RoundTrip: Send + 'static {
    /// Sends `pipe`; each command's reply in order, a refused command's as
    /// [`Value::ServerError`] (the pipeline ignores errors).
    fn send(
        &mut self,
        pipe: &Pipeline,
    ) -> impl Future<Output = Result<Vec<Value>, Unreachable>> + Send;

    /// Drops the connection, so the next round trip connects anew (and resolves the address
    /// again: after a failover it may lead to the new primary).
    fn replace(&mut self);
}

/// Redis through a [`ConnectionManager`], connected on first use.
pub(super) struct Managed {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: Result<ConnectionManager, std::sync::Arc<redis::RedisError>>,
}

impl Managed {
    pub(super) fn new(settings: &SharedSettings) -> Managed {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(super::batcher::MAX_PAUSE);
        let mut managed = Managed {
            client: settings.client.clone(),
            config,
            conn: Err(std::sync::Arc::new(redis::RedisError::from((
                redis::ErrorKind::Client,
                "not connected yet",
            )))),
        };
        managed.replace();
        managed
    }
}

impl RoundTrip for Managed {
    async fn send(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, Unreachable> {
        match &mut self.conn {
            Ok(conn) => Ok(pipe.query_async(conn).await?),
            Err(why) => Err(Unreachable::Setup(why.clone())),
        }
    }

    fn replace(&mut self) {
        let (client, config) = (self.client.clone(), self.config.clone());
        self.conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(std::sync::Arc::new);
    }
}
