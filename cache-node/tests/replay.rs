//! Disaster recovery: a site rebuilt from the Kafka log (its own topic and the other
//! sites') holds what the surviving site holds; with `--until-ms`, only what was
//! written up to that time; and a node started on the rebuilt directory neither
//! ships the replayed entries again nor consumes them twice.

use redis::AsyncCommands;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_node::demo::{create_mock_topics, mesh_configs};
use xsite_node::node;
use xsite_node::replay::replay;
use xsite_node::wal::Durability;
use xsite_schemas::kafka::mock::MockKafka;
use xsite_schemas::CacheName;

const WAIT: Duration = Duration::from_secs(30);

async fn conn(addr: std::net::SocketAddr) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/")).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_site_is_rebuilt_from_kafka_and_to_a_point_in_time() {
    let kafka = MockKafka::start(1).unwrap();
    let root = tempfile::tempdir().unwrap();
    let configs = mesh_configs(2, kafka.bootstrap_servers(), root.path(), Durability::Always, 0);
    create_mock_topics(&kafka, &configs).unwrap();
    let cancel = CancellationToken::new();
    let a = node::start(configs[0].clone(), cancel.clone()).await.unwrap();
    let b = node::start(configs[1].clone(), cancel.clone()).await.unwrap();
    let (mut ca, mut cb) = (conn(a.resp_addr).await, conn(b.resp_addr).await);
    for i in 0..40 {
        let _: () = ca.set(format!("a{i}"), i).await.unwrap();
        let _: () = cb.set(format!("b{i}"), i).await.unwrap();
    }
    let _: i64 = ca.incr("n", 5).await.unwrap();
    let _: i64 = cb.incr("n", 7).await.unwrap();
    let _: () = ca.del("a0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = xsite_schemas::hlc::wall_clock_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..10 {
        let _: () = ca.set(format!("late{i}"), i).await.unwrap();
    }
    let cache = CacheName::new("default").unwrap();
    let deadline = Instant::now() + WAIT;
    while a.engine.live_contents(&cache) != b.engine.live_contents(&cache) {
        assert!(Instant::now() < deadline, "sites did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = b.engine.live_contents(&cache);
    assert_eq!(expected.len(), 40 + 39 + 1 + 10);
    assert_eq!(expected[&b"n".to_vec()], b"12");

    // Site A is lost; rebuild it into a fresh directory from the log.
    let mut rebuilt = configs[0].clone();
    rebuilt.data_dir = root.path().join("site-a-rebuilt");
    let report = replay(&rebuilt, None).await.unwrap();
    assert!(report.applied > 0);
    let node_a = node::start(rebuilt.clone(), cancel.clone()).await.unwrap();
    assert_eq!(node_a.engine.live_contents(&cache), expected, "rebuilt site holds what the survivor holds");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let repl = node_a.replication.as_ref().unwrap();
    assert_eq!(
        repl.shipper_stats.shipped_entries.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing shipped twice"
    );
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let consumed =
        repl.consumer_stats.values().map(|s| load(&s.applied_changed) + load(&s.applied_unchanged)).sum::<u64>();
    assert_eq!(consumed, 0, "nothing consumed twice");

    // A point in time: everything up to `cut`, nothing after.
    let mut pitr = configs[0].clone();
    pitr.data_dir = root.path().join("site-a-pitr");
    let report = replay(&pitr, Some(cut)).await.unwrap();
    assert_eq!(report.skipped_after_until, 10);
    let engine = xsite_node::engine::Engine::open(&pitr).await.unwrap();
    let contents = engine.live_contents(&cache);
    assert_eq!(contents.len(), 40 + 39 + 1);
    assert!(!contents.contains_key(b"late0".as_slice()));
    drop(engine);

    // Replay refuses a directory that is not empty.
    let err = replay(&rebuilt, None).await.unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");

    cancel.cancel();
    for n in [a, b, node_a] {
        tokio::time::timeout(WAIT, n.wait()).await.unwrap().unwrap();
    }
}
