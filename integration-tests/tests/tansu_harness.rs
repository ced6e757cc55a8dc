#![cfg(feature = "tansu")]
//! The broker fixture itself: a tansu process starts, takes topics and records, and
//! keeps them across SIGKILL and restart on the same port. If these fail, the
//! replication suites' failures say nothing about xsite.

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use xsite_integration_tests::procs::{site_topic, Tansu};

async fn produce(broker: &Tansu, topic: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    for i in 0..count {
        let key = format!("k{i}");
        let record = FutureRecord::to(topic).key(&key).payload("v");
        producer.send(record, Duration::from_secs(10)).await.unwrap_or_else(|(e, _)| panic!("produce #{i}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_keeps_acknowledged_records_across_kill9_and_restart() {
    let mut broker = Tansu::start().await;
    let topic = site_topic("harness");
    broker.create_site_topics("harness", 2).await;
    broker.create_topic(&topic, 2).await; // again: already exists is fine
    produce(&broker, &topic, 50).await;
    let before: i64 = broker.end_offsets(&topic).await.iter().sum();
    assert_eq!(before, 50, "every acknowledged record is in the topic");

    let port = broker.port();
    broker.kill();
    assert!(!broker.is_running());
    broker.restart().await;
    assert_eq!(broker.port(), port, "restart keeps the port");
    let after: i64 = broker.end_offsets(&topic).await.iter().sum();
    assert_eq!(after, 50, "records survive SIGKILL\n{}", broker.log_tail());
    produce(&broker, &topic, 10).await;
    assert_eq!(broker.end_offsets(&topic).await.iter().sum::<i64>(), 60);
}
