//! Kafka client setup for every xsite client, in one place: the properties every
//! client of a cluster has, the producer every xsite message goes through, the
//! headers every message carries, and topic creation.
//!
//! - **Every client** ([`client_config`]): `bootstrap.servers`,
//!   `reconnect.backoff.max.ms=500` (delivery resumes ~0.1 s after an outage instead
//!   of ~8 s), then the operator's extra properties (security settings…).
//! - **Every producer** ([`producer_config`], then [`producer`]): the log shipper,
//!   push-state and the consumer's dead letters. Idempotent with `acks=all` —
//!   [`producer`] sets both whatever it is given, so no producer of xsite can lose or
//!   reorder what it sent on a retry; batching (`linger.ms`), compression, the
//!   delivery timeout and `message.max.bytes` come from [`ProducerSettings`].
//! - **Every message a site publishes** carries [`headers`]: `xsite-origin` (the site
//!   that accepted the write: the entry's `origin`) and `xsite-format` (the entry
//!   format version); a heartbeat also `xsite-reads` ([`heartbeat_headers`]: the
//!   newest entry format version this build reads, which tells other sites whether
//!   they may send it transaction units). The names are in `xsite_schemas`.
//! - **Topics** ([`create_topics`]): created if missing; one that exists is fine.
//!
//! - **An in-process cluster** for the demo and tests ([`mock::MockKafka`],
//!   librdkafka's mock broker).
//!
//! It sits with the formats (behind the `kafka` feature, so a reader of entries
//! needs no librdkafka) because every role uses it: the shipper, the consumer (for
//! dead letters) and the node (push-state, topic creation), none depending on
//! another role for it.

pub mod mock;

use crate::{SiteId, FORMAT_VERSION, KAFKA_HEADER_FORMAT, KAFKA_HEADER_ORIGIN, KAFKA_HEADER_READS};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest wait between reconnection attempts to a broker, in milliseconds.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 500;
/// Timeout of the broker's topic-creation operation and of its request, in milliseconds.
pub const TOPIC_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Longest [`create_topics`] waits for an answer at all, in milliseconds.
pub const TOPIC_CREATE_TIMEOUT_MS: u64 = 30_000;

/// How every producer sends (from the node's `[kafka]` configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSettings {
    /// `linger.ms`: how long a message waits for others to share its batch.
    pub linger_ms: u64,
    /// `compression.type`: none | gzip | lz4 | zstd.
    pub compression: String,
    /// `message.timeout.ms`: how long the producer retries one message.
    pub message_timeout_ms: u64,
    /// `message.max.bytes`: room for the largest entry a write may become, its key,
    /// headers and framing.
    pub message_bytes_max: usize,
}

/// librdkafka properties common to every client of the cluster at `bootstrap`;
/// `properties` (the operator's) come last and win.
pub fn client_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MS_MAX.to_string());
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// A producer's properties: `client` with `settings` and the producer guarantees.
pub fn producer_config(client: ClientConfig, settings: &ProducerSettings) -> ClientConfig {
    let mut c = client;
    c.set("linger.ms", settings.linger_ms.to_string())
        .set("compression.type", &settings.compression)
        .set("message.timeout.ms", settings.message_timeout_ms.to_string())
        .set("message.max.bytes", settings.message_bytes_max.to_string());
    with_guarantees(&mut c);
    c
}

/// Every xsite producer is idempotent and waits for every in-sync replica.
fn with_guarantees(config: &mut ClientConfig) {
    config.set("enable.idempotence", "true").set("acks", "all");
}

/// Creates a producer from `config` (see [`producer_config`]), idempotent with
/// `acks=all` whatever `config` says.
pub fn producer(config: &ClientConfig) -> KafkaResult<FutureProducer> {
    let mut c = config.clone();
    with_guarantees(&mut c);
    c.create()
}

/// The headers of every message a site publishes for an entry accepted at `origin`
/// in format `version` (heartbeats and markers are version 1).
pub fn headers(origin: &SiteId, version: u32) -> OwnedHeaders {
    let format = version.to_string();
    OwnedHeaders::new_with_capacity(2)
        .insert(Header { key: KAFKA_HEADER_ORIGIN, value: Some(origin.as_str()) })
        .insert(Header { key: KAFKA_HEADER_FORMAT, value: Some(format.as_str()) })
}

/// The headers of a heartbeat (and a partition's head marker) of `origin`: those of
/// a version-1 entry, and `xsite-reads`, the newest entry format version this build
/// reads ([`FORMAT_VERSION`]). Other sites send transaction units to this one only
/// while its latest heartbeat says it reads them.
pub fn heartbeat_headers(origin: &SiteId) -> OwnedHeaders {
    let reads = FORMAT_VERSION.to_string();
    headers(origin, 1).insert(Header { key: KAFKA_HEADER_READS, value: Some(reads.as_str()) })
}

/// Headers the node adds to every heartbeat it sends from now on, as it sets them
/// (this site taken offline, its failover state): advertisements, not part of any
/// entry, so they need no format version.
#[derive(Debug, Default)]
pub struct BeatHeaders {
    extra: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl BeatHeaders {
    /// Sets the header `key` on later heartbeats (`None`: removes it).
    pub fn set(&self, key: &'static str, value: Option<String>) {
        let mut extra = self.extra.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(v) => extra.insert(key, v),
            None => extra.remove(key),
        };
    }

    /// `base` with every header set now.
    pub fn apply(&self, base: &OwnedHeaders) -> OwnedHeaders {
        let extra = self.extra.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        extra.iter().fold(base.clone(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_str()) }))
    }
}

/// A topic to create: its name, number of partitions and replication factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Copies of each partition; `-1` leaves it to the cluster's default
    /// (`default.replication.factor`), which `acks=all` then waits for.
    pub replication: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("creating the kafka admin client: {0}")]
    Client(#[source] KafkaError),
    #[error("creating topics timed out after {} s (is kafka at {bootstrap} reachable?)", TOPIC_CREATE_TIMEOUT_MS / 1000)]
    Timeout { bootstrap: String },
    #[error("creating topics: {0}")]
    Request(#[source] KafkaError),
    #[error("creating topic {topic}: {code}")]
    Topic { topic: String, code: RDKafkaErrorCode },
}

/// Creates `topics` on the cluster of `client` where they do not exist yet.
pub async fn create_topics(client: &ClientConfig, topics: &[TopicSpec]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(TopicError::Client)?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication))).collect();
    let request = Duration::from_millis(TOPIC_REQUEST_TIMEOUT_MS);
    let opts = AdminOptions::new().operation_timeout(Some(request)).request_timeout(Some(request));
    let bootstrap = || client.get("bootstrap.servers").unwrap_or_default().to_string();
    let results =
        tokio::time::timeout(Duration::from_millis(TOPIC_CREATE_TIMEOUT_MS), admin.create_topics(&new, &opts))
            .await
            .map_err(|_| TopicError::Timeout { bootstrap: bootstrap() })?
            .map_err(TopicError::Request)?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created topic"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %t, "topic exists"),
            Err((topic, code)) => return Err(TopicError::Topic { topic, code }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn settings() -> ProducerSettings {
        ProducerSettings {
            linger_ms: 5,
            compression: "lz4".into(),
            message_timeout_ms: 30_000,
            message_bytes_max: 2_000_000,
        }
    }

    #[test]
    fn operator_properties_win_over_common_ones() {
        let props = BTreeMap::from([("reconnect.backoff.max.ms".to_string(), "100".to_string())]);
        let c = client_config("k:9092", &props);
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(c.get("reconnect.backoff.max.ms"), Some("100"));
    }

    #[test]
    fn every_producer_is_idempotent_with_acks_all() {
        let props = BTreeMap::from([("acks".to_string(), "1".to_string())]);
        let c = producer_config(client_config("k:9092", &props), &settings());
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("linger.ms"), Some("5"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("message.timeout.ms"), Some("30000"));
        assert_eq!(c.get("message.max.bytes"), Some("2000000"));
    }

    #[test]
    fn headers_name_the_origin_and_the_format() {
        let h = headers(&SiteId::new("site-a").unwrap(), 1);
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(pairs, [("xsite-origin", Some(&b"site-a"[..])), ("xsite-format", Some(&b"1"[..]))]);
        let h = heartbeat_headers(&SiteId::new("site-a").unwrap());
        let reads = h.iter().find(|h| h.key == "xsite-reads").and_then(|h| h.value);
        let newest = FORMAT_VERSION.to_string();
        assert_eq!(reads, Some(newest.as_bytes()), "a heartbeat says which entry versions this build reads");
        // What the node sets at run time goes on the next heartbeats, and off again.
        let extras = BeatHeaders::default();
        extras.set(crate::KAFKA_HEADER_OFFLINE, Some("1".into()));
        let offline = extras.apply(&h);
        assert_eq!(offline.iter().find(|h| h.key == "xsite-offline").and_then(|h| h.value), Some(&b"1"[..]));
        extras.set(crate::KAFKA_HEADER_OFFLINE, None);
        assert!(extras.apply(&h).iter().all(|h| h.key != "xsite-offline"));
    }
}
