//! The engine's write paths end to end: remote applies (LWW, counters from two
//! sites, unknown caches, skew), read-only caches, the memory limit, databases,
//! node commands, and the maintenance loop.

use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use xsite_node::commands;
use xsite_node::config::{CacheConfig, Config, Topology};
use xsite_node::engine::Engine;
use xsite_node::resp::Frame;
use xsite_node::wal::{Durability, Lsn};
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{decode, CacheName, Hlc, LogEntry, Op, SiteId};

fn config(dir: &Path, site: &str) -> Config {
    let mut c = Config::for_site(SiteId::new(site).unwrap());
    c.data_dir = dir.to_path_buf();
    c.durability = Durability::No;
    c
}

fn default_cache() -> CacheName {
    CacheName::new("default").unwrap()
}

async fn run_db(engine: &Engine, db: usize, args: &[&str]) -> Frame {
    let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
    commands::execute(engine, db, &args).await.expect("known command")
}

async fn run(engine: &Engine, args: &[&str]) -> Frame {
    run_db(engine, 0, args).await
}

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn put_entry(origin: &str, hlc: Hlc, key: &str, value: &str) -> LogEntry {
    LogEntry {
        id: LogEntry::new_id(),
        origin: SiteId::new(origin).unwrap(),
        seq: 1,
        hlc,
        epoch: 0,
        cache: default_cache(),
        op: Op::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            expire_at_ms: None,
            keep_ttl: false,
        },
    }
}

/// Entries this engine originated after `from`, as its shipper would read them.
async fn local_entries(engine: &Engine, from: Lsn) -> Vec<LogEntry> {
    let records = engine.wal().read_from(from, usize::MAX, usize::MAX).await.unwrap();
    records
        .into_iter()
        .map(|(lsn, payload)| {
            let e = decode(&payload).unwrap();
            assert!(e.origin != *engine.site() || e.seq == lsn.0, "a local entry carries its LSN");
            e
        })
        .filter(|e| e.origin == *engine.site())
        .collect()
}

#[tokio::test]
async fn remote_conflicts_resolve_last_write_wins_in_any_order() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let now = wall_clock_ms();
    let older = put_entry("site-b", Hlc::new(now, 0), "k", "from-b");
    let newer = put_entry("site-c", Hlc::new(now, 0), "k", "from-c"); // same time: site id breaks the tie
    let delete = LogEntry { op: Op::Delete { key: b"k".to_vec() }, hlc: Hlc::new(now, 1), ..older.clone() };
    let mut results = Vec::new();
    for (dir, order) in dirs.iter().zip([[&older, &newer, &delete], [&delete, &newer, &older]]) {
        let engine = Engine::open(&config(dir.path(), "site-a")).await.unwrap();
        let start = engine.wal().last_lsn();
        let mut changed = Vec::new();
        for e in order {
            changed.push(engine.apply_remote((*e).clone()).await.unwrap());
        }
        assert!(!engine.apply_remote(older.clone()).await.unwrap(), "a duplicate changes nothing");
        let appended = changed.iter().filter(|c| **c).count() as u64;
        assert_eq!(engine.wal().last_lsn().0 - start.0, appended, "only what changed is appended");
        assert_eq!(run(&engine, &["GET", "k"]).await, Frame::Null, "the delete is the newest write");
        assert_eq!(engine.stats().caches[0].tombstones, 1);
        assert!(engine.clock().now() > delete.hlc, "remote timestamps move the clock");
        results.push(engine.export(&default_cache()));
    }
    assert_eq!(results[0], results[1]);

    // Without the delete, site-c wins the tie at every site.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&config(dir.path(), "site-a")).await.unwrap();
    engine.apply_remote(newer.clone()).await.unwrap();
    engine.apply_remote(older.clone()).await.unwrap();
    assert_eq!(run(&engine, &["GET", "k"]).await, bulk("from-c"));
}

#[tokio::test]
async fn counters_from_two_sites_add_up() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Engine::open(&config(da.path(), "site-a")).await.unwrap();
    let b = Engine::open(&config(db.path(), "site-b")).await.unwrap();
    assert_eq!(run(&a, &["SET", "n", "100"]).await, Frame::ok());
    for e in local_entries(&a, Lsn::FIRST).await {
        b.apply_remote(e).await.unwrap();
    }
    let (a_mark, b_mark) = (a.wal().last_lsn().next(), b.wal().last_lsn().next());
    // Concurrent increments at both sites, each seeing only its own.
    assert_eq!(run(&a, &["INCRBY", "n", "5"]).await, Frame::Integer(105));
    assert_eq!(run(&b, &["INCRBY", "n", "7"]).await, Frame::Integer(107));
    assert_eq!(run(&b, &["INCR", "n"]).await, Frame::Integer(108));
    assert_eq!(run(&a, &["INCR", "hits"]).await, Frame::Integer(1));
    let (from_a, from_b) = (local_entries(&a, a_mark).await, local_entries(&b, b_mark).await);
    // Deliver in reverse order, twice: order and duplicates do not matter.
    for e in from_a.iter().rev().chain(from_a.iter()) {
        b.apply_remote(e.clone()).await.unwrap();
    }
    for e in from_b.iter().rev().chain(from_b.iter()) {
        a.apply_remote(e.clone()).await.unwrap();
    }
    for engine in [&a, &b] {
        assert_eq!(run(engine, &["GET", "n"]).await, bulk("113"));
        assert_eq!(run(engine, &["GET", "hits"]).await, bulk("1"));
    }
    assert_eq!(a.digest(&default_cache()), b.digest(&default_cache()));
    assert_eq!(a.live_contents(&default_cache()), b.live_contents(&default_cache()));
}

#[tokio::test]
async fn unknown_cache_is_a_rejection_and_skew_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&config(dir.path(), "site-a")).await.unwrap();
    let mut e = put_entry("site-b", Hlc::new(wall_clock_ms(), 0), "k", "v");
    e.cache = CacheName::new("nope").unwrap();
    let err = engine.apply_remote(e).await.unwrap_err();
    assert!(err.is_rejection(), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");

    let far = Hlc::new(wall_clock_ms() + 3_600_000, 0);
    assert!(engine.apply_remote(put_entry("site-b", far, "k", "future")).await.unwrap());
    assert_eq!(engine.stats().skew_exceeded_total, 1);
    assert_eq!(run(&engine, &["GET", "k"]).await, bulk("future"), "still applied");
    assert!(engine.clock().last() < far, "the clock did not follow past the bound");
}

#[tokio::test]
async fn read_only_caches_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&config(dir.path(), "site-a")).await.unwrap();
    run(&engine, &["SET", "k", "v"]).await;
    engine.set_read_only(&default_cache(), true);
    assert!(engine.is_read_only(&default_cache()));
    let readonly = Frame::Error("READONLY You can't write against a read only replica.".into());
    for cmd in
        [&["SET", "k", "w"][..], &["DEL", "k"], &["INCR", "n"], &["EXPIRE", "k", "1"], &["FLUSHDB"], &["FLUSHALL"]]
    {
        assert_eq!(run(&engine, cmd).await, readonly, "{cmd:?}");
    }
    assert_eq!(run(&engine, &["GET", "k"]).await, bulk("v"));
    assert_eq!(
        run(&engine, &["SET", "k"]).await,
        Frame::Error("ERR wrong number of arguments for 'set' command".into())
    );
    // Remote entries still apply to a read-only cache.
    assert!(engine.apply_remote(put_entry("site-b", engine.clock().now(), "k", "remote")).await.unwrap());
    assert_eq!(run(&engine, &["GET", "k"]).await, bulk("remote"));
    engine.set_read_only(&default_cache(), false);
    assert_eq!(run(&engine, &["SET", "k", "w"]).await, Frame::ok());
}

#[tokio::test]
async fn active_passive_caches_start_read_only_off_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "site-a");
    c.caches[0].topology = Topology::ActivePassive;
    c.caches[0].primary = Some(SiteId::new("site-b").unwrap());
    let engine = Engine::open(&c).await.unwrap();
    assert!(engine.is_read_only(&default_cache()));
}

#[tokio::test]
async fn the_memory_limit_refuses_local_growth_and_holds_remote_growth_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "site-a");
    c.store.memory_bytes_max = 1_000;
    let engine = Engine::open(&c).await.unwrap();
    assert_eq!(run(&engine, &["SET", "small", "v"]).await, Frame::ok());
    let big = "x".repeat(5_000);
    let oom = Frame::Error("OOM command not allowed when used memory > 'maxmemory'.".into());
    assert_eq!(run(&engine, &["SET", "big", &big]).await, oom);
    assert_eq!(run(&engine, &["GET", "big"]).await, Frame::Null);
    let remote = put_entry("site-b", engine.clock().now(), "remote", &big);
    let held = engine.apply_remote(remote.clone()).await;
    assert!(matches!(held, Err(xsite_node::engine::EngineError::OverMemory { .. })), "{held:?}");
    assert_eq!(run(&engine, &["GET", "remote"]).await, Frame::Null, "a remote entry past the limit waits");
    assert!(engine.stats().memory_bytes <= 1_000);
    let remote_delete = xsite_schemas::LogEntry {
        op: xsite_schemas::Op::Delete { key: b"small".to_vec() },
        hlc: engine.clock().now(),
        ..remote.clone()
    };
    assert!(engine.apply_remote(remote_delete).await.unwrap(), "a remote delete always applies");
    assert_eq!(run(&engine, &["GET", "small"]).await, Frame::Null);
    assert_eq!(run(&engine, &["SET", "big", &big]).await, oom);
    assert_eq!(run(&engine, &["SET", "small", "v"]).await, Frame::ok());
    assert_eq!(run(&engine, &["DEL", "small"]).await, Frame::Integer(1), "deletes are always allowed");
    assert_eq!(
        run(&engine, &["CONFIG", "GET", "maxmemory"]).await,
        Frame::Map(vec![(bulk("maxmemory"), bulk("1000"))])
    );
}

#[tokio::test]
async fn databases_route_to_caches_and_node_commands_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "site-a");
    let mut second: CacheConfig = c.caches[0].clone();
    second.name = CacheName::new("sessions").unwrap();
    second.db = 3;
    c.caches.push(second);
    let engine = Engine::open(&c).await.unwrap();
    assert!(engine.db_exists(0) && engine.db_exists(3) && !engine.db_exists(1));
    assert_eq!(engine.cache_for_db(3).map(CacheName::as_str), Some("sessions"));
    run_db(&engine, 0, &["SET", "k", "zero"]).await;
    run_db(&engine, 3, &["SET", "k", "three"]).await;
    run_db(&engine, 3, &["SET", "j", "three", "EX", "100"]).await;
    assert_eq!(run_db(&engine, 0, &["GET", "k"]).await, bulk("zero"));
    assert_eq!(run_db(&engine, 3, &["GET", "k"]).await, bulk("three"));
    assert_eq!(run_db(&engine, 1, &["GET", "k"]).await, Frame::Error("ERR DB index is out of range".into()));
    assert_eq!(commands::execute(&engine, 0, &[Bytes::from("NOSUCHCOMMAND")]).await, None);

    let Frame::Bulk(info) = run(&engine, &["INFO"]).await else { panic!("INFO is a bulk string") };
    let info = String::from_utf8(info.to_vec()).unwrap();
    for needle in [
        "# Server\r\n",
        "redis_version:",
        "# Keyspace\r\n",
        "db0:keys=1,expires=0,avg_ttl=0\r\n",
        "db3:keys=2,expires=1,avg_ttl=0\r\n",
    ] {
        assert!(info.contains(needle), "{needle:?} not in {info}");
    }
    let Frame::Bulk(memory) = run(&engine, &["INFO", "memory"]).await else { panic!() };
    assert!(memory.starts_with(b"# Memory\r\nused_memory:"));
    assert_eq!(run(&engine, &["CONFIG", "GET", "save"]).await, Frame::Map(vec![]));
    assert_eq!(run(&engine, &["CONFIG", "GET", "appendonly"]).await, Frame::Map(vec![]));
    let Frame::Array(time) = run(&engine, &["TIME"]).await else { panic!() };
    assert_eq!(time.len(), 2);

    assert_eq!(run(&engine, &["FLUSHALL"]).await, Frame::ok());
    assert_eq!(run_db(&engine, 3, &["DBSIZE"]).await, Frame::Integer(0));
    assert_eq!(run_db(&engine, 0, &["DBSIZE"]).await, Frame::Integer(0));
    let tombstones: u64 = engine.stats().caches.iter().map(|c| c.tombstones).sum();
    assert_eq!(tombstones, 3, "a delete per key, kept as tombstones");
    assert_eq!(engine.gc_tombstones(&default_cache(), engine.clock().now()), 1);
    assert_eq!(engine.stats().caches[0].tombstones, 0);
}

#[tokio::test]
async fn many_writes_in_one_command_are_all_logged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&config(dir.path(), "site-a")).await.unwrap();
    let mut mset = vec!["MSET".to_string()];
    for i in 0..3000 {
        mset.push(format!("key:{i}"));
        mset.push(i.to_string());
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(run(&engine, &args).await, Frame::ok());
    assert_eq!(engine.wal().last_lsn(), Lsn(3000));
    assert_eq!(run(&engine, &["FLUSHDB"]).await, Frame::ok());
    assert_eq!(engine.wal().last_lsn(), Lsn(6000));
    let entries = local_entries(&engine, Lsn::FIRST).await;
    assert_eq!(entries.len(), 6000);
}

#[tokio::test]
async fn maintenance_expires_keys_and_takes_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "site-a");
    c.store.expiry_interval_ms = 5;
    c.store.snapshot_wal_bytes = 1;
    let engine = Engine::open(&c).await.unwrap();
    let past = (wall_clock_ms() - 1).to_string();
    run(&engine, &["SET", "k", "v", "PXAT", &past]).await;
    run(&engine, &["SET", "live", "v"]).await;
    assert_eq!(engine.stats().caches[0].keys, 2, "not yet reclaimed");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&engine).run_maintenance(cancel.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.stats().caches[0].keys != 1 || engine.last_snapshot().0 != engine.wal().last_lsn() {
        assert!(std::time::Instant::now() < deadline, "maintenance did not run: {:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(engine.stats().expired_keys_total, 1);
    cancel.cancel();
    task.await.unwrap();
}
