//! Topic administration: what a topic should look like ([`TopicSpec`]), what the cluster has
//! ([`Existing`]), and the calls that create topics and add partitions ([`Admin`]).
//!
//! A topic's partition count caps how many members of a consumer group can share its work,
//! and a stock broker auto-creates topics with one. So the bridge creates the topics it
//! writes itself, with the partitions, replication and configs the operator asked for.
//!
//! Two kinds of cluster are served. A real one (or tansu) takes the admin API. The embedded
//! development broker (librdkafka's mock cluster) does not implement CreateTopics at all, but
//! the bridge owns it, so topics are created through the mock's own call. A mock cluster in
//! another process (`dev-broker`) can only be left to its auto-creation: it names no broker
//! that exists as its controller, so an admin request would wait for one until it timed out.
//! It is told apart by its cluster id (`mockCluster…`), asked once, and
//! [`AdminError::MockCluster`] says so at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::broker::EmbeddedTopics;
use super::reader::{self, ReadError};
use super::Cluster;

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a topic the bridge writes should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: i32,
    /// `None`: the broker's `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Topic configs (`retention.ms`, `cleanup.policy`, `min.insync.replicas`…).
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// `6 partitions, replication 3, retention.ms=604800000`
    pub fn describe(&self) -> String {
        let mut out = format!("{} partitions", self.partitions);
        match self.replication_factor {
            Some(r) => out.push_str(&format!(", replication {r}")),
            None => out.push_str(", broker's default replication"),
        }
        for (k, v) in &self.config {
            out.push_str(&format!(", {k}={v}"));
        }
        out
    }
}

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub partitions: i32,
    /// Its configs, or why they could not be read (the embedded broker keeps none).
    pub config: Result<BTreeMap<String, String>, ConfigsUnread>,
}

/// Why a topic's configs could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigsUnread {
    #[error("the embedded broker keeps no topic configs")]
    EmbeddedBroker,
    #[error("the cluster did not give them: {0}")]
    Admin(#[source] Arc<AdminError>),
}

impl PartialEq for ConfigsUnread {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for ConfigsUnread {}

/// Why an admin call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("this cluster does not implement {0}")]
    Unsupported(&'static str),
    #[error("this is librdkafka's mock cluster (`dev-broker`), which has no admin API; it creates a topic (with 4 partitions) when it is first written")]
    MockCluster,
    #[error("the cluster answered no {0} request within 10 s (metadata and produce requests may still be answered: is a controller reachable?)")]
    NoAnswer(&'static str),
    #[error("the cluster refused: {0:?}")]
    Refused(RDKafkaErrorCode),
    #[error("cannot reach the cluster")]
    Kafka(#[source] KafkaError),
    #[error("cannot read the topic's metadata")]
    Metadata(#[source] ReadError),
}

impl AdminError {
    /// Whether the cluster said no for a reason that retrying will not change by itself
    /// (not authorised, a policy): worth one clear log line.
    pub fn is_refusal(&self) -> bool {
        matches!(self, AdminError::Refused(_))
    }

    /// Whether the cluster cannot do what was asked at all (so topics are left to its
    /// auto-creation).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, AdminError::Unsupported(_) | AdminError::MockCluster)
    }

    fn of(error: KafkaError, api: &'static str) -> AdminError {
        let code = match &error {
            KafkaError::AdminOp(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        match code {
            Some(RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion) => {
                AdminError::Unsupported(api)
            }
            Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
                AdminError::NoAnswer(api)
            }
            _ => AdminError::Kafka(error),
        }
    }

    fn refused(code: RDKafkaErrorCode, api: &'static str) -> AdminError {
        match code {
            RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion => {
                AdminError::Unsupported(api)
            }
            code => AdminError::Refused(code),
        }
    }
}

/// What creating a topic came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Someone (another replica, an operator, auto-creation) was first.
    AlreadyThere,
}

/// Talks topics with one cluster. Every call is async: the blocking ones (metadata, the
/// embedded broker's own creation call) run on tokio's blocking threads.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    metadata: Arc<BaseConsumer>,
    embedded: Option<EmbeddedTopics>,
    /// Whether the cluster is a mock cluster reached by address, once its id was read.
    mock: std::sync::OnceLock<bool>,
}

/// Runs a blocking admin call off the async threads.
async fn off_thread<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(AdminError::Kafka(KafkaError::Canceled)))
}

impl Admin {
    /// An admin for `connection`; `embedded` when it is the process's own embedded broker.
    pub fn new(
        connection: &Cluster,
        embedded: Option<EmbeddedTopics>,
    ) -> Result<Admin, KafkaError> {
        // A metadata request must never create the topic it asks about.
        let client = connection.admin_config().create()?;
        let metadata = connection
            .reader_config("eduzz-kafka-bridge-admin")
            .set("allow.auto.create.topics", "false")
            .create()?;
        Ok(Admin {
            client,
            metadata: Arc::new(metadata),
            embedded,
            mock: std::sync::OnceLock::new(),
        })
    }

    /// Fails with [`AdminError::MockCluster`] when the cluster is librdkafka's mock cluster
    /// reached by address (its admin requests would only time out). A cluster whose id cannot
    /// be read now is asked again next time.
    async fn admin_api(&self) -> Result<(), AdminError> {
        if self.embedded.is_some() {
            return Ok(());
        }
        let mock = match self.mock.get() {
            Some(mock) => *mock,
            None => {
                let metadata = self.metadata.clone();
                let id = off_thread(move || Ok(metadata.client().fetch_cluster_id(ADMIN_TIMEOUT)))
                    .await?;
                let Some(id) = id else { return Ok(()) };
                *self.mock.get_or_init(|| id.starts_with("mockCluster"))
            }
        };
        match mock {
            true => Err(AdminError::MockCluster),
            false => Ok(()),
        }
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT))
    }

    /// The topic's partition count, or `None` when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, AdminError> {
        let (metadata, topic) = (self.metadata.clone(), topic.to_string());
        off_thread(move || {
            reader::partitions(&metadata, &topic, ADMIN_TIMEOUT)
                .map(|ids| ids.map(|ids| ids.len() as i32))
                .map_err(AdminError::Metadata)
        })
        .await
    }

    /// The topic's partitions and (when `configs`) its configs, or `None` when it does not
    /// exist.
    pub async fn describe(
        &self,
        topic: &str,
        configs: bool,
    ) -> Result<Option<Existing>, AdminError> {
        let Some(partitions) = self.partitions(topic).await? else {
            return Ok(None);
        };
        let config = match (configs, &self.embedded) {
            (false, _) => Ok(BTreeMap::new()),
            (true, Some(_)) => Err(ConfigsUnread::EmbeddedBroker),
            (true, None) => self
                .configs(topic)
                .await
                .map_err(|e| ConfigsUnread::Admin(Arc::new(e))),
        };
        Ok(Some(Existing { partitions, config }))
    }

    /// The topic's configs that are not the broker's defaults.
    async fn configs(&self, topic: &str) -> Result<BTreeMap<String, String>, AdminError> {
        self.admin_api().await?;
        let results = self
            .client
            .describe_configs([&ResourceSpecifier::Topic(topic)], &Self::options())
            .await
            .map_err(|e| AdminError::of(e, "DescribeConfigs"))?;
        let resource = results
            .into_iter()
            .next()
            .ok_or(AdminError::Refused(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))?
            .map_err(|code| AdminError::refused(code, "DescribeConfigs"))?;
        Ok(resource
            .entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect())
    }

    /// Creates `topic` as `spec` says.
    pub async fn create(&self, topic: &str, spec: &TopicSpec) -> Result<Created, AdminError> {
        if let Some(embedded) = &self.embedded {
            let (embedded, topic) = (embedded.clone(), topic.to_string());
            let (partitions, rf) = (spec.partitions, spec.replication_factor.unwrap_or(1));
            return off_thread(move || match embedded.create(&topic, partitions, rf) {
                Ok(()) => Ok(Created::Created),
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAlreadyExists) => {
                    Ok(Created::AlreadyThere)
                }
                Err(e) => Err(AdminError::Kafka(e)),
            })
            .await;
        }
        self.admin_api().await?;
        let replication = TopicReplication::Fixed(spec.replication_factor.unwrap_or(-1));
        let new = spec.config.iter().fold(
            NewTopic::new(topic, spec.partitions, replication),
            |t, (k, v)| t.set(k, v),
        );
        let results = self
            .client
            .create_topics([&new], &Self::options())
            .await
            .map_err(|e| AdminError::of(e, "CreateTopics"))?;
        match results.into_iter().next() {
            Some(Ok(_)) | None => Ok(Created::Created),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Created::AlreadyThere),
            Some(Err((_, code))) => Err(AdminError::refused(code, "CreateTopics")),
        }
    }

    /// Raises `topic` to `total` partitions.
    pub async fn add_partitions(&self, topic: &str, total: i32) -> Result<(), AdminError> {
        if self.embedded.is_some() {
            return Err(AdminError::Unsupported("CreatePartitions"));
        }
        self.admin_api().await?;
        let new = NewPartitions::new(topic, total.max(1) as usize);
        let results = self
            .client
            .create_partitions([&new], &Self::options())
            .await
            .map_err(|e| AdminError::of(e, "CreatePartitions"))?;
        match results.into_iter().next() {
            Some(Ok(_)) | None => Ok(()),
            Some(Err((_, code))) => Err(AdminError::refused(code, "CreatePartitions")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::broker::EmbeddedBroker;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asking_about_a_topic_never_creates_it_and_create_gives_its_partitions() {
        let broker = EmbeddedBroker::start(1).unwrap();
        let connection = Cluster::to(broker.bootstrap_servers());
        let admin = Arc::new(Admin::new(&connection, Some(broker.topics())).unwrap());
        let asks: Vec<_> = ["t.a", "t.b", "t.c"]
            .into_iter()
            .map(|t| {
                let admin = admin.clone();
                tokio::spawn(async move { admin.partitions(t).await.unwrap() })
            })
            .collect();
        for ask in asks {
            assert_eq!(ask.await.unwrap(), None);
        }
        for t in ["t.a", "t.b", "t.c", "t.fresh"] {
            assert_eq!(admin.partitions(t).await.unwrap(), None, "{t}");
        }
        assert_eq!(admin.partitions("t.fresh").await.unwrap(), None);
        let spec = TopicSpec {
            partitions: 6,
            replication_factor: None,
            config: BTreeMap::new(),
        };
        assert_eq!(
            admin.create("t.fresh", &spec).await.unwrap(),
            Created::Created
        );
        assert_eq!(admin.partitions("t.fresh").await.unwrap(), Some(6));
        assert_eq!(
            admin.create("t.fresh", &spec).await.unwrap(),
            Created::AlreadyThere
        );
    }
}
