//! The bit commands (SETBIT GETBIT BITCOUNT BITPOS BITOP BITFIELD BITFIELD_RO), LCS,
//! COPY MOVE SWAPDB, OBJECT, DUMP RESTORE, WAIT and SORT, as clients see them: the same commands sent as raw RESP to a real
//! `redis-server` (7.0, Debian's package) and to a node, every reply compared byte
//! for byte:
//!
//! - a fixed list covering each command's options and every error it gives;
//! - a seeded random sequence of bit operations, compared reply by reply (the seed
//!   is printed on failure; `XSITE_SIM_SEED` replays one);
//! - the keyspace events of bit writes, COPY, MOVE and SORT STORE;
//! - what differs on purpose: SWAPDB refused, no COPY or MOVE between caches of
//!   different topologies; DUMP payloads in xsite's own format, a Redis one refused;
//!   and on two sites, bit edits and MOVE replicating.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use xsite_consumer::merge::CONFLICT_WINDOW_MS_DEFAULT;
use xsite_node::config::{CacheConfig, Topology};
use xsite_node::node::RunningNode;
use xsite_schemas::CacheName;

use support::redis_server::{differences, events, replies, show, Raw, RedisServer};

const WAIT: Duration = Duration::from_secs(30);
/// Operations of the random sequence.
const RANDOM_OPS: usize = 600;

/// The second cache of a node: database 1, of the default cache's kind.
fn second_cache() -> CacheConfig {
    CacheConfig {
        name: CacheName::new("second").unwrap(),
        db: 1,
        policy: "last-write-wins".into(),
        conflict_window_ms: CONFLICT_WINDOW_MS_DEFAULT,
        topology: Topology::ActiveActive,
        primary: None,
    }
}

/// A node alone (no replication) with a second cache on db 1, and an active-passive
/// one on db 2.
async fn start_node(dir: &std::path::Path) -> (RunningNode, CancellationToken) {
    support::start_single(dir, "bits-test", |c| {
        c.caches.push(second_cache());
        c.caches.push(support::passive_cache("passive", 2, "bits-test"));
    })
    .await
}

async fn stop_node(node: RunningNode, cancel: CancellationToken) {
    support::stop_single(node, cancel).await
}

/// Every command's options and errors, on keys `a` `b` `c` `s` (a string) `n` (an
/// integer) and `e` (an empty string).
const FIXED: &[&str] = &[
    "SET s foobar",
    "SET n 12345",
    "SET e ''",
    // SETBIT / GETBIT
    "SETBIT a 7 1",
    "SETBIT a 7 1",
    "SETBIT a 7 0",
    "SETBIT a 100 1",
    "GET a",
    "SETBIT a -1 1",
    "SETBIT a x 1",
    "SETBIT a 4294967296 1",
    "SETBIT a 1 2",
    "SETBIT a 1 -1",
    "SETBIT a 1 x",
    "SETBIT a x x",
    "SETBIT a 1",
    "GETBIT a 100",
    "GETBIT a 99",
    "GETBIT a 100000",
    "GETBIT nosuch 3",
    "GETBIT a -1",
    "GETBIT a 4294967296",
    "GETBIT a 4294967295",
    "GETBIT n 2",
    "GETBIT n 3",
    "SETBIT n 0 1",
    "GET n",
    // BITCOUNT
    "BITCOUNT s",
    "BITCOUNT s 0 0",
    "BITCOUNT s 1 1",
    "BITCOUNT s 1 -2",
    "BITCOUNT s -2 -1",
    "BITCOUNT s -1 -2",
    "BITCOUNT s 5 30",
    "BITCOUNT s 5 30 BIT",
    "BITCOUNT s 0 -1 bit",
    "BITCOUNT s 3 12 BIT",
    "BITCOUNT s -5 -1 BIT",
    "BITCOUNT s 1 1 BYTE",
    "BITCOUNT s 1 1 nibble",
    "BITCOUNT s 1",
    "BITCOUNT s 1 2 BIT x",
    "BITCOUNT s x 1",
    "BITCOUNT s 1 x",
    "BITCOUNT nosuch",
    "BITCOUNT nosuch 1",
    "BITCOUNT nosuch x y",
    "BITCOUNT e",
    "BITCOUNT e 0 -1",
    "BITCOUNT n",
    // BITPOS
    "BITPOS s 1",
    "BITPOS s 0",
    "BITPOS s 1 2",
    "BITPOS s 0 2 -1",
    "BITPOS s 1 2 -1 BYTE",
    "BITPOS s 1 7 15 BIT",
    "BITPOS s 0 7 15 BIT",
    "BITPOS s 1 -10 -1 bit",
    "BITPOS s 0 40 47 BIT",
    "BITPOS s 1 100 200",
    "BITPOS s 1 2 1",
    "BITPOS s 2",
    "BITPOS s -1",
    "BITPOS s x",
    "BITPOS s 1 x",
    "BITPOS s 1 0 x",
    "BITPOS s 1 0 1 nibble",
    "BITPOS s 1 0 1 BIT x",
    "BITPOS nosuch 1",
    "BITPOS nosuch 0",
    "BITPOS nosuch 2",
    "BITPOS e 0",
    "BITPOS e 1",
    "SET ff \u{7f}",
    "BITPOS ff 0",
    "BITPOS ff 1",
    "BITPOS n 1",
    "SETBIT zz 159 0",
    "BITOP NOT ones zz",
    "BITPOS ones 0",
    "BITPOS ones 1",
    "BITPOS ones 0 0 -1",
    "BITPOS ones 0 3 100 BIT",
    "BITPOS zz 1",
    "BITPOS zz 0 3",
    "BITPOS zz 1 8 159 BIT",
    "SETBIT zz 150 1",
    "BITPOS zz 1 8 159 BIT",
    "BITPOS zz 1 2",
    // BITOP
    "SET b abc",
    "SET c defgh",
    "BITOP AND dst b c",
    "GET dst",
    "BITOP or dst b c",
    "GET dst",
    "BITOP XOR dst b c s",
    "GET dst",
    "BITOP NOT dst b",
    "GET dst",
    "BITOP NOT dst b c",
    "BITOP NAND dst b c",
    "BITOP AND dst nosuch",
    "EXISTS dst",
    "BITOP AND dst nosuch",
    "BITOP AND dst b nosuch",
    "GET dst",
    "SET t x EX 100",
    "BITOP OR t b",
    "TTL t",
    "BITOP",
    "BITOP AND dst",
    // BITFIELD
    "BITFIELD bf SET u8 0 255",
    "BITFIELD bf GET u8 0 GET i8 0 GET u4 4 GET i4 4",
    "BITFIELD bf INCRBY u8 0 10",
    "BITFIELD bf OVERFLOW SAT INCRBY u8 0 300 INCRBY i8 0 -300",
    "BITFIELD bf OVERFLOW FAIL INCRBY u8 0 300 GET u8 0",
    "BITFIELD bf OVERFLOW WRAP INCRBY i16 #1 40000",
    "BITFIELD bf SET i64 8 -1 GET i64 8 GET u63 8",
    "BITFIELD bf INCRBY i64 8 1 INCRBY i64 8 -1",
    "BITFIELD bf SET i64 8 9223372036854775807 INCRBY i64 8 1",
    "BITFIELD bf OVERFLOW SAT SET i64 8 9223372036854775807 INCRBY i64 8 1 INCRBY i64 8 -1",
    "BITFIELD bf OVERFLOW SAT SET u8 0 -1 SET i8 0 200 GET u8 0",
    "BITFIELD bf OVERFLOW FAIL SET u8 0 -1 SET i4 0 -9",
    "BITFIELD bf SET u8 #2 7 GET u8 #2 GET u8 16",
    "GET bf",
    "BITFIELD bf",
    "BITFIELD bf OVERFLOW WRAP",
    "BITFIELD bf GET u64 0",
    "BITFIELD bf GET i65 0",
    "BITFIELD bf GET u0 0",
    "BITFIELD bf GET I8 0",
    "BITFIELD bf GET x8 0",
    "BITFIELD bf GET u8 -1",
    "BITFIELD bf GET u8 x",
    "BITFIELD bf GET u8 #x",
    "BITFIELD bf GET u8 4294967296",
    "BITFIELD bf SET u8 0",
    "BITFIELD bf SET u8 0 x",
    "BITFIELD bf INCRBY u8 0 1.5",
    "BITFIELD bf OVERFLOW NONE GET u8 0",
    "BITFIELD bf OVERFLOW",
    "BITFIELD bf FOO u8 0",
    "BITFIELD bf GET u8",
    "BITFIELD nosuch GET u8 0",
    "EXISTS nosuch",
    "BITFIELD fresh OVERFLOW FAIL INCRBY u2 10 5",
    "GET fresh",
    "BITFIELD n GET u8 0",
    "BITFIELD_RO bf GET u8 0 GET i16 #1",
    "BITFIELD_RO bf SET u8 0 1",
    "BITFIELD_RO bf GET u8 0 INCRBY u8 0 1",
    "BITFIELD_RO bf GET u8",
    "BITFIELD_RO nosuch GET u8 0",
    "BITFIELD_RO bf",
    // LCS
    "SET l1 ohmytext",
    "SET l2 mynewtext",
    "LCS l1 l2",
    "LCS l1 l2 LEN",
    "LCS l1 l2 IDX",
    "LCS l1 l2 IDX MINMATCHLEN 4",
    "LCS l1 l2 IDX MINMATCHLEN 4 WITHMATCHLEN",
    "LCS l1 l2 idx withmatchlen",
    "LCS l1 l2 IDX MINMATCHLEN -3",
    "LCS l1 l2 IDX LEN",
    "LCS l1 l2 MINMATCHLEN",
    "LCS l1 l2 MINMATCHLEN x",
    "LCS l1 l2 FOO",
    "LCS l1 nosuch",
    "LCS nosuch nosuch IDX",
    "LCS l1 l1 IDX WITHMATCHLEN",
    "LCS n s",
    "LCS l1",
    // in RESP3, LCS IDX is a map (HELLO's reply names the server: not compared)
    "!HELLO 3",
    "LCS l1 l2 IDX WITHMATCHLEN",
    "BITFIELD nosuch2 OVERFLOW FAIL INCRBY u8 0 256",
    "!HELLO 2",
    // COPY / MOVE / SWAPDB between databases 0 and 1
    "SET ca 1",
    "SET cb x EX 100",
    "INCR counter",
    "COPY ca ca",
    "COPY ca cc",
    "GET cc",
    "COPY ca cc",
    "SET ca 2",
    "COPY ca cc REPLACE",
    "GET cc",
    "COPY cb cd",
    "TTL cd",
    "COPY counter cnt",
    "INCR cnt",
    "GET counter",
    "COPY nosuch x",
    "COPY ca cc DB 1",
    "COPY ca ca DB 1",
    "COPY ca cc DB 1",
    "COPY ca cc db 1 replace",
    "COPY cb cb DB 1",
    "SELECT 1",
    "GET cc",
    "TTL cb",
    "COPY cc back DB 0",
    "SELECT 0",
    "GET back",
    "COPY ca cc DB x",
    "COPY ca cc DB -1",
    "COPY ca cc DB 99999999999",
    "COPY ca cc FOO",
    "COPY ca cc DB",
    "COPY ca cc REPLACE DB",
    "COPY ca",
    "SET mv v EX 100",
    "MOVE mv 0",
    "MOVE mv 1",
    "EXISTS mv",
    "MOVE nosuch 1",
    "SET mv2 w",
    "MOVE ca 1",
    "GET ca",
    "SELECT 1",
    "GET mv",
    "TTL mv",
    "SELECT 0",
    "MOVE mv x",
    "MOVE mv -1",
    "MOVE mv",
    "MULTI",
    "COPY mv2 tx DB 1",
    "MOVE mv2 1",
    "EXISTS mv2",
    "EXEC",
    "SELECT 1",
    "MGET tx mv2",
    "SELECT 0",
    "SWAPDB x 1",
    "SWAPDB 0 x",
    "SWAPDB 0",
    // OBJECT
    "SET o1 100",
    "SET o2 -12345",
    "SET o3 12345678901234567890",
    "SET o4 -0",
    "SET o5 0123",
    "SET o6 abcdefghijabcdefghijabcdefghijabcdefghij1234",
    "SET o7 abcdefghijabcdefghijabcdefghijabcdefghij12345",
    "INCR o8",
    "OBJECT ENCODING o1",
    "OBJECT ENCODING o2",
    "OBJECT ENCODING o3",
    "OBJECT ENCODING o4",
    "OBJECT ENCODING o5",
    "OBJECT ENCODING o6",
    "OBJECT ENCODING o7",
    "OBJECT ENCODING o8",
    "OBJECT encoding nosuch",
    "OBJECT REFCOUNT o1",
    "OBJECT REFCOUNT o2",
    "OBJECT REFCOUNT o6",
    "OBJECT REFCOUNT o8",
    "OBJECT REFCOUNT nosuch",
    "OBJECT IDLETIME o1",
    "OBJECT IDLETIME nosuch",
    "OBJECT FREQ o1",
    "OBJECT FREQ nosuch",
    "OBJECT HELP",
    "OBJECT help x",
    "OBJECT ENCODING",
    "OBJECT ENCODING a b",
    "OBJECT FOO k",
    "OBJECT",
    // DUMP / RESTORE errors (the payloads themselves differ: see below)
    "DUMP nosuch",
    "RESTORE r 0 garbage",
    "RESTORE r 0 ''",
    "SET r x",
    "RESTORE r 0 garbage",
    "RESTORE r x garbage",
    "RESTORE r x garbage REPLACE",
    "RESTORE r -1 garbage REPLACE",
    "RESTORE r 0 garbage REPLACE",
    "RESTORE r 0 garbage FOO",
    "RESTORE r 0 garbage IDLETIME -1",
    "RESTORE r 0 garbage IDLETIME x",
    "RESTORE r 0 garbage IDLETIME",
    "RESTORE r 0 garbage FREQ 256",
    "RESTORE r 0 garbage FREQ -1",
    "RESTORE r 0 garbage IDLETIME 1 FREQ 1",
    "RESTORE r 0 garbage FREQ 1 IDLETIME 1",
    "RESTORE r 0 garbage REPLACE ABSTTL IDLETIME 10",
    "RESTORE r 0",
    "DUMP",
    // WAIT (no remote site here, no replica there)
    "WAIT 0 0",
    "WAIT 1 10",
    "WAIT -1 0",
    "WAIT x 0",
    "WAIT 0 x",
    "WAIT 0 1.5",
    "WAIT 0 -1",
    "WAIT 0",
    // SORT on strings: a missing key is an empty list, a string the wrong type
    "SET sk 3",
    "SET sdst x",
    "SORT nosuch",
    "SORT nosuch DESC ALPHA LIMIT 0 10 BY w_* GET # GET o_*",
    "SORT sk",
    "SORT sk ALPHA",
    "SORT nosuch LIMIT 0",
    "SORT nosuch LIMIT x 1",
    "SORT nosuch LIMIT 0 x",
    "SORT nosuch FOO",
    "SORT nosuch BY",
    "SORT sk FOO",
    "SORT sk STORE sdst",
    "EXISTS sdst",
    "SORT nosuch STORE sdst",
    "EXISTS sdst",
    "SORT nosuch STORE sdst",
    "SORT_RO nosuch",
    "SORT_RO sk",
    "SORT_RO nosuch STORE sdst",
    "SORT_RO nosuch GET # BY x",
    "SORT",
];

/// A random bit command on keys `k0`..`k3`, with offsets small enough that a value
/// stays a few hundred bytes.
fn random_command(rng: &mut StdRng) -> String {
    let key = |rng: &mut StdRng| format!("k{}", rng.gen_range(0..4));
    let index = |rng: &mut StdRng| rng.gen_range(-40i64..40);
    let unit = |rng: &mut StdRng| ["", " BIT", " BYTE"][rng.gen_range(0..3)];
    match rng.gen_range(0..9) {
        0 | 1 => format!("SETBIT {} {} {}", key(rng), rng.gen_range(0..400), rng.gen_range(0..2)),
        2 => format!("GETBIT {} {}", key(rng), rng.gen_range(0..450)),
        3 => match rng.gen_range(0..2) {
            0 => format!("BITCOUNT {}", key(rng)),
            _ => format!("BITCOUNT {} {} {}{}", key(rng), index(rng), index(rng), unit(rng)),
        },
        4 => match rng.gen_range(0..3) {
            0 => format!("BITPOS {} {}", key(rng), rng.gen_range(0..2)),
            1 => format!("BITPOS {} {} {}", key(rng), rng.gen_range(0..2), index(rng)),
            _ => format!("BITPOS {} {} {} {}{}", key(rng), rng.gen_range(0..2), index(rng), index(rng), unit(rng)),
        },
        5 => {
            let op = ["AND", "OR", "XOR", "NOT"][rng.gen_range(0..4)];
            let n = if op == "NOT" { 1 } else { rng.gen_range(1..4) };
            let sources: Vec<String> = (0..n).map(|_| key(rng)).collect();
            format!("BITOP {op} {} {}", key(rng), sources.join(" "))
        }
        6 => format!("DEL {}", key(rng)),
        _ => {
            let mut command = format!("BITFIELD {}", key(rng));
            for _ in 0..rng.gen_range(1..4) {
                let signed = rng.gen_bool(0.5);
                let bits = rng.gen_range(1..=if signed { 64 } else { 63 });
                let ty = format!("{}{bits}", if signed { 'i' } else { 'u' });
                let offset = if rng.gen_bool(0.3) {
                    format!("#{}", rng.gen_range(0..6))
                } else {
                    rng.gen_range(0..300).to_string()
                };
                let value: i64 = match rng.gen_range(0..3) {
                    0 => rng.gen_range(-300..300),
                    1 => rng.gen(),
                    _ => 1i64.checked_shl(bits - 1).unwrap_or(0).wrapping_sub(rng.gen_range(0..3)),
                };
                match rng.gen_range(0..4) {
                    0 => command += &format!(" GET {ty} {offset}"),
                    1 => command += &format!(" SET {ty} {offset} {value}"),
                    2 => command += &format!(" INCRBY {ty} {offset} {value}"),
                    _ => command += [" OVERFLOW WRAP", " OVERFLOW SAT", " OVERFLOW FAIL"][rng.gen_range(0..3)],
                }
            }
            command
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_of_these_commands_is_redis_7s() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let commands: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    let want = replies(redis.addr, &commands).await;
    let got = replies(node.resp_addr, &commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "replies differ from Redis's:\n{}", diffs.join("\n"));
    stop_node(node, cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_sequence_of_bit_commands_replies_as_redis_does() {
    let seed = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commands: Vec<String> = (0..RANDOM_OPS).map(|_| random_command(&mut rng)).collect();
    commands.extend((0..4).map(|k| format!("GET k{k}")));
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let want = replies(redis.addr, &commands).await;
    let got = replies(node.resp_addr, &commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(
        diffs.is_empty(),
        "XSITE_SIM_SEED={seed}: {} of {} replies differ from Redis's:\n{}",
        diffs.len(),
        commands.len(),
        diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    stop_node(node, cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapdb_and_crossing_to_another_kind_of_cache_are_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let mut conn = Raw::connect(node.resp_addr).await;
    let reply = show(&conn.call("SWAPDB 0 1").await);
    assert!(reply.starts_with("-ERR SWAPDB is not supported: each database is a replicated cache"), "{reply}");
    assert_eq!(conn.call("SET k v").await, b"+OK\r\n");
    for command in ["COPY k k DB 2", "MOVE k 2"] {
        let reply = show(&conn.call(command).await);
        assert!(
            reply.starts_with("-ERR cannot cross from db 0 (cache default: ActiveActive, last-write-wins) to db 2 (cache passive: ActivePassive"),
            "{command}: {reply}"
        );
    }
    assert_eq!(show(&conn.call("COPY k k DB 3").await), "-ERR DB index is out of range\\r\\n");
    assert_eq!(conn.call("GET k").await, b"$1\r\nv\r\n", "a refused MOVE leaves the key");
    stop_node(node, cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_are_redis_7s() {
    const COMMANDS: &[&str] = &[
        "SETBIT b 3 1",
        "SETBIT b 3 1",
        "SETBIT b 3 0",
        "BITFIELD f SET u8 0 1",
        "BITFIELD f SET u8 0 1",
        "BITFIELD f GET u8 0",
        "BITFIELD g OVERFLOW FAIL INCRBY u2 0 9",
        "BITOP NOT n b",
        "BITOP AND n nosuch",
        "COPY b c",
        "COPY b c DB 1 REPLACE",
        "MOVE f 1",
        "SET s 1",
        "SORT nosuch STORE s",
        "SELECT 1",
        "MOVE c 0",
        "SELECT 0",
    ];
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let want = events(redis.addr, COMMANDS).await;
    let got = events(node.resp_addr, COMMANDS).await;
    let names: Vec<&str> = want.iter().filter_map(|m| m.rsplit("__:").next()?.split('\\').next()).collect();
    for event in ["setbit", "set", "del", "copy_to", "move_from", "move_to"] {
        assert!(names.contains(&event), "redis sent {event}: {names:?}");
    }
    assert_eq!(got, want, "the events differ from Redis's");
    stop_node(node, cancel).await;
}

/// One command as RESP, its arguments binary.
fn encode_binary(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn call_binary(conn: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(WAIT, conn.stream().write_all(&encode_binary(args))).await.unwrap().unwrap();
    conn.reply().await
}

/// The bytes of a bulk reply.
fn bulk(reply: &[u8]) -> Vec<u8> {
    let line_end = reply.windows(2).position(|w| w == b"\r\n").expect("a reply line");
    assert_eq!(reply[0], b'$', "a bulk reply: {}", show(reply));
    let len: usize = std::str::from_utf8(&reply[1..line_end]).unwrap().parse().unwrap();
    reply[line_end + 2..line_end + 2 + len].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_and_restore_round_trip_and_a_redis_payload_is_refused() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let mut conn = Raw::connect(node.resp_addr).await;
    let value: &[u8] = b"binary \r\n\x00\xff value";
    assert_eq!(call_binary(&mut conn, &[b"SET", b"v", value, b"EX", b"1000"]).await, b"+OK\r\n");
    let payload = bulk(&conn.call("DUMP v").await);
    assert!(payload.starts_with(b"XSDU\x01\x00"), "xsite's format, version 1, a string");
    assert_eq!(call_binary(&mut conn, &[b"RESTORE", b"w", b"0", &payload]).await, b"+OK\r\n");
    assert_eq!(bulk(&conn.call("GET w").await), value);
    assert_eq!(conn.call("TTL w").await, b":-1\r\n", "a TTL of 0 restores without expiry");
    let busy = call_binary(&mut conn, &[b"RESTORE", b"w", b"0", &payload]).await;
    assert_eq!(busy, b"-BUSYKEY Target key name already exists.\r\n");
    assert_eq!(call_binary(&mut conn, &[b"RESTORE", b"w", b"5000", &payload, b"REPLACE"]).await, b"+OK\r\n");
    let pttl: i64 = String::from_utf8(conn.call("PTTL w").await).unwrap()[1..].trim_end().parse().unwrap();
    assert!((4000..=5000).contains(&pttl), "{pttl}");
    let past = call_binary(&mut conn, &[b"RESTORE", b"w", b"1000", &payload, b"REPLACE", b"ABSTTL"]).await;
    assert_eq!(past, b"+OK\r\n", "an absolute TTL in the past deletes the key it replaces");
    assert_eq!(conn.call("EXISTS w").await, b":0\r\n");
    let mut damaged = payload.clone();
    damaged[12] ^= 1;
    let refused = call_binary(&mut conn, &[b"RESTORE", b"x", b"0", &damaged]).await;
    assert_eq!(refused, b"-ERR DUMP payload version or checksum are wrong\r\n");

    let mut at_redis = Raw::connect(redis.addr).await;
    assert_eq!(call_binary(&mut at_redis, &[b"SET", b"v", value]).await, b"+OK\r\n");
    let redis_payload = bulk(&at_redis.call("DUMP v").await);
    let refused = call_binary(&mut conn, &[b"RESTORE", b"x", b"0", &redis_payload]).await;
    assert_eq!(refused, b"-ERR DUMP payload version or checksum are wrong\r\n", "a real Redis payload is refused");
    let theirs = call_binary(&mut at_redis, &[b"RESTORE", b"x", b"0", &payload]).await;
    assert_eq!(theirs, refused, "and Redis refuses ours with the same error");
    assert_eq!(conn.call("EXISTS x").await, b":0\r\n");
    stop_node(node, cancel).await;
}

/// WAIT 1 counts site b once b applied the write, and times out with 0 while b is
/// down, after about the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_counts_the_sites_that_applied_this_write() {
    let mut mesh = support::Mesh::start(2).await;
    let mut a = Raw::connect(mesh.node(0).resp_addr).await;
    assert_eq!(a.call("SET k 1").await, b"+OK\r\n");
    assert_eq!(a.call("WAIT 1 20000").await, b":1\r\n");
    support::wait_get(&mut mesh.conn(1).await, b"k", Some(b"1")).await;
    assert_eq!(a.call("WAIT 1 0").await, b":1\r\n", "already met: at once");

    mesh.stop(1).await;
    assert_eq!(a.call("SET k 2").await, b"+OK\r\n");
    let started = std::time::Instant::now();
    assert_eq!(a.call("WAIT 1 300").await, b":0\r\n", "site b cannot have applied it");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < WAIT, "waited {took:?}");
    assert_eq!(a.call("WAIT 0 300").await, b":0\r\n", "numsites 0 is met at once");

    mesh.restart(1).await;
    assert_eq!(a.call("WAIT 1 20000").await, b":1\r\n", "back, b applies it");
    support::wait_get(&mut mesh.conn(1).await, b"k", Some(b"2")).await;
    mesh.shutdown().await;
}

/// A MOVE at one site is a delete in db 0 and a put in db 1 at the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_replicates_as_a_delete_and_a_put_in_the_other_cache() {
    let mesh = support::Mesh::start_with(2, |c| c.caches.push(second_cache())).await;
    let mut a = Raw::connect(mesh.node(0).resp_addr).await;
    assert_eq!(a.call("SET k moved EX 1000").await, b"+OK\r\n");
    let mut at_b = mesh.conn(1).await;
    support::wait_get(&mut at_b, b"k", Some(b"moved")).await;
    assert_eq!(a.call("MOVE k 1").await, b":1\r\n");
    support::wait_get(&mut at_b, b"k", None).await;
    let mut b = Raw::connect(mesh.node(1).resp_addr).await;
    assert_eq!(b.call("SELECT 1").await, b"+OK\r\n");
    let deadline = std::time::Instant::now() + WAIT;
    while b.call("GET k").await != b"$5\r\nmoved\r\n" {
        assert!(std::time::Instant::now() < deadline, "the moved key never reached db 1 at site b");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ttl = String::from_utf8(b.call("TTL k").await).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').trim_end().parse().unwrap();
    assert!((990..=1000).contains(&ttl), "the expiry moved along: {ttl}");
    mesh.shutdown().await;
}

/// A bit edit at one site reaches the other as the whole value, with the expiry the
/// key had; BITOP's destination has none. A bit write whose value could not cross to
/// another site in one message is refused before the value is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bit_edits_replicate_as_the_whole_value_keeping_the_expiry() {
    let mesh = support::Mesh::start(2).await;
    let mut a = Raw::connect(mesh.node(0).resp_addr).await;
    for command in ["SETBIT big 4294967295 1", "BITFIELD big SET u8 4294967288 1"] {
        let reply = show(&a.call(command).await);
        assert!(reply.starts_with("-ERR the write would make a replication entry"), "{command}: {reply}");
    }
    assert_eq!(a.call("EXISTS big").await, b":0\r\n", "a refused write changes nothing");
    assert_eq!(a.call("SET k @ EX 1000").await, b"+OK\r\n");
    assert_eq!(a.call("SETBIT k 7 1").await, b":0\r\n");
    assert_eq!(a.call("BITFIELD k SET u8 8 66").await, b"*1\r\n:0\r\n");
    assert_eq!(a.call("BITOP NOT dst k").await, b":2\r\n");
    let mut at_b = mesh.conn(1).await;
    support::wait_get(&mut at_b, b"k", Some(b"AB")).await;
    support::wait_get(&mut at_b, b"dst", Some(&[!b'A', !b'B'])).await;
    let mut b = Raw::connect(mesh.node(1).resp_addr).await;
    let ttl = String::from_utf8(b.call("TTL k").await).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').trim_end().parse().unwrap();
    assert!((990..=1000).contains(&ttl), "the expiry came along: {ttl}");
    assert_eq!(b.call("TTL dst").await, b":-1\r\n");
    mesh.shutdown().await;
}
