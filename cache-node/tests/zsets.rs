//! Sorted sets as clients see them, on the real path of a node:
//!
//! - the same commands sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply compared: each sorted set command's
//!   options, ranges and errors, WRONGTYPE both ways, TYPE, OBJECT ENCODING, RENAME
//!   COPY DUMP RESTORE of a sorted set, and the keyspace events;
//! - a seeded random sequence of sorted set, set and string commands on a few keys,
//!   compared reply by reply (the seed is printed on failure; `XSITE_SIM_SEED`
//!   replays one);
//! - two sites on MockCluster, cut from each other while they write: increments of
//!   one member at both add up, an add at one survives a remove at the other, and
//!   both sites end identical;
//! - redis-py (PyPI) across two sites, a leaderboard.
//!
//! Scores are small binary fractions or integers, which a double holds exactly.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use xsite_schemas::SiteId;

use support::redis_server::{differences, events, RedisServer};

const WAIT: Duration = Duration::from_secs(30);
/// Commands of the random sequence.
const RANDOM_OPS: usize = 1500;

const FIXED: &[&str] = &[
    // ZADD and its flags
    "ZADD z 1 a 2 b 3 c",
    "ZADD z 1 a",
    "ZADD z 5 a 5 a",
    "ZADD z NX 9 a 4 d",
    "ZADD z XX 8 a 7 e",
    "ZADD z XX CH 8 a 6 b",
    "ZADD z CH 8 a 6 b 1 f",
    "ZADD z GT 1 a 10 b",
    "ZADD z LT CH 1 a 20 b",
    "ZADD z NX XX 1 a",
    "ZADD z GT LT 1 a",
    "ZADD z NX GT 1 a",
    "ZADD z INCR 1 a 2 b",
    "ZADD z 1",
    "ZADD z 1 a 2",
    "ZADD z x a",
    "ZADD z nan a",
    "ZADD z inf top -inf bottom +inf top2",
    "ZADD z INCR 2 a",
    "ZADD z INCR 2 nosuch",
    "ZADD z XX INCR 2 nosuch2",
    "ZADD z NX INCR 2 a",
    "ZADD z GT INCR -1 a",
    "ZADD z LT INCR -1 a",
    "ZADD z INCR -inf top",
    "ZADD nosuch XX 1 a",
    "EXISTS nosuch",
    "ZADD z 0.5 half 1e3 big -2.25 neg",
    "ZADD zero 0 b -0 a 0 c",
    "ZRANGE zero 0 -1 WITHSCORES",
    "ZSCORE zero a",
    "ZRANGE z 0 -1 WITHSCORES",
    // ZINCRBY ZSCORE ZMSCORE ZCARD
    "ZINCRBY z 2.5 a",
    "ZINCRBY z 1 newone",
    "ZINCRBY z x a",
    "ZINCRBY z -inf bottom",
    "ZINCRBY z inf bottom",
    "ZSCORE z a",
    "ZSCORE z nosuch",
    "ZSCORE nosuch a",
    "ZSCORE z top",
    "ZMSCORE z a nosuch b",
    "ZMSCORE nosuch a",
    "ZCARD z",
    "ZCARD nosuch",
    // ZRANK ZREVRANK
    "ZRANK z a",
    "ZRANK z nosuch",
    "ZREVRANK z a",
    "ZRANK nosuch a",
    // Ranges by rank
    "ZRANGE z 0 2",
    "ZRANGE z -3 -1 WITHSCORES",
    "ZRANGE z 5 1",
    "ZRANGE z 100 200",
    "ZRANGE z -100 1",
    "ZRANGE z 0 -1 REV",
    "ZREVRANGE z 0 3 WITHSCORES",
    "ZRANGE z 0 x",
    "ZRANGE z 0 1 LIMIT 0 1",
    "ZRANGE z 0 1 LIMIT 0 -1",
    "ZRANGE z 0 1 FOO",
    "ZRANGE nosuch 0 -1",
    // By score
    "ZRANGE z 1 8 BYSCORE",
    "ZRANGE z (1 8 BYSCORE WITHSCORES",
    "ZRANGE z 1 (8 BYSCORE",
    "ZRANGE z -inf +inf BYSCORE LIMIT 1 3",
    "ZRANGE z -inf +inf BYSCORE LIMIT 1 -5",
    "ZRANGE z -inf +inf BYSCORE LIMIT -1 3",
    "ZRANGE z -inf +inf BYSCORE LIMIT 1 -1",
    "ZRANGE z 0 -1 LIMIT 1 -1",
    "ZRANGE z -inf +inf BYSCORE LIMIT 100 3",
    "ZRANGE z +inf -inf BYSCORE REV LIMIT 0 2 WITHSCORES",
    "ZRANGE z 8 1 BYSCORE REV",
    "ZRANGEBYSCORE z 1 8",
    "ZRANGEBYSCORE z -inf inf WITHSCORES LIMIT 2 2",
    "ZRANGEBYSCORE z (0.5 (1e3",
    "ZREVRANGEBYSCORE z 8 1 WITHSCORES",
    "ZRANGEBYSCORE z x 1",
    "ZRANGEBYSCORE z 1 nan",
    "ZRANGEBYSCORE z 1 2 REV",
    "ZRANGE z 1 2 BYSCORE BYLEX",
    "ZCOUNT z 1 8",
    "ZCOUNT z (1 (8",
    "ZCOUNT z -inf +inf",
    "ZCOUNT z x 1",
    "ZCOUNT nosuch 0 1",
    // By lex, on equal scores
    "ZADD lex 0 a 0 b 0 c 0 d 0 e 0 f",
    "ZRANGE lex [b (e BYLEX",
    "ZRANGE lex - + BYLEX LIMIT 1 2",
    "ZRANGE lex + - BYLEX REV",
    "ZRANGE lex (e - BYLEX REV",
    "ZRANGEBYLEX lex - [c",
    "ZREVRANGEBYLEX lex [c -",
    "ZRANGEBYLEX lex b c",
    "ZRANGE lex - + BYLEX WITHSCORES",
    "ZLEXCOUNT lex - +",
    "ZLEXCOUNT lex (a [d",
    "ZLEXCOUNT lex x y",
    "ZLEXCOUNT nosuch - +",
    // ZREM and the range removes
    "ZREM lex a nosuch a",
    "ZREM lex nosuch",
    "ZREM nosuch a",
    "ZREMRANGEBYLEX lex [b [c",
    "ZRANGE lex 0 -1",
    "ZREMRANGEBYLEX lex x y",
    "ZADD r 1 a 2 b 3 c 4 d 5 e",
    "ZREMRANGEBYSCORE r (1 3",
    "ZREMRANGEBYSCORE r x 3",
    "ZREMRANGEBYRANK r 0 0",
    "ZREMRANGEBYRANK r -1 -1",
    "ZREMRANGEBYRANK r 5 10",
    "ZREMRANGEBYRANK r x 1",
    "ZRANGE r 0 -1 WITHSCORES",
    "ZREMRANGEBYSCORE r -inf +inf",
    "EXISTS r",
    "ZREMRANGEBYRANK nosuch 0 -1",
    // ZPOPMIN ZPOPMAX
    "ZADD p 1 a 2 b 3 c 4 d",
    "ZPOPMIN p",
    "ZPOPMAX p",
    "ZPOPMIN p 0",
    "ZPOPMIN p -1",
    "ZPOPMIN p x",
    "ZPOPMIN p 1 2",
    "ZPOPMAX p 10",
    "EXISTS p",
    "ZPOPMIN nosuch",
    "ZPOPMIN nosuch 2",
    // ZRANGESTORE and the algebra STOREs
    "ZADD s1 1 a 2 b 3 c",
    "ZADD s2 10 b 20 c 30 d",
    "SADD plain b x",
    "ZRANGESTORE dst s1 0 1",
    "ZRANGE dst 0 -1 WITHSCORES",
    "ZRANGESTORE dst s1 (1 +inf BYSCORE LIMIT 0 1",
    "ZRANGE dst 0 -1 WITHSCORES",
    "ZRANGESTORE dst s1 0 -1 WITHSCORES",
    "ZRANGESTORE dst nosuch 0 -1",
    "EXISTS dst",
    "ZUNIONSTORE u 2 s1 s2",
    "ZRANGE u 0 -1 WITHSCORES",
    "ZUNIONSTORE u 2 s1 s2 WEIGHTS 2 0.5 AGGREGATE MAX",
    "ZRANGE u 0 -1 WITHSCORES",
    "ZUNIONSTORE u 3 s1 s2 plain AGGREGATE MIN",
    "ZRANGE u 0 -1 WITHSCORES",
    "ZINTERSTORE i 2 s1 s2",
    "ZRANGE i 0 -1 WITHSCORES",
    "ZINTERSTORE i 3 s1 s2 plain WEIGHTS 1 1 5",
    "ZRANGE i 0 -1 WITHSCORES",
    "ZDIFFSTORE d 2 s1 s2",
    "ZRANGE d 0 -1 WITHSCORES",
    "ZDIFFSTORE d 2 s1 s2 WEIGHTS 1 1",
    "ZUNIONSTORE u 0 s1",
    "ZUNIONSTORE u 3 s1 s2",
    "ZUNIONSTORE u 2 s1 s2 WEIGHTS 1 x",
    "ZUNIONSTORE u 2 s1 s2 WEIGHTS 1",
    "ZUNIONSTORE u 2 s1 s2 AGGREGATE AVG",
    "ZUNIONSTORE u x s1",
    "ZINTERSTORE i 2 s1 nosuch",
    "EXISTS i",
    "ZADD infs inf a -inf b",
    "ZADD infs2 -inf a inf b",
    "ZUNIONSTORE u 2 infs infs2",
    "ZRANGE u 0 -1 WITHSCORES",
    // The smallest input is aggregated first: inf + inf, then + -inf (0).
    "ZADD bigger -inf a 1 b 2 c",
    "ZADD smaller inf a",
    "ZUNIONSTORE u 3 bigger smaller smaller",
    "ZRANGE u 0 -1 WITHSCORES",
    // SORT of a sorted set
    "ZADD sz 3 a 1 b 2 c",
    "SET wz_a 1",
    "SET wz_b 3",
    "SET wz_c 2",
    "SORT sz BY nosort",
    "SORT sz BY nosort DESC",
    "SORT sz BY nosort LIMIT 1 1",
    "SORT sz BY wz_*",
    "SORT sz BY wz_* DESC GET # GET wz_*",
    "SORT sz ALPHA",
    "SORT sz",
    // ZRANDMEMBER ZSCAN on small sets
    "ZADD q 1 only",
    "ZRANDMEMBER q",
    "ZRANDMEMBER q 1 WITHSCORES",
    "ZRANDMEMBER q -2 WITHSCORES",
    "ZRANDMEMBER q 0",
    "ZRANDMEMBER nosuch",
    "ZRANDMEMBER nosuch 2",
    "ZRANDMEMBER q x",
    "ZRANDMEMBER q 1 FOO",
    "ZRANDMEMBER q -9223372036854775808",
    "ZSCAN s1 0",
    "ZSCAN s1 0 MATCH b*",
    "ZSCAN nosuch 0",
    "ZSCAN s1 x",
    // Types both ways
    "SET str v",
    "ZADD str 1 a",
    "ZSCORE str a",
    "ZRANGE str 0 -1",
    "ZCARD str",
    "ZINCRBY str 1 a",
    "ZPOPMIN str",
    "ZPOPMIN str 0",
    "ZREM str a",
    "ZUNIONSTORE u 2 s1 str",
    "ZRANGESTORE dst str 0 -1",
    "ZADD plain 1 a",
    "GET s1",
    "SADD s1 x",
    "HSET s1 f v",
    "TYPE s1",
    "OBJECT ENCODING s1",
    "SCAN 0 TYPE zset COUNT 100",
    "ZUNIONSTORE str 1 s1",
    "TYPE str",
    // A whole sorted set: expiry, RENAME, COPY, DUMP/RESTORE, DEL
    "EXPIRE s1 100",
    "ZADD s1 4 e",
    "TTL s1",
    "RENAME s1 r1",
    "ZRANGE r1 0 -1 WITHSCORES",
    "TTL r1",
    "COPY r1 c1",
    "ZRANGE c1 0 -1 WITHSCORES",
    "DEL r1",
    "EXISTS r1",
    "ZADD r1 9 z",
    "TTL r1",
    "ZRANGE r1 0 -1 WITHSCORES",
];

/// Commands whose replies Redis gives in no fixed order: compared as sets.
fn unordered(command: &str) -> bool {
    let name = command.split(' ').next().unwrap_or_default().to_ascii_uppercase();
    let counted = command.split(' ').count() > 2;
    (counted && name == "ZRANDMEMBER") || name == "SCAN"
}

/// `commands` sent to a fresh redis-server and a fresh node: the replies of each,
/// those of unordered commands sorted.
async fn both_replies(commands: &[String]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    support::replies_of_both("zset-test", commands, unordered).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_of_the_sorted_set_commands_is_redis_7s() {
    let commands: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "{} replies differ from Redis's:\n{}", diffs.len(), diffs.join("\n"));
}

/// The same in RESP3 (after `HELLO 3`, whose reply is not compared): scores as
/// doubles, WITHSCORES and counted pops as pairs, as Redis sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorted_set_replies_in_resp3_are_redis_7s() {
    let commands: Vec<String> = [
        "!HELLO 3",
        "ZADD z 1 a 2.5 b 0.1 c",
        "ZRANGE z 0 -1 WITHSCORES",
        "ZRANGE z 0 -1",
        "ZRANGEBYSCORE z -inf +inf WITHSCORES LIMIT 1 1",
        "ZREVRANGE z 0 0 WITHSCORES",
        "ZSCORE z b",
        "ZSCORE z nosuch",
        "ZMSCORE z a nosuch",
        "ZINCRBY z 0.1 a",
        "ZADD z INCR 1 a",
        "ZADD z NX INCR 1 a",
        "ZRANK z a",
        "ZRANK z nosuch",
        "ZSCAN z 0",
        "ZRANDMEMBER nosuch 2 WITHSCORES",
        "ZPOPMIN z",
        "ZPOPMAX z 5",
        "ZPOPMIN nosuch",
        "ZPOPMIN nosuch 2",
        "ZADD one 1 x",
        "ZRANDMEMBER one 1 WITHSCORES",
        "ZRANDMEMBER one -2",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "RESP3 replies differ from Redis's:\n{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_of_sorted_set_commands_are_redis_7s() {
    const COMMANDS: &[&str] = &[
        "ZADD z 1 a 2 b 3 c",
        "ZADD z 1 a",
        "ZADD z XX 5 nosuch",
        "ZINCRBY z 1 a",
        "ZADD z INCR 1 b",
        "ZREM z a nosuch",
        "ZREM z nosuch",
        "ZADD z 4 d 5 e 6 f",
        "ZREMRANGEBYSCORE z 4 4",
        "ZREMRANGEBYRANK z 0 0",
        "ZREMRANGEBYLEX z [e [e",
        "ZPOPMIN z",
        "ZPOPMAX z",
        "ZADD y 1 a",
        "ZRANGESTORE d y 0 -1",
        "ZUNIONSTORE d 1 y",
        "ZINTERSTORE d 1 y",
        "ZDIFFSTORE d 2 y y",
        "EXPIRE y 100",
        "RENAME y w",
        "ZREM w a",
    ];
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "zset-test", |_| {}).await;
    let want = events(redis.addr, COMMANDS).await;
    let got = events(node.resp_addr, COMMANDS).await;
    assert_eq!(got, want, "keyspace events differ from Redis's");
    support::stop_single(node, cancel).await;
}

/// A random command on keys `k0`..`k3` and members `m0`..`m5`.
fn random_command(rng: &mut StdRng) -> String {
    let key = |rng: &mut StdRng| format!("k{}", rng.gen_range(0..4));
    let member = |rng: &mut StdRng| format!("m{}", rng.gen_range(0..6));
    let score =
        |rng: &mut StdRng| ["0", "1", "2", "-1", "0.5", "2.25", "inf", "-inf", "3"][rng.gen_range(0..9)].to_string();
    let bound =
        |rng: &mut StdRng| ["-inf", "+inf", "0", "(0", "1", "(1", "2", "(2.25", "3"][rng.gen_range(0..9)].to_string();
    let flags = |rng: &mut StdRng| ["", "NX ", "XX ", "GT ", "LT ", "CH ", "GT CH "][rng.gen_range(0..7)].to_string();
    let pairs = |rng: &mut StdRng| {
        (0..rng.gen_range(1..4)).map(|_| format!("{} {}", score(rng), member(rng))).collect::<Vec<_>>().join(" ")
    };
    let keys = |rng: &mut StdRng, n: usize| (0..n).map(|_| key(rng)).collect::<Vec<_>>().join(" ");
    match rng.gen_range(0..30) {
        0..=5 => format!("ZADD {} {}{}", key(rng), flags(rng), pairs(rng)),
        6 => format!("ZADD {} {}INCR {} {}", key(rng), flags(rng).replace("CH ", ""), score(rng), member(rng)),
        7 | 8 => format!("ZINCRBY {} {} {}", key(rng), ["1", "-0.5", "2", "inf"][rng.gen_range(0..4)], member(rng)),
        9 | 10 => format!("ZREM {} {} {}", key(rng), member(rng), member(rng)),
        11 => format!("ZSCORE {} {}", key(rng), member(rng)),
        12 => format!("ZRANGE {} 0 -1 WITHSCORES", key(rng)),
        13 => format!("ZRANGE {} {} {} BYSCORE WITHSCORES", key(rng), bound(rng), bound(rng)),
        14 => format!(
            "ZREVRANGEBYSCORE {} {} {} LIMIT {} {}",
            key(rng),
            bound(rng),
            bound(rng),
            rng.gen_range(0..3),
            rng.gen_range(-1..3)
        ),
        15 => format!("ZRANK {} {}", key(rng), member(rng)),
        16 => format!("ZCOUNT {} {} {}", key(rng), bound(rng), bound(rng)),
        17 => format!("ZREMRANGEBYSCORE {} {} {}", key(rng), bound(rng), bound(rng)),
        18 => format!("ZREMRANGEBYRANK {} {} {}", key(rng), rng.gen_range(-3..3), rng.gen_range(-3..3)),
        19 => format!("ZPOPMIN {} {}", key(rng), rng.gen_range(1..3)),
        20 => format!("ZPOPMAX {}", key(rng)),
        21 => {
            let n = rng.gen_range(1..4);
            format!("ZUNIONSTORE {} {n} {}", key(rng), keys(rng, n))
        }
        22 => {
            let n = rng.gen_range(1..3);
            format!(
                "ZINTERSTORE {} {n} {} AGGREGATE {}",
                key(rng),
                keys(rng, n),
                ["SUM", "MIN", "MAX"][rng.gen_range(0..3)]
            )
        }
        23 => format!("ZDIFFSTORE {} 2 {}", key(rng), keys(rng, 2)),
        24 => format!("ZRANGESTORE {} {} 0 {}", key(rng), key(rng), rng.gen_range(-2..3)),
        25 => format!("ZCARD {}", key(rng)),
        26 => format!("DEL {}", key(rng)),
        27 => format!("SADD {} {}", key(rng), member(rng)),
        28 => format!("SET {} v", key(rng)),
        _ => format!("ZMSCORE {} {} {}", key(rng), member(rng), member(rng)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_sequence_of_sorted_set_commands_replies_as_redis_does() {
    let seed = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commands: Vec<String> = (0..RANDOM_OPS).map(|_| random_command(&mut rng)).collect();
    for k in 0..4 {
        commands.push(format!("TYPE k{k}"));
        commands.push(format!("ZRANGE k{k} 0 -1 WITHSCORES"));
    }
    let (want, got) = both_replies(&commands).await;
    support::redis_server::assert_same_replies(seed, &commands, &want, &got);
}

fn site(name: &str) -> SiteId {
    SiteId::new(name).unwrap()
}

async fn wait_zrange(conn: &mut redis::aio::MultiplexedConnection, key: &str, want: &[(&str, f64)]) {
    let want: Vec<(String, f64)> = want.iter().map(|(m, s)| (m.to_string(), *s)).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Vec<(String, f64)> = conn.zrange_withscores(key, 0, -1).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {got:?}, waited for {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Cut from each other, site a increments a member and removes another while site
/// b increments the same member and adds the removed one again; healed, both hold
/// the sum of both increments and the re-added member (add-wins), identically.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn increments_at_two_sites_add_up_and_an_add_survives_a_concurrent_remove() {
    let mesh = support::Mesh::start(2).await;
    for i in 0..2 {
        support::wait_reading(mesh.node(i), xsite_schemas::FORMAT_VERSION_ZSETS).await;
    }
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: i64 = a.zadd_multiple("board", &[(10.0, "ada"), (5.0, "bob")]).await.unwrap();
    wait_zrange(&mut b, "board", &[("bob", 5.0), ("ada", 10.0)]).await;
    let (ra, rb) = (mesh.node(0).replication.as_ref().unwrap(), mesh.node(1).replication.as_ref().unwrap());
    ra.take_offline(&site("site-b")).await.unwrap();
    rb.take_offline(&site("site-a")).await.unwrap();
    let _: f64 = a.zincr("board", "ada", 1.5).await.unwrap();
    let _: i64 = a.zrem("board", "bob").await.unwrap();
    let _: f64 = b.zincr("board", "ada", 2.0).await.unwrap();
    let _: i64 = b.zadd("board", "bob", 7.0).await.unwrap();
    wait_zrange(&mut a, "board", &[("ada", 11.5)]).await;
    ra.bring_online(&site("site-b")).unwrap();
    rb.bring_online(&site("site-a")).unwrap();
    for conn in [&mut a, &mut b] {
        wait_zrange(conn, "board", &[("bob", 7.0), ("ada", 13.5)]).await;
    }
    mesh.converged().await;
    mesh.shutdown().await;
}

/// redis-py (PyPI) end to end: a leaderboard written at one site and read at the
/// other, ZINCRBY at both at once adding up exactly, ranges, ranks, pops, a store,
/// a transactional pipeline and a delete, over RESP2 and RESP3; the same script
/// against a redis-server first, as the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_uses_sorted_sets_across_two_sites() {
    support::redis_py_across_two_sites("zsets_sites.py", 100, xsite_schemas::FORMAT_VERSION_ZSETS).await;
}
