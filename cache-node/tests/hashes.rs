//! Hashes as clients see them, on the real path of a node:
//!
//! - the same commands sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply compared byte for byte: each hash
//!   command's options and errors, WRONGTYPE both ways, TYPE, OBJECT ENCODING, SCAN
//!   TYPE, RENAME COPY DEL EXPIRE of a hash, and the keyspace events;
//! - a seeded random sequence of hash and string commands on a few keys, compared
//!   reply by reply, then every field read back (the seed is printed on failure;
//!   `XSITE_SIM_SEED` replays one);
//! - two sites on MockCluster: fields written at both, increments at both adding
//!   up, a field removed, a hash renamed and deleted: both sites end identical.
//!
//! Hash fields are returned in name order here and in insertion order by Redis, so
//! the fixed list adds fields in name order. Redis adds floats as long doubles and
//! a node as doubles, so the random sequence increments by binary fractions on
//! values a double holds exactly.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::redis_server::{differences, events, RedisServer};

const WAIT: Duration = Duration::from_secs(30);
/// Commands of the random sequence.
const RANDOM_OPS: usize = 1500;

const FIXED: &[&str] = &[
    // HSET HGET HMGET HGETALL HKEYS HVALS HLEN
    "HSET h a 1 b 2",
    "HSET h a 1",
    "HSET h a",
    "HSET h",
    "HSET h c",
    "HGET h a",
    "HGET h nosuch",
    "HGET nosuch a",
    "HGET h",
    "HMGET h a nosuch b",
    "HMGET nosuch a b",
    "HMGET h",
    "HGETALL h",
    "HGETALL nosuch",
    "HKEYS h",
    "HVALS h",
    "HLEN h",
    "HLEN nosuch",
    "HEXISTS h a",
    "HEXISTS h z",
    "HEXISTS nosuch a",
    "HSTRLEN h a",
    "HSTRLEN h z",
    "HSTRLEN nosuch a",
    // HSETNX HMSET
    "HSETNX h a 5",
    "HSETNX h c 3",
    "HSETNX h c",
    "HGET h c",
    "HMSET h d 4",
    "HMSET h d",
    "HMSET h",
    "HSET dup x 1 x 2",
    "HGET dup x",
    "HLEN dup",
    "HSET e '' ''",
    "HGET e ''",
    "HSTRLEN e ''",
    // HINCRBY
    "HINCRBY h n 5",
    "HINCRBY h n -2",
    "HGET h n",
    "HSTRLEN h n",
    "HINCRBY h n x",
    "HINCRBY h n",
    "HINCRBY h n 9223372036854775807",
    "HINCRBY h n -9223372036854775808",
    "HSET h s foo",
    "HINCRBY h s 1",
    "HSET h t ' 1'",
    "HINCRBY h t 1",
    "HSET h u 9223372036854775807",
    "HINCRBY h u 1",
    "HINCRBY h u -1",
    "HINCRBYFLOAT fl a 1.5",
    "HINCRBYFLOAT fl a 0.1",
    "HINCRBYFLOAT fl a 0.2",
    "HINCRBYFLOAT fl a -1.8",
    "HGET fl a",
    "HINCRBYFLOAT fl a 10",
    "HINCRBY fl a 1",
    "HINCRBYFLOAT fl a 0.5",
    "HINCRBY fl a 1",
    "HSET fl b 5",
    "HINCRBYFLOAT fl b 2.5e3",
    "HINCRBYFLOAT fl b x",
    "HINCRBYFLOAT fl b inf",
    "HSET fl c foo",
    "HINCRBYFLOAT fl c 1",
    "HINCRBY fl d 7",
    "HINCRBYFLOAT fl d 0.25",
    "HGET fl d",
    "HINCRBYFLOAT fl e -0",
    "HINCRBYFLOAT fl",
    "HINCRBYFLOAT str2 a 1",
    "HGETALL fl",
    "HINCRBY cnt f 3",
    "HINCRBY cnt f 0",
    "TYPE cnt",
    "HGETALL h",
    // HDEL
    "HDEL h a nosuch",
    "HDEL h a",
    "HDEL h",
    "HDEL nosuch a",
    "HDEL h b b c",
    "HLEN h",
    "HDEL cnt f",
    "EXISTS cnt",
    "TYPE cnt",
    // Types
    "TYPE h",
    "TYPE nosuch",
    "OBJECT ENCODING h",
    "OBJECT REFCOUNT h",
    "HSET big v 12345678901234567890123456789012345678901234567890123456789012345",
    "OBJECT ENCODING big",
    "SET str v",
    "TYPE str",
    "HSET str a 1",
    "HSETNX str a 1",
    "HMSET str a 1",
    "HGET str a",
    "HMGET str a",
    "HGETALL str",
    "HKEYS str",
    "HVALS str",
    "HLEN str",
    "HEXISTS str a",
    "HSTRLEN str a",
    "HDEL str a",
    "HINCRBY str a 1",
    "HINCRBYFLOAT str a 1",
    "HRANDFIELD str",
    "HSCAN str 0",
    "GET h",
    "GETSET h x",
    "GETDEL h",
    "GETEX h",
    "APPEND h x",
    "STRLEN h",
    "GETRANGE h 0 1",
    "SETRANGE h 0 x",
    "INCR h",
    "INCRBY h 2",
    "DECR h",
    "INCRBYFLOAT h 1.5",
    "SETBIT h 0 1",
    "GETBIT h 0",
    "BITCOUNT h",
    "BITPOS h 1",
    "BITFIELD h GET u8 0",
    "BITOP NOT bdst h",
    "LCS h str",
    "SORT h",
    "SET h x GET",
    "MGET h str",
    "SETNX h x",
    "MSETNX h x q y",
    "EXISTS h",
    "TYPE h",
    // HRANDFIELD HSCAN on a hash of one field
    "HSET one f v",
    "HRANDFIELD one",
    "HRANDFIELD one 5",
    "HRANDFIELD one 1",
    "HRANDFIELD one 0",
    "HRANDFIELD one -3",
    "HRANDFIELD one 2 WITHVALUES",
    "HRANDFIELD one -2 WITHVALUES",
    "HRANDFIELD one x",
    "HRANDFIELD one 1 x",
    "HRANDFIELD one 1 WITHVALUES x",
    "HRANDFIELD nosuch",
    "HRANDFIELD nosuch 3",
    "HRANDFIELD nosuch -3 WITHVALUES",
    "HSCAN one 0",
    "HSCAN one 0 MATCH f*",
    "HSCAN one 0 MATCH g*",
    "HSCAN one 0 COUNT 10",
    "HSCAN one 0 COUNT 0",
    "HSCAN one 0 COUNT x",
    "HSCAN one 0 MATCH",
    "HSCAN one x",
    "HSCAN nosuch 0",
    // A whole hash: expiry, RENAME, COPY, DEL, SET over it, FLUSHDB
    "EXPIRE one 100",
    "TTL one",
    "RENAME one moved",
    "TYPE one",
    "HGETALL moved",
    "TTL moved",
    "COPY moved copied",
    "HGETALL copied",
    "TTL copied",
    "COPY moved copied",
    "SET over x",
    "COPY moved over REPLACE",
    "TYPE over",
    "HGETALL over",
    "RENAME copied str",
    "TYPE str",
    "HGET str f",
    "PERSIST moved",
    "TTL moved",
    "DEL moved",
    "EXISTS moved",
    "HGET moved f",
    "SET big x",
    "TYPE big",
    "HGET big v",
    "HSET big v 2",
    "HSET fresh a 1",
    "EXPIRE fresh 0",
    "EXISTS fresh",
    "HSET fresh b 2",
    "HGETALL fresh",
    "TTL fresh",
    "DBSIZE",
    "FLUSHDB",
    "HGETALL h",
    "DBSIZE",
];

/// `commands` sent to a fresh redis-server and a fresh node: the replies of each,
/// those of unordered commands sorted.
async fn both_replies(commands: &[String]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    support::replies_of_both("hash-test", commands, |_| false).await
}

async fn assert_replies_are_redis_7s(commands: &[&str]) {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "replies differ from Redis's:\n{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_of_the_hash_commands_is_redis_7s() {
    assert_replies_are_redis_7s(FIXED).await;
}

/// RESP3 (after `HELLO 3`, whose reply is not compared): HGETALL a map,
/// HRANDFIELD … WITHVALUES pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_replies_in_resp3_are_redis_7s() {
    assert_replies_are_redis_7s(&[
        "!HELLO 3",
        "HSET h a 1",
        "HGETALL h",
        "HGETALL nosuch",
        "HRANDFIELD h 1 WITHVALUES",
        "HRANDFIELD h -2 WITHVALUES",
        "HRANDFIELD h -2",
        "HRANDFIELD nosuch 1 WITHVALUES",
        "HMGET h a nosuch",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_hashes_by_type() {
    // One key of each type, so that SCAN's order does not matter.
    assert_replies_are_redis_7s(&[
        "HSET h a 1",
        "SET s v",
        "SCAN 0 TYPE hash COUNT 100",
        "SCAN 0 TYPE string COUNT 100",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_of_hash_commands_are_redis_7s() {
    const COMMANDS: &[&str] = &[
        "HSET h a 1 b 2",
        "HSETNX h a 1",
        "HSETNX h c 3",
        "HMSET h d 4",
        "HINCRBY h n 2",
        "HINCRBYFLOAT h n 0.5",
        "HDEL h a nosuch",
        "HDEL h nosuch",
        "EXPIRE h 100",
        "RENAME h g",
        "HDEL g b c d n",
        "HSET k x 1",
        "DEL k",
    ];
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "hash-test", |_| {}).await;
    let want = events(redis.addr, COMMANDS).await;
    let got = events(node.resp_addr, COMMANDS).await;
    assert_eq!(got, want, "keyspace events differ from Redis's");
    support::stop_single(node, cancel).await;
}

/// A random command on keys `k0`..`k2` and fields `f0`..`f3`.
fn random_command(rng: &mut StdRng) -> String {
    let key = |rng: &mut StdRng| format!("k{}", rng.gen_range(0..3));
    let field = |rng: &mut StdRng| format!("f{}", rng.gen_range(0..4));
    let value = |rng: &mut StdRng| match rng.gen_range(0..4) {
        0 => "x".to_string(),
        1 => rng.gen_range(-5..5).to_string(),
        // Large, yet exact in a double: Redis adds floats as long doubles.
        2 => "1000000000".to_string(),
        _ => rng.gen_range(0..1000).to_string(),
    };
    match rng.gen_range(0..20) {
        0..=3 => {
            let pairs: Vec<String> =
                (0..rng.gen_range(1..3)).map(|_| format!("{} {}", field(rng), value(rng))).collect();
            format!("HSET {} {}", key(rng), pairs.join(" "))
        }
        4 => format!("HSETNX {} {} {}", key(rng), field(rng), value(rng)),
        5 | 6 => {
            let fields: Vec<String> = (0..rng.gen_range(1..3)).map(|_| field(rng)).collect();
            format!("HDEL {} {}", key(rng), fields.join(" "))
        }
        7 => format!("HINCRBY {} {} {}", key(rng), field(rng), rng.gen_range(-3..4)),
        8 => format!(
            "HINCRBYFLOAT {} {} {}",
            key(rng),
            field(rng),
            ["0.5", "-1.25", "3", "1e3", "0.25"][rng.gen_range(0..5)]
        ),
        9 => format!("HGET {} {}", key(rng), field(rng)),
        10 => format!("HMGET {} {} {}", key(rng), field(rng), field(rng)),
        11 => format!("HEXISTS {} {}", key(rng), field(rng)),
        12 => format!("HLEN {}", key(rng)),
        13 => format!("HSTRLEN {} {}", key(rng), field(rng)),
        14 => format!("DEL {}", key(rng)),
        15 => format!("SET {} {}", key(rng), value(rng)),
        16 => ["GET", "TYPE", "INCR", "EXISTS"].map(|c| format!("{c} {}", key(rng)))[rng.gen_range(0..4)].clone(),
        17 => format!("RENAME {} {}", key(rng), key(rng)),
        18 => format!("COPY {} {} REPLACE", key(rng), key(rng)),
        _ => format!("EXPIRE {} 1000", key(rng)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_sequence_of_hash_commands_replies_as_redis_does() {
    let seed = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commands: Vec<String> = (0..RANDOM_OPS).map(|_| random_command(&mut rng)).collect();
    for k in 0..3 {
        commands.push(format!("TYPE k{k}"));
        commands.push(format!("HLEN k{k}"));
        commands.push(format!("TTL k{k}"));
        commands.extend((0..4).map(|f| format!("HGET k{k} f{f}")));
    }
    let (want, got) = both_replies(&commands).await;
    support::redis_server::assert_same_replies(seed, &commands, &want, &got);
}

async fn wait_hgetall(conn: &mut redis::aio::MultiplexedConnection, key: &str, want: &[(&str, &str)]) {
    let want: BTreeMap<String, String> = want.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got: BTreeMap<String, String> = conn.hgetall(key).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {got:?}, waited for {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashes_replicate_field_by_field_and_increments_at_two_sites_add_up() {
    let mesh = support::Mesh::start(2).await;
    support::wait_reading(mesh.node(0), xsite_schemas::FORMAT_VERSION_HASHES).await;
    support::wait_reading(mesh.node(1), xsite_schemas::FORMAT_VERSION_HASHES).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let (): () = a.hset_multiple("user", &[("name", "ada"), ("visits", "10")]).await.unwrap();
    let _: i64 = b.hset("user", "city", "paris").await.unwrap();
    wait_hgetall(&mut a, "user", &[("name", "ada"), ("visits", "10"), ("city", "paris")]).await;
    wait_hgetall(&mut b, "user", &[("name", "ada"), ("visits", "10"), ("city", "paris")]).await;
    // Increments of one field at both sites, on the same base: they add up.
    for _ in 0..5 {
        let _: i64 = a.hincr("user", "visits", 1).await.unwrap();
        let _: i64 = b.hincr("user", "visits", 2).await.unwrap();
    }
    wait_hgetall(&mut a, "user", &[("name", "ada"), ("visits", "25"), ("city", "paris")]).await;
    wait_hgetall(&mut b, "user", &[("name", "ada"), ("visits", "25"), ("city", "paris")]).await;
    let _: i64 = b.hdel("user", "city").await.unwrap();
    let _: () = a.expire("user", 1000).await.unwrap();
    wait_hgetall(&mut a, "user", &[("name", "ada"), ("visits", "25")]).await;
    let ttl: i64 = b.ttl("user").await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut ttl = ttl;
    while ttl < 0 {
        assert!(Instant::now() < deadline, "the expiry never reached site b");
        tokio::time::sleep(Duration::from_millis(10)).await;
        ttl = b.ttl("user").await.unwrap();
    }
    assert!((990..=1000).contains(&ttl), "{ttl}");
    // A rename and a delete of whole hashes.
    let _: () = a.rename("user", "renamed").await.unwrap();
    wait_hgetall(&mut b, "renamed", &[("name", "ada"), ("visits", "25")]).await;
    wait_hgetall(&mut b, "user", &[]).await;
    let kind: String = redis::cmd("TYPE").arg("renamed").query_async(&mut b).await.unwrap();
    assert_eq!(kind, "hash");
    let _: i64 = b.hset("other", "f", "1").await.unwrap();
    let _: i64 = a.hincr("counts", "n", 7).await.unwrap();
    let _: i64 = b.del("renamed").await.unwrap();
    wait_hgetall(&mut a, "renamed", &[]).await;
    let contents = mesh.converged().await;
    assert_eq!(
        contents.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(),
        ["counts", "other"]
    );
    mesh.shutdown().await;
}

/// redis-py (PyPI) end to end: a session hash written at one site and read at the
/// other, counters incremented at both at once adding up exactly, HDEL, HSCAN, a
/// transactional pipeline and a delete, over RESP2 and RESP3; the same script
/// against a redis-server first, as the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_uses_hashes_across_two_sites() {
    support::redis_py_across_two_sites("hashes_sites.py", 100, xsite_schemas::FORMAT_VERSION_HASHES).await;
}
