//! Push-state publishes what the shipper publishes: every message of a site's topic,
//! shipped or pushed, carries `xsite-origin` (the entry's origin) and `xsite-format`.

mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use support::{default_cache, Mesh, WAIT};
use xsite_schemas::{decode, format_version_of, Op, KAFKA_HEADER_FORMAT, KAFKA_HEADER_ORIGIN};

/// The messages of `topic` from its start, read until `until` holds of them: per
/// message `(xsite-origin, xsite-format, the entry's origin, whether it is a heartbeat)`.
fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    until: impl Fn(&[(String, String, String, bool)]) -> bool,
) -> Vec<(String, String, String, bool)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "push-state-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !until(&seen) {
        assert!(Instant::now() < deadline, "topic {topic} lacks the pushed entries; read {seen:?}");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.unwrap();
        let entry = decode(m.payload().unwrap()).unwrap();
        let header = |name: &str| {
            let headers = m.headers().expect("the message has headers");
            let h = headers.iter().find(|h| h.key == name).unwrap_or_else(|| panic!("no {name} header"));
            String::from_utf8(h.value.unwrap().to_vec()).unwrap()
        };
        let heartbeat = matches!(entry.op, Op::Heartbeat { .. });
        assert_eq!(
            header(KAFKA_HEADER_FORMAT),
            format_version_of(&entry).to_string(),
            "xsite-format names the entry's version"
        );
        seen.push((header(KAFKA_HEADER_ORIGIN), header(KAFKA_HEADER_FORMAT), entry.origin.to_string(), heartbeat));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_entries_carry_the_shippers_headers() {
    let mesh = Mesh::start(2).await;
    let mut a = mesh.conn(0).await;
    let mut b = mesh.conn(1).await;
    let _: () = a.set("from-a", "1").await.unwrap();
    let _: () = b.set("from-b", "2").await.unwrap();
    mesh.converged().await;

    // site-a's topic holds only site-a's entries until it pushes its state, which
    // holds site-b's write too.
    let config = &mesh.configs[0];
    let pushed = xsite_node::replication::push_state(config, &mesh.node(0).engine, &default_cache()).await.unwrap();
    assert!(pushed >= 2, "both keys are pushed: {pushed}");
    let topic = config.topic_for(&config.site).unwrap();
    let partitions = config.kafka.as_ref().unwrap().partitions;
    // (Partitions also start with the shipper's head markers, which are heartbeats.)
    let both = |seen: &[(String, String, String, bool)]| {
        seen.iter().any(|(_, _, origin, _)| origin == "site-b")
            && seen.iter().any(|(_, _, origin, heartbeat)| origin == "site-a" && !heartbeat)
    };
    let seen = read_topic(mesh.kafka.bootstrap_servers(), &topic, partitions, both);

    for (origin_header, _, origin, _) in &seen {
        assert_eq!(origin_header, origin, "xsite-origin names the entry's origin: {seen:?}");
    }
    assert!(seen.iter().any(|(_, _, origin, heartbeat)| origin == "site-a" && !heartbeat), "{seen:?}");
    mesh.shutdown().await;
}
