//! Sets as clients see them, on the real path of a node:
//!
//! - the same commands sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply compared: each set command's options and
//!   errors, WRONGTYPE both ways, TYPE, OBJECT ENCODING, SCAN TYPE, RENAME COPY DEL
//!   EXPIRE DUMP RESTORE of a set, and the keyspace events. Replies that Redis
//!   gives in no fixed order (SMEMBERS, SINTER, SUNION, SDIFF, SPOP and
//!   SRANDMEMBER of a count) are compared as sets of members;
//! - a seeded random sequence of set, hash and string commands on a few keys,
//!   compared reply by reply, then every set read back (the seed is printed on
//!   failure; `XSITE_SIM_SEED` replays one);
//! - two sites on MockCluster, cut from each other while they write: an `SADD` at
//!   one survives the concurrent `SREM` and `DEL` at the other (add-wins), what each
//!   removal saw stays removed, and both sites end identical;
//! - redis-py (PyPI) across two sites.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use xsite_node::node::RunningNode;
use xsite_schemas::SiteId;

use support::redis_server::{differences, events, RedisServer};

const WAIT: Duration = Duration::from_secs(30);
/// Commands of the random sequence.
const RANDOM_OPS: usize = 1500;

const FIXED: &[&str] = &[
    // SADD SREM SCARD SISMEMBER SMISMEMBER SMEMBERS
    "SADD s a b c",
    "SADD s a",
    "SADD s a d a",
    "SADD s",
    "SCARD s",
    "SCARD nosuch",
    "SISMEMBER s a",
    "SISMEMBER s z",
    "SISMEMBER nosuch a",
    "SMISMEMBER s a z d",
    "SMISMEMBER nosuch a",
    "SMISMEMBER s",
    "SMEMBERS s",
    "SMEMBERS nosuch",
    "SREM s a z",
    "SREM s z",
    "SREM nosuch a",
    "SREM s",
    "SMEMBERS s",
    "SREM s b c d",
    "EXISTS s",
    "TYPE s",
    // Integers: an intset.
    "SADD n 3 1 2 10",
    "SMEMBERS n",
    "OBJECT ENCODING n",
    "SADD n x",
    "OBJECT ENCODING n",
    "SREM n x",
    // SINTER SUNION SDIFF and their STOREs, SINTERCARD
    "SADD t 1 2 5 x",
    "SINTER n t",
    "SINTER n t nosuch",
    "SINTER nosuch n",
    "SUNION n t",
    "SUNION nosuch",
    "SDIFF n t",
    "SDIFF t n nosuch",
    "SDIFF nosuch n",
    "SINTERSTORE d n t",
    "SMEMBERS d",
    "TTL d",
    "SUNIONSTORE d n t",
    "SCARD d",
    "SDIFFSTORE d n t",
    "SMEMBERS d",
    "EXPIRE d 100",
    "SUNIONSTORE d d",
    "TTL d",
    "SINTERSTORE d n nosuch",
    "EXISTS d",
    "SINTERSTORE d n nosuch",
    "SET str v",
    "SUNIONSTORE str n",
    "TYPE str",
    "SMEMBERS str",
    "SINTERCARD 2 n t",
    "SINTERCARD 2 n t LIMIT 1",
    "SINTERCARD 2 n t LIMIT 0",
    "SINTERCARD 1 nosuch",
    "SINTERCARD 0 n",
    "SINTERCARD x n",
    "SINTERCARD 3 n t",
    "SINTERCARD 2 n t LIMIT -1",
    "SINTERCARD 2 n t LIMIT x",
    "SINTERCARD 2 n t LIMIT",
    "SINTERCARD 2 n t FOO 1",
    "SINTERCARD",
    // SMOVE
    "SMOVE n t 3",
    "SMEMBERS t",
    "SMOVE n t 3",
    "SMOVE nosuch t 1",
    "SMOVE n n 1",
    "SMOVE n n 99",
    "SMOVE n fresh 10",
    "SMEMBERS fresh",
    "SMOVE fresh n 10",
    "EXISTS fresh",
    "SET str2 v",
    "SMOVE n str2 1",
    "SMOVE str2 n 1",
    "SMOVE nosuch str2 1",
    // SPOP SRANDMEMBER: a count that takes every member, and the errors
    "SADD p 1 2 3",
    "SRANDMEMBER p 5",
    "SRANDMEMBER p 0",
    "SRANDMEMBER nosuch",
    "SRANDMEMBER nosuch 3",
    "SRANDMEMBER nosuch -3",
    "SRANDMEMBER p x",
    "SRANDMEMBER p -9223372036854775808",
    "SRANDMEMBER p 1 2",
    "SPOP p 0",
    "SPOP p -1",
    "SPOP p x",
    "SPOP p 1 2",
    "SPOP nosuch",
    "SPOP nosuch 2",
    "SPOP p 5",
    "EXISTS p",
    "SADD q only",
    "SPOP q",
    "SPOP q",
    "SADD q only",
    "SRANDMEMBER q",
    "SRANDMEMBER q -2",
    // SSCAN on a small set
    "SADD sc 1 2 3 4",
    "SSCAN sc 0",
    "SSCAN sc 0 MATCH 1*",
    "SSCAN sc 0 COUNT 100",
    "SSCAN sc x",
    "SSCAN sc 0 COUNT 0",
    "SSCAN sc 0 FOO",
    "SSCAN nosuch 0",
    // SORT of a set
    "SADD so 3 1 2 10",
    "SORT so",
    "SORT so DESC",
    "SORT so LIMIT 1 2",
    "SORT so LIMIT 0 -1 DESC",
    "SORT so LIMIT 10 2",
    "SORT so LIMIT -1 2",
    "SORT so ALPHA",
    "SORT so ALPHA DESC LIMIT 0 2",
    "SORT_RO so DESC",
    "SET w_1 30",
    "SET w_2 20",
    "SET w_3 10",
    "SORT so BY w_*",
    "SORT so BY w_* DESC GET # GET w_*",
    "SORT so BY w_* ALPHA",
    "HSET info_1 name one",
    "HSET info_2 name two",
    "SORT so GET info_*->name GET #",
    "SORT so BY info_*->name ALPHA GET #",
    "SORT so BY nosort LIMIT 0 10",
    "SADD words b a c",
    "SORT words",
    "SORT words ALPHA",
    "SORT words BY w_* LIMIT x 1",
    "SORT words FOO",
    "SORT nosuch",
    "SORT nosuch STORE dst",
    "SORT_RO so STORE dst",
    // Types: WRONGTYPE both ways
    "SET str v",
    "SADD str a",
    "SREM str a",
    "SCARD str",
    "SMEMBERS str",
    "SISMEMBER str a",
    "SINTER n str",
    "SUNION str n",
    "SDIFF n str",
    "SINTERSTORE d n str",
    "SINTERCARD 2 n str",
    "SPOP str",
    "SRANDMEMBER str",
    "SSCAN str 0",
    "HSET h f 1",
    "SADD h a",
    "SADD s2 a",
    "GET s2",
    "APPEND s2 x",
    "INCR s2",
    "HSET s2 f 1",
    "HGET s2 f",
    "SETBIT s2 1 1",
    "SET s2 v GET",
    "TYPE s2",
    "SCAN 0 TYPE set COUNT 100",
    // A whole set: expiry, RENAME, COPY, DUMP/RESTORE, DEL, SET over it, FLUSHDB
    "DEL s2 str str2 h d t",
    "SADD w 1 2",
    "EXPIRE w 100",
    "SADD w 3",
    "TTL w",
    "RENAME w w2",
    "TTL w2",
    "SMEMBERS w2",
    "COPY w2 w3",
    "SMEMBERS w3",
    "TTL w3",
    "SET w3 v",
    "TYPE w3",
    "SADD w3 1",
    "DEL w2",
    "EXISTS w2",
    "SADD w2 z",
    "TTL w2",
    "SMEMBERS w2",
    "FLUSHDB",
    "SCARD w2",
    "SMEMBERS n",
    "HSET hh f 1",
    "SORT hh",
    "SORT str",
];

/// Commands whose replies Redis gives in no fixed order: compared as sets.
fn unordered(command: &str) -> bool {
    let name = command.split(' ').next().unwrap_or_default().to_ascii_uppercase();
    let counted = command.split(' ').count() > 2;
    matches!(name.as_str(), "SMEMBERS" | "SINTER" | "SUNION" | "SDIFF")
        || (counted && matches!(name.as_str(), "SPOP" | "SRANDMEMBER"))
        || matches!(name.as_str(), "SSCAN" | "SCAN")
}

/// `commands` sent to a fresh redis-server and a fresh node: the replies of each,
/// those of unordered commands sorted.
async fn both_replies(commands: &[String]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    support::replies_of_both("set-test", commands, unordered).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_of_the_set_commands_is_redis_7s() {
    let commands: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "replies differ from Redis's:\n{}", diffs.join("\n"));
}

/// The same in RESP3 (after `HELLO 3`, whose reply names the server and is not
/// compared): sets where Redis sends sets, arrays where it sends arrays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_replies_in_resp3_are_redis_7s() {
    let commands: Vec<String> = [
        "!HELLO 3",
        "SADD s 1 2 3",
        "SMEMBERS s",
        "SMEMBERS nosuch",
        "SINTER s s",
        "SUNION s nosuch",
        "SDIFF s nosuch",
        "SMISMEMBER s 1 9",
        "SISMEMBER s 1",
        "SRANDMEMBER s 0",
        "SRANDMEMBER nosuch",
        "SRANDMEMBER nosuch 2",
        "SPOP s 0",
        "SPOP nosuch",
        "SPOP nosuch 2",
        "SSCAN s 0",
        "SPOP s 5",
        "SADD q one",
        "SPOP q",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "RESP3 replies differ from Redis's:\n{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_of_set_commands_are_redis_7s() {
    const COMMANDS: &[&str] = &[
        "SADD s a b c",
        "SADD s a",
        "SREM s a nosuch",
        "SREM s nosuch",
        "SMOVE s t b",
        "SMOVE s t c",
        "SADD s x",
        "SPOP s",
        "SADD u 1 2",
        "SINTERSTORE d u t",
        "SUNIONSTORE d u t",
        "SDIFFSTORE d u t",
        "SDIFFSTORE d t t",
        "EXPIRE u 100",
        "RENAME u v",
        "SREM v 1 2",
        "SADD k x",
        "DEL k",
    ];
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "set-test", |_| {}).await;
    let want = events(redis.addr, COMMANDS).await;
    let got = events(node.resp_addr, COMMANDS).await;
    assert_eq!(got, want, "keyspace events differ from Redis's");
    support::stop_single(node, cancel).await;
}

/// A random command on keys `k0`..`k3` and members `m0`..`m5` (or small integers).
fn random_command(rng: &mut StdRng) -> String {
    let key = |rng: &mut StdRng| format!("k{}", rng.gen_range(0..4));
    let member = |rng: &mut StdRng| match rng.gen_range(0..3) {
        0 => rng.gen_range(0..6).to_string(),
        _ => format!("m{}", rng.gen_range(0..6)),
    };
    let members = |rng: &mut StdRng| (0..rng.gen_range(1..4)).map(|_| member(rng)).collect::<Vec<_>>().join(" ");
    let keys = |rng: &mut StdRng| (0..rng.gen_range(1..4)).map(|_| key(rng)).collect::<Vec<_>>().join(" ");
    match rng.gen_range(0..26) {
        0..=4 => format!("SADD {} {}", key(rng), members(rng)),
        5..=7 => format!("SREM {} {}", key(rng), members(rng)),
        8 => format!("SISMEMBER {} {}", key(rng), member(rng)),
        9 => format!("SMISMEMBER {} {}", key(rng), members(rng)),
        10 => format!("SCARD {}", key(rng)),
        11 => format!("SMEMBERS {}", key(rng)),
        12 => format!("SMOVE {} {} {}", key(rng), key(rng), member(rng)),
        13 => format!("SINTER {}", keys(rng)),
        14 => format!("SUNION {}", keys(rng)),
        15 => format!("SDIFF {}", keys(rng)),
        16 => {
            format!("{} {} {}", ["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"][rng.gen_range(0..3)], key(rng), keys(rng))
        }
        17 => format!("SINTERCARD 2 {} {} LIMIT {}", key(rng), key(rng), rng.gen_range(0..3)),
        // Counts that take every member: the same members everywhere.
        18 => format!("SPOP {} 20", key(rng)),
        19 => format!("SRANDMEMBER {} 20", key(rng)),
        20 => format!("DEL {}", key(rng)),
        21 => format!("SET {} {}", key(rng), member(rng)),
        22 => format!("HSET {} f {}", key(rng), member(rng)),
        23 => ["TYPE", "EXISTS", "TTL"].map(|c| format!("{c} {}", key(rng)))[rng.gen_range(0..3)].clone(),
        24 => format!("RENAME {} {}", key(rng), key(rng)),
        _ => format!("EXPIRE {} 1000", key(rng)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_sequence_of_set_commands_replies_as_redis_does() {
    let seed = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commands: Vec<String> = (0..RANDOM_OPS).map(|_| random_command(&mut rng)).collect();
    for k in 0..4 {
        commands.push(format!("TYPE k{k}"));
        commands.push(format!("TTL k{k}"));
        commands.push(format!("SMEMBERS k{k}"));
    }
    let (want, got) = both_replies(&commands).await;
    support::redis_server::assert_same_replies(seed, &commands, &want, &got);
}

/// Sets survive a restart: some written before a snapshot (`SAVE`), some after it
/// (replayed from the WAL), removes and a delete among them, expiry kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_come_back_whole_after_a_restart_from_snapshot_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let read_back = |conn: redis::aio::MultiplexedConnection| async move {
        let mut conn = conn;
        let mut out = Vec::new();
        for key in ["a", "b", "c", "gone"] {
            let members: BTreeSet<String> = conn.smembers(key).await.unwrap();
            let ttl: i64 = conn.ttl(key).await.unwrap();
            out.push((key, members, ttl > 0));
        }
        out
    };
    let connect = |node: &RunningNode| {
        let client = redis::Client::open(format!("redis://{}/", node.resp_addr)).unwrap();
        async move { client.get_multiplexed_async_connection().await.unwrap() }
    };
    let (node, cancel) = support::start_single(dir.path(), "set-test", |_| {}).await;
    let mut conn = connect(&node).await;
    let _: i64 = conn.sadd("a", &["1", "2", "3"]).await.unwrap();
    let _: i64 = conn.sadd("b", &["x", "y"]).await.unwrap();
    let _: i64 = conn.sadd("gone", "z").await.unwrap();
    let _: () = conn.expire("b", 1000).await.unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let _: i64 = conn.srem("a", "2").await.unwrap();
    let _: i64 = conn.sadd("c", &["p", "q"]).await.unwrap();
    let _: i64 = conn.sadd("b", "w").await.unwrap();
    let _: i64 = conn.del("gone").await.unwrap();
    let before = read_back(conn).await;
    assert_eq!(before[0].1, BTreeSet::from(["1".to_string(), "3".to_string()]));
    support::stop_single(node, cancel).await;
    let (node, cancel) = support::start_single(dir.path(), "set-test", |_| {}).await;
    let after = read_back(connect(&node).await).await;
    assert_eq!(after, before);
    support::stop_single(node, cancel).await;
}

async fn wait_members(conn: &mut redis::aio::MultiplexedConnection, key: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|m| m.to_string()).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got: BTreeSet<String> = conn.smembers(key).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {got:?}, waited for {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// DUMP of a set and of a sorted set is xsite's payload of their type, and RESTORE
/// brings each back whole, replacing a key of another type with REPLACE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_and_restore_of_sets_and_sorted_sets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "set-test", |_| {}).await;
    let client = redis::Client::open(format!("redis://{}/", node.resp_addr)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = c.sadd("s", &["a", "b\r\n\x00"]).await.unwrap();
    let set: Vec<u8> = redis::cmd("DUMP").arg("s").query_async(&mut c).await.unwrap();
    assert!(set.starts_with(b"XSDU\x01\x02"), "xsite's format, version 1, a set");
    let () = redis::cmd("RESTORE").arg("s2").arg(0).arg(&set).query_async(&mut c).await.unwrap();
    let members: BTreeSet<Vec<u8>> = c.smembers("s2").await.unwrap();
    assert_eq!(members, BTreeSet::from([b"a".to_vec(), b"b\r\n\x00".to_vec()]));
    let _: i64 = redis::cmd("ZADD").arg("z").arg(1.5).arg("a").arg("inf").arg("b").query_async(&mut c).await.unwrap();
    let zset: Vec<u8> = redis::cmd("DUMP").arg("z").query_async(&mut c).await.unwrap();
    assert!(zset.starts_with(b"XSDU\x01\x03"), "xsite's format, version 1, a sorted set");
    let () = redis::cmd("RESTORE").arg("s2").arg(5000).arg(&zset).arg("REPLACE").query_async(&mut c).await.unwrap();
    let kind: String = redis::cmd("TYPE").arg("s2").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "zset");
    let ranked: Vec<(String, String)> =
        redis::cmd("ZRANGE").arg("s2").arg(0).arg(-1).arg("WITHSCORES").query_async(&mut c).await.unwrap();
    assert_eq!(ranked, [("a".to_string(), "1.5".to_string()), ("b".to_string(), "inf".to_string())]);
    let pttl: i64 = c.pttl("s2").await.unwrap();
    assert!((4000..=5000).contains(&pttl), "{pttl}");
    support::stop_single(node, cancel).await;
}

/// `SORT … STORE` of a set or a sorted set makes a list, as Redis's: sorted, by
/// nothing (a set then sorted `ALPHA`, as Redis does so that the stored list is
/// the same everywhere), with `GET` patterns (a missing one stored empty), over a
/// key of another type; a missing source deletes the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_store_of_a_set_makes_a_list_as_redis_does() {
    let commands: Vec<String> = [
        "SADD s 3 10 2",
        "SET dst keep",
        "SORT s STORE dst",
        "TYPE dst",
        "LRANGE dst 0 -1",
        "SORT s BY nosort STORE d2",
        "LRANGE d2 0 -1",
        "SADD t b a c",
        "SORT t BY nosort STORE d3",
        "LRANGE d3 0 -1",
        "SORT t STORE d3",
        "ZADD z 2 x 1 y 3 w",
        "SORT z BY nosort DESC STORE d4",
        "LRANGE d4 0 -1",
        "SORT z BY nosort GET # GET nosuch_* STORE d5",
        "LRANGE d5 0 -1",
        "SORT z BY nosort LIMIT 1 1 STORE d6",
        "LRANGE d6 0 -1",
        "SORT nosuch STORE d4",
        "EXISTS d4",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "replies differ from Redis's:\n{}", diffs.join("\n"));
}

fn site(name: &str) -> SiteId {
    SiteId::new(name).unwrap()
}

/// Defect this type exists to avoid (a set replicated as a value, or members as
/// last-write-wins registers): a member added at one site while another removed
/// it, or deleted the whole set, would be lost at every site. Cut from each other,
/// site a removes `x` and deletes `tags`, which it saw, while site b adds `x` again
/// and adds `y` to `tags`; healed, both sites hold `x` and `y` (add-wins), and what
/// a removed that b never re-added stays removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_add_at_one_site_survives_a_concurrent_remove_or_delete_at_the_other() {
    let mesh = support::Mesh::start(2).await;
    support::wait_reading(mesh.node(0), xsite_schemas::FORMAT_VERSION_SETS).await;
    support::wait_reading(mesh.node(1), xsite_schemas::FORMAT_VERSION_SETS).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: i64 = a.sadd("s", &["x", "gone", "kept"]).await.unwrap();
    let _: i64 = b.sadd("tags", &["red", "blue"]).await.unwrap();
    wait_members(&mut b, "s", &["x", "gone", "kept"]).await;
    wait_members(&mut a, "tags", &["red", "blue"]).await;
    let (ra, rb) = (mesh.node(0).replication.as_ref().unwrap(), mesh.node(1).replication.as_ref().unwrap());
    ra.take_offline(&site("site-b")).await.unwrap();
    rb.take_offline(&site("site-a")).await.unwrap();
    // Concurrent: neither site sees the other's writes until healed.
    let removed: i64 = a.srem("s", &["x", "gone"]).await.unwrap();
    assert_eq!(removed, 2);
    let _: i64 = a.del("tags").await.unwrap();
    let added: i64 = b.sadd("s", "x").await.unwrap();
    assert_eq!(added, 0, "x is still there at b");
    let _: i64 = b.sadd("tags", "green").await.unwrap();
    wait_members(&mut a, "s", &["kept"]).await;
    wait_members(&mut b, "tags", &["red", "blue", "green"]).await;
    ra.bring_online(&site("site-b")).unwrap();
    rb.bring_online(&site("site-a")).unwrap();
    for conn in [&mut a, &mut b] {
        wait_members(conn, "s", &["x", "kept"]).await;
        wait_members(conn, "tags", &["green"]).await;
    }
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 2, "{contents:?}");
    mesh.shutdown().await;
}

/// redis-py (PyPI) end to end: tags added at one site and read at the other, adds
/// at both sites at once all arriving, SREM SPOP SMOVE, the algebra commands and
/// their STOREs, SSCAN, a transactional pipeline and a delete, over RESP2 and RESP3;
/// the same script against a redis-server first, as the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_uses_sets_across_two_sites() {
    support::redis_py_across_two_sites("sets_sites.py", 100, xsite_schemas::FORMAT_VERSION_SETS).await;
}
