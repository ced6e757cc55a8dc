//! Multi-site tests in one process on librdkafka's mock cluster: sites replicate
//! both ways, concurrent writes resolve the same everywhere, deletes beat late puts,
//! TTLs and counters replicate, a broker outage loses nothing, a restarted node
//! resumes from its sled checkpoint, active-passive promotion fences the old
//! primary, a 3-site mesh does not loop, and poison messages are dead-lettered.

mod support;

use redis::AsyncCommands;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{wait_get, Mesh, WAIT};
use xsite_node::config::Topology;
use xsite_node::wal::Durability;
use xsite_schemas::SiteId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_both_ways_with_binary_keys_and_deletes() {
    let mesh = Mesh::start(2).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = a.set("from-a", "1").await.unwrap();
    let _: () = b.set("from-b", "2").await.unwrap();
    let bin_key: &[u8] = &[0, 0xff, b'\r', b'\n'];
    let _: () = a.set(bin_key, &[0xc3u8, 0x28, 0][..]).await.unwrap();
    wait_get(&mut b, b"from-a", Some(b"1")).await;
    wait_get(&mut a, b"from-b", Some(b"2")).await;
    wait_get(&mut b, bin_key, Some(&[0xc3, 0x28, 0])).await;
    let _: () = b.del("from-a").await.unwrap();
    wait_get(&mut a, b"from-a", None).await;
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 2);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_delete_put_races_resolve_the_same_everywhere() {
    let mesh = Mesh::start(2).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let writes_a = async {
        for i in 0..300 {
            let key = format!("k{}", i % 20);
            if i % 7 == 0 {
                let _: () = a.del(&key).await.unwrap();
            } else {
                let _: () = a.set(&key, format!("a{i}")).await.unwrap();
            }
        }
    };
    let writes_b = async {
        for i in 0..300 {
            let key = format!("k{}", i % 20);
            if i % 5 == 0 {
                let _: () = b.del(&key).await.unwrap();
            } else {
                let _: () = b.set(&key, format!("b{i}")).await.unwrap();
            }
        }
    };
    tokio::join!(writes_a, writes_b);
    mesh.converged().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_counters_replicate() {
    let mesh = Mesh::start(2).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = redis::cmd("SET").arg("session").arg("x").arg("PX").arg(1500).query_async(&mut a).await.unwrap();
    let _: () = a.set("kept", "y").await.unwrap();
    let _: () = a.expire("kept", 100).await.unwrap();
    let _: () = a.persist("kept").await.unwrap();
    wait_get(&mut b, b"session", Some(b"x")).await;
    let pttl: i64 = b.pttl("session").await.unwrap();
    assert!(pttl > 0 && pttl <= 1500, "pttl at b: {pttl}");
    let bump_a = async {
        for _ in 0..100 {
            let _: i64 = a.incr("visits", 1).await.unwrap();
        }
    };
    let bump_b = async {
        for _ in 0..100 {
            let _: i64 = b.incr("visits", 1).await.unwrap();
        }
    };
    tokio::join!(bump_a, bump_b);
    wait_get(&mut a, b"visits", Some(b"200")).await;
    wait_get(&mut b, b"visits", Some(b"200")).await;
    // Both sites expire the key at the same absolute time.
    wait_get(&mut a, b"session", None).await;
    wait_get(&mut b, b"session", None).await;
    let ttl: i64 = b.ttl("kept").await.unwrap();
    assert_eq!(ttl, -1, "PERSIST replicated");
    mesh.converged().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing_and_writes_keep_working() {
    let mesh = Mesh::start(2).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = a.set("before", "1").await.unwrap();
    wait_get(&mut b, b"before", Some(b"1")).await;
    mesh.kafka.set_all(false).unwrap();
    for i in 0..200 {
        let _: () = a.set(format!("during-{i}"), i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.kafka.set_all(true).unwrap();
    wait_get(&mut b, b"during-199", Some(b"199")).await;
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 201);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_resumes_from_its_checkpoint() {
    let mut mesh = Mesh::start(2).await;
    let mut a = mesh.conn(0).await;
    for i in 0..50 {
        let _: () = a.set(format!("first-{i}"), i).await.unwrap();
    }
    let mut b = mesh.conn(1).await;
    wait_get(&mut b, b"first-49", Some(b"49")).await;
    mesh.stop(1).await;
    for i in 0..70 {
        let _: () = a.set(format!("second-{i}"), i).await.unwrap();
    }
    mesh.restart(1).await;
    let mut b = mesh.conn(1).await;
    wait_get(&mut b, b"second-69", Some(b"69")).await;
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 120);
    let stats = &mesh.node(1).replication.as_ref().unwrap().consumer_stats[&SiteId::new("site-a").unwrap()];
    let applied = || stats.applied_changed.load(Ordering::Relaxed) + stats.applied_unchanged.load(Ordering::Relaxed);
    let deadline = Instant::now() + WAIT;
    while applied() < 70 {
        assert!(Instant::now() < deadline, "applied {}", applied());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(applied(), 70, "only the entries written while it was down are consumed again");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_site_mesh_does_not_loop() {
    let mesh = Mesh::start(3).await;
    let mut conns = [mesh.conn(0).await, mesh.conn(1).await, mesh.conn(2).await];
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..30 {
            let _: () = c.set(format!("s{i}-{j}"), j).await.unwrap();
        }
    }
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 90);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let repl = mesh.node(i).replication.as_ref().unwrap();
        let shipped = repl.shipper_stats.shipped_entries.load(Ordering::Relaxed);
        assert_eq!(shipped, 30, "site {i} ships only its own writes");
        for stats in repl.consumer_stats.values() {
            let entries =
                stats.applied_changed.load(Ordering::Relaxed) + stats.applied_unchanged.load(Ordering::Relaxed);
            assert_eq!(entries, 30, "each remote topic holds only its site's writes");
        }
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_passive_promotion_fences_the_old_primary_on_its_write_path() {
    let mesh = Mesh::start_with(2, |c| {
        c.caches[0].topology = Topology::ActivePassive;
        c.caches[0].primary = Some(SiteId::new("site-a").unwrap());
    })
    .await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = a.set("k", "from-primary").await.unwrap();
    let err = b.set::<_, _, ()>("k", "from-standby").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    wait_get(&mut b, b"k", Some(b"from-primary")).await;

    // The old primary is cut off from site-b's topic; site-b is promoted and writes.
    let repl_a = mesh.node(0).replication.clone().unwrap();
    repl_a.take_offline(&SiteId::new("site-b").unwrap()).await.unwrap();
    let admin_b = mesh.node(1).admin_addr.unwrap();
    let resp = reqwest::Client::new().post(format!("http://{admin_b}/caches/default/promote")).send().await.unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let _: () = b.set("k", "from-new-primary").await.unwrap();
    // The old primary, not knowing yet, writes later by the clock.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let _: () = a.set("k", "stale").await.unwrap();
    let _: () = a.set("only-stale", "x").await.unwrap();

    // Heal: site-a learns the new epoch and turns read-only. Its writes of the old
    // epoch reach site-b too (every site applies every entry): on k the new epoch
    // wins, a key only the old primary wrote survives at both alike.
    repl_a.bring_online(&SiteId::new("site-b").unwrap()).unwrap();
    let mut a = mesh.conn_after_epoch(0, 1).await;
    wait_get(&mut a, b"k", Some(b"from-new-primary")).await;
    let err = a.set::<_, _, ()>("k", "again").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    let mut b2 = mesh.conn(1).await;
    wait_get(&mut b2, b"only-stale", Some(b"x")).await;
    wait_get(&mut b2, b"k", Some(b"from-new-primary")).await;
    assert!(mesh.node(1).roles.stale_entries() >= 2, "the old epoch's entries are counted");
    let dead =
        &mesh.node(1).replication.as_ref().unwrap().consumer_stats[&SiteId::new("site-a").unwrap()].dead_lettered;
    assert_eq!(dead.load(Ordering::Relaxed), 0, "nothing is dead-lettered for its epoch");
    mesh.converged().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_replication_goes_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let mesh = Mesh::start(2).await;
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", mesh.kafka.bootstrap_servers()).create().unwrap();
    for payload in [&b"{garbage"[..], br#"{"version":99}"#] {
        producer
            .send(FutureRecord::to("xsite.site-a").key("p").payload(payload), Duration::from_secs(5))
            .await
            .unwrap();
    }
    producer.flush(Duration::from_secs(5)).unwrap();
    let mut a = mesh.conn(0).await;
    let _: () = a.set("after-poison", "ok").await.unwrap();
    let mut b = mesh.conn(1).await;
    wait_get(&mut b, b"after-poison", Some(b"ok")).await;
    let stats = &mesh.node(1).replication.as_ref().unwrap().consumer_stats[&SiteId::new("site-a").unwrap()];
    let deadline = Instant::now() + WAIT;
    while stats.dead_lettered.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "poison not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = reqwest::get(format!("http://{}/metrics", mesh.node(1).admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("xsite_consumer_dead_lettered_total{remote=\"site-a\"} 2"), "{metrics}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_forgotten_once_every_site_has_passed_them() {
    let mesh = Mesh::start_with(2, |c| c.store.tombstone_gc_interval_ms = 200).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    for i in 0..20 {
        let _: () = a.set(format!("gone-{i}"), i).await.unwrap();
    }
    let _: () = b.set("kept", "yes").await.unwrap();
    wait_get(&mut b, b"gone-19", Some(b"19")).await;
    for i in 0..20 {
        let _: () = a.del(format!("gone-{i}")).await.unwrap();
    }
    wait_get(&mut b, b"gone-19", None).await;
    let tombstones = |i: usize| mesh.node(i).engine.stats().caches.iter().map(|c| c.tombstones).sum::<u64>();
    assert_eq!((tombstones(0), tombstones(1)), (20, 20), "deletes leave tombstones first");
    // Heartbeats carry each site's watermarks; once both sites are past the deletes
    // (the local margin is 5 s), the tombstones go at both.
    let deadline = Instant::now() + Duration::from_secs(40);
    while tombstones(0) + tombstones(1) > 0 {
        assert!(Instant::now() < deadline, "tombstones left: a={} b={}", tombstones(0), tombstones(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 1, "live keys are untouched");
    let repl = mesh.node(1).replication.as_ref().unwrap();
    assert!(repl.consumer_stats[&SiteId::new("site-a").unwrap()].heartbeats.load(Ordering::Relaxed) > 0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_no_still_replicates() {
    let mesh = Mesh::start_with(2, |c| c.durability = Durability::No).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = a.set("k", "v").await.unwrap();
    wait_get(&mut b, b"k", Some(b"v")).await;
    mesh.shutdown().await;
}
