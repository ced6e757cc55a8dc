//! Faults every deployment meets, on the MockCluster mesh, each reproducing a way the
//! first cut lost writes, diverged or stalled:
//! - a value too big for one Kafka message is refused with an error naming
//!   `max_entry_bytes`, and never holds back the writes after it;
//! - a full disk under the WAL: local writes get `-MISCONF`, reads go on, remote
//!   apply pauses without changing the store or moving offsets, and everything
//!   resumes once there is space again — the writes applied meanwhile are in the WAL
//!   (they survive a restart).

mod support;

use redis::AsyncCommands;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::tmpfs::Tmpfs;
use support::{wait_get, Mesh, WAIT};
use xsite_schemas::SiteId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_big_for_one_kafka_message_is_refused_and_holds_nothing_back() {
    let mesh = Mesh::start(2).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let big = vec![b'x'; 2 << 20];
    let refused: redis::RedisResult<()> = a.set("big", &big).await;
    let err = refused.expect_err("a 2 MiB value cannot cross to another site in one message");
    assert!(err.to_string().contains("max_entry_bytes"), "the error names the limit: {err}");
    let refused: redis::RedisResult<()> =
        redis::cmd("MSET").arg("small").arg("1").arg("big").arg(&big).query_async(&mut a).await;
    assert!(refused.is_err(), "MSET with one value over the limit is refused as a whole");
    let appended: redis::RedisResult<i64> = a.append("grows", &big[..(1 << 20)]).await;
    assert!(appended.is_err(), "APPEND growing a value over the limit is refused");
    let _: () = a.set("after", "1").await.unwrap();
    wait_get(&mut b, b"after", Some(b"1")).await;
    for key in ["big", "small", "grows"] {
        let here: Option<Vec<u8>> = a.get(key).await.unwrap();
        assert_eq!(here, None, "{key}: a refused write changes nothing");
    }
    let shipper = &mesh.node(0).replication.as_ref().unwrap().shipper_stats;
    assert_eq!(shipper.undeliverable_entries.load(Ordering::Relaxed), 0);
    mesh.converged().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_pauses_apply_and_resumes_with_nothing_lost() {
    let b_data = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount_or_skip(&b_data.path().join("wal"), "4m", "full disk test") else { return };
    let b_dir = b_data.path().to_path_buf();
    let mut mesh = Mesh::start_with(2, |c| {
        if c.site.as_str() == "site-b" {
            c.data_dir = b_dir.clone();
        }
    })
    .await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = a.set("k0", "v0").await.unwrap();
    wait_get(&mut b, b"k0", Some(b"v0")).await;

    let filler = disk.fill();
    // The wal's last page may still take a few records; the first one that needs
    // a new page meets the full disk.
    let mut refusal = None;
    for i in 0..100 {
        let r: redis::RedisResult<()> = b.set(format!("local-{i}"), vec![b'l'; 1024]).await;
        if let Err(e) = r {
            refusal = Some(e);
            break;
        }
    }
    let err = refusal.expect("a write is refused once the disk is full");
    assert!(err.to_string().starts_with("MISCONF"), "{err}");
    let refused: redis::RedisResult<i64> = b.incr("local-counter", 1).await;
    assert!(refused.expect_err("still refused").to_string().starts_with("MISCONF"));
    let read: Option<String> = b.get("k0").await.unwrap();
    assert_eq!(read.as_deref(), Some("v0"), "reads go on");

    for i in 1..=20 {
        let _: () = a.set(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let site_a = SiteId::new("site-a").unwrap();
    let consumer = mesh.node(1).replication.as_ref().unwrap().consumer_stats[&site_a].clone();
    let deadline = Instant::now() + WAIT;
    while consumer.transient_errors.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "site-b never tried to apply site-a's writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..=20 {
        let got: Option<String> = b.get(format!("k{i}")).await.unwrap();
        assert_eq!(got, None, "k{i}: nothing reaches the store without reaching the wal");
    }

    std::fs::remove_file(&filler).unwrap();
    for i in 1..=20 {
        wait_get(&mut b, format!("k{i}").as_bytes(), Some(format!("v{i}").as_bytes())).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let r: redis::RedisResult<()> = b.set("after-space", "y").await;
        match r {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "writes did not resume: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_get(&mut a, b"after-space", Some(b"y")).await;
    let before = mesh.converged().await;

    // Everything site-b shows is in its wal: a restart brings back the same.
    mesh.stop(1).await;
    mesh.restart(1).await;
    let after = mesh.converged().await;
    assert_eq!(after, before);
    assert_eq!(after.get(&b"k20"[..]).map(Vec::as_slice), Some(&b"v20"[..]));
    mesh.shutdown().await;
    drop(disk);
}
