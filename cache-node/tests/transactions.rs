//! Transactions (`MULTI` `EXEC` `DISCARD` `WATCH` `UNWATCH`) as clients see them:
//!
//! - the same scenarios sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply compared byte for byte;
//! - `WATCH` aborted by a write made at another site, once it is applied here;
//! - redis-py's transactional `pipeline()` and its `WATCH` retry loop, with two
//!   incrementers racing (RESP2 and RESP3);
//! - atomicity: a reader polling `MGET a b` never sees half of `MULTI; SET a n;
//!   SET b n; EXEC`.
//!
//! Every wait is bounded by [`WAIT`]; the one scenario about expiry polls until the
//! key expired on both servers.

mod support;

use std::io::Cursor;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_consumer::merge::CONFLICT_WINDOW_MS_DEFAULT;
use xsite_node::config::{CacheConfig, Topology};
use xsite_node::node::RunningNode;
use xsite_node::resp::Frame;
use xsite_schemas::CacheName;

use support::redis_server::{show, Raw, RedisServer};

const WAIT: Duration = Duration::from_secs(30);

/// A node alone (no replication) with a second cache on db 1.
async fn start_node(dir: &std::path::Path) -> (RunningNode, CancellationToken) {
    support::start_single(dir, "tx-test", |c| {
        c.caches.push(CacheConfig {
            name: CacheName::new("second").unwrap(),
            db: 1,
            policy: "last-write-wins".into(),
            conflict_window_ms: CONFLICT_WINDOW_MS_DEFAULT,
            topology: Topology::ActiveActive,
            primary: None,
        });
    })
    .await
}

async fn stop_node(node: RunningNode, cancel: CancellationToken) {
    support::stop_single(node, cancel).await
}

/// One step of a scenario: which client sends what.
#[derive(Clone, Copy)]
enum Step {
    /// Client `0` or `1` sends a command; the replies must be equal.
    Cmd(usize, &'static str),
    /// Like `Send`, but the replies are not compared (they name the server).
    Unchecked(usize, &'static str),
    /// Client 1 sends the command until it gets the reply.
    Until(&'static str, &'static str),
}

use Step::{Cmd, Unchecked, Until};

/// The scenarios, each on two fresh connections to an empty server. `a(…)` is the
/// first client, `b(…)` the second.
fn scenarios() -> Vec<(&'static str, Vec<Step>)> {
    let a = |c| Cmd(0, c);
    let b = |c| Cmd(1, c);
    vec![
        ("a transaction", vec![a("MULTI"), a("SET k v"), a("INCR n"), a("GET k"), a("EXEC"), a("GET n")]),
        ("an empty transaction", vec![a("MULTI"), a("EXEC")]),
        (
            "an unknown command while queuing aborts EXEC",
            vec![a("MULTI"), a("SET k v"), a("NOSUCH x y"), a("SET j v"), a("EXEC"), a("EXISTS k j")],
        ),
        (
            "a wrong number of arguments while queuing aborts EXEC",
            vec![a("MULTI"), a("GET"), a("SET k"), a("CLIENT NOSUCH"), a("SET k v"), a("EXEC"), a("GET k")],
        ),
        ("SAVE cannot be queued", vec![a("MULTI"), a("SET k v"), a("SAVE"), a("EXEC"), a("GET k")]),
        (
            "a runtime error is an element of the EXEC reply, the rest runs",
            vec![a("SET s text"), a("MULTI"), a("INCR s"), a("SET k v"), a("RENAME nosuch x"), a("GET k"), a("EXEC")],
        ),
        (
            "one key many times and many keys",
            vec![
                a("MULTI"),
                a("SET k 1"),
                a("INCR k"),
                a("INCRBY k 5"),
                a("MSET k 10 j 20 i 30"),
                a("RENAME k k2"),
                a("MGET k k2 j i"),
                a("DEL j i"),
                a("EXEC"),
                a("MGET k k2 j i"),
            ],
        ),
        ("nested MULTI", vec![a("MULTI"), a("SET k v"), a("MULTI"), a("EXEC"), a("GET k")]),
        ("MULTI with an argument", vec![a("MULTI"), a("MULTI x"), a("EXEC")]),
        ("EXEC and DISCARD without MULTI", vec![a("EXEC"), a("DISCARD"), a("EXEC x"), a("DISCARD x")]),
        ("EXEC with an argument discards", vec![a("MULTI"), a("SET k v"), a("EXEC x"), a("EXEC"), a("GET k")]),
        ("DISCARD", vec![a("MULTI"), a("SET k v"), a("DISCARD"), a("GET k"), a("EXEC")]),
        (
            "WATCH inside MULTI",
            vec![a("MULTI"), a("WATCH k"), a("SET k v"), a("EXEC"), a("MULTI"), a("WATCH"), a("EXEC")],
        ),
        ("WATCH without keys", vec![a("WATCH"), a("UNWATCH x"), a("UNWATCH")]),
        (
            "WATCH aborted by another client",
            vec![a("SET k 1"), a("WATCH k"), b("SET k 2"), a("MULTI"), a("SET k 3"), a("EXEC"), a("GET k")],
        ),
        (
            "WATCH aborted by the same value written again",
            vec![a("SET k 1"), a("WATCH k"), b("SET k 1"), a("MULTI"), a("INCR k"), a("EXEC"), a("GET k")],
        ),
        (
            "WATCH aborted by the client itself",
            vec![a("WATCH k"), a("SET k 1"), a("MULTI"), a("INCR k"), a("EXEC"), a("GET k")],
        ),
        (
            "WATCH not aborted by another key, a write that changed nothing or a delete of nothing",
            vec![
                a("SET k 1"),
                a("WATCH k nothing"),
                b("SET other 1"),
                b("SET k 2 NX"),
                b("DEL nothing"),
                a("MULTI"),
                a("INCR k"),
                a("EXEC"),
            ],
        ),
        (
            "WATCH then UNWATCH",
            vec![a("WATCH k"), a("UNWATCH"), b("SET k 2"), a("MULTI"), a("SET k 3"), a("EXEC"), a("GET k")],
        ),
        (
            "UNWATCH queued does not save the transaction",
            vec![a("WATCH k"), b("SET k 2"), a("MULTI"), a("UNWATCH"), a("SET k 3"), a("EXEC"), a("GET k")],
        ),
        (
            "EXEC forgets the watched keys, aborted or not",
            vec![
                a("WATCH k"),
                b("SET k 2"),
                a("MULTI"),
                a("EXEC"),
                b("SET k 3"),
                a("MULTI"),
                a("SET k 4"),
                a("EXEC"),
                a("GET k"),
            ],
        ),
        (
            "DISCARD and EXECABORT forget the watched keys",
            vec![
                a("WATCH k"),
                b("SET k 2"),
                a("MULTI"),
                a("DISCARD"),
                a("MULTI"),
                a("EXEC"),
                a("WATCH k"),
                b("SET k 3"),
                a("MULTI"),
                a("NOSUCH"),
                a("EXEC"),
                a("MULTI"),
                a("EXEC"),
            ],
        ),
        (
            "RESET inside MULTI",
            vec![
                a("WATCH k"),
                b("SET k 1"),
                a("MULTI"),
                a("SET k v"),
                a("RESET"),
                a("EXEC"),
                a("MULTI"),
                a("EXEC"),
                a("GET k"),
            ],
        ),
        (
            "FLUSHDB aborts a watched key that existed",
            vec![a("SET k 1"), a("WATCH k"), b("FLUSHDB"), a("MULTI"), a("SET k 2"), a("EXEC"), a("GET k")],
        ),
        (
            "FLUSHDB does not abort a watched key that did not exist",
            vec![a("SET other 1"), a("WATCH k"), b("FLUSHDB"), a("MULTI"), a("SET k 2"), a("EXEC"), a("GET k")],
        ),
        (
            "FLUSHALL and RENAME onto a watched key abort",
            vec![
                a("SET k 1"),
                a("WATCH k"),
                b("FLUSHALL"),
                a("MULTI"),
                a("EXEC"),
                b("SET j 1"),
                a("WATCH k"),
                b("RENAME j k"),
                a("MULTI"),
                a("EXEC"),
            ],
        ),
        (
            "an expiry aborts",
            vec![
                a("SET k v PX 100"),
                a("WATCH k"),
                Until("EXISTS k", ":0\r\n"),
                a("MULTI"),
                a("SET j v"),
                a("EXEC"),
                a("GET j"),
            ],
        ),
        (
            "a key already expired when watched does not",
            vec![a("SET k v PX 50"), Until("EXISTS k", ":0\r\n"), a("WATCH k"), a("MULTI"), a("SET j v"), a("EXEC")],
        ),
        (
            "SELECT inside MULTI",
            vec![
                a("MULTI"),
                a("SET k in0"),
                a("SELECT 1"),
                a("SET k in1"),
                a("GET k"),
                a("SELECT 99"),
                a("GET k"),
                a("EXEC"),
                a("GET k"),
                a("SELECT 0"),
                a("GET k"),
            ],
        ),
        (
            "a watched key of another database",
            vec![
                a("SELECT 1"),
                a("WATCH k"),
                a("SELECT 0"),
                b("SET k 0"),
                a("MULTI"),
                a("EXEC"),
                a("SELECT 1"),
                a("WATCH k"),
                a("SELECT 0"),
                b("SELECT 1"),
                b("SET k 1"),
                a("MULTI"),
                a("EXEC"),
            ],
        ),
        (
            "connection commands inside MULTI",
            vec![
                a("MULTI"),
                a("PING"),
                a("ECHO hi"),
                a("CLIENT SETNAME tx"),
                a("CLIENT GETNAME"),
                a("AUTH nopassword"),
                a("EXEC"),
                a("MULTI"),
                a("QUIT"),
            ],
        ),
        (
            "RESP3: a null reply and an aborted EXEC",
            vec![
                Unchecked(0, "HELLO 3"),
                a("MULTI"),
                a("GET nosuch"),
                a("EXEC"),
                a("WATCH k"),
                b("SET k 1"),
                a("MULTI"),
                a("GET k"),
                a("EXEC"),
            ],
        ),
    ]
}

/// Runs a scenario on `addr`: the replies of the steps that are compared.
async fn run_scenario(addr: SocketAddr, steps: &[Step]) -> Vec<(String, Vec<u8>)> {
    let mut clean = Raw::connect(addr).await;
    assert_eq!(clean.call("FLUSHALL").await, b"+OK\r\n");
    let mut clients = [Raw::connect(addr).await, Raw::connect(addr).await];
    let mut replies = Vec::new();
    for step in steps {
        match *step {
            Cmd(i, command) => replies.push((format!("{}: {command}", ["a", "b"][i]), clients[i].call(command).await)),
            Unchecked(i, command) => drop(clients[i].call(command).await),
            Until(command, expected) => {
                let deadline = Instant::now() + WAIT;
                while clients[1].call(command).await != expected.as_bytes() {
                    assert!(Instant::now() < deadline, "{command} never answered {}", show(expected.as_bytes()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_is_redis_7s() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let mut differences = Vec::new();
    for (name, steps) in scenarios() {
        let want = run_scenario(redis.addr, &steps).await;
        let got = run_scenario(node.resp_addr, &steps).await;
        assert_eq!(want.len(), got.len());
        for ((step, want), (_, got)) in want.iter().zip(&got) {
            if want != got {
                differences.push(format!("{name}: {step}: redis {} xsite {}", show(want), show(got)));
            }
        }
    }
    assert!(differences.is_empty(), "replies differ from Redis's:\n{}", differences.join("\n"));
    stop_node(node, cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_applied_from_another_site_aborts_exec() {
    let mesh = support::Mesh::start(2).await;
    let (a, b) = (mesh.node(0).resp_addr, mesh.node(1).resp_addr);
    let mut watcher = Raw::connect(a).await;
    let mut at_b = Raw::connect(b).await;
    assert_eq!(watcher.call("SET k from-a").await, b"+OK\r\n");
    let mut reader = mesh.conn(0).await;
    assert_eq!(watcher.call("WATCH k").await, b"+OK\r\n");
    assert_eq!(at_b.call("SET k from-b").await, b"+OK\r\n");
    support::wait_get(&mut reader, b"k", Some(b"from-b")).await;
    let replies = watcher.pipeline(&["MULTI", "SET k mine", "EXEC", "GET k"]).await;
    let replies: Vec<String> = replies.iter().map(|r| show(r)).collect();
    assert_eq!(replies, ["+OK\\r\\n", "+QUEUED\\r\\n", "*-1\\r\\n", "$6\\r\\nfrom-b\\r\\n"]);

    // A remote write to another key, or none at all, leaves the transaction be.
    assert_eq!(watcher.call("WATCH k").await, b"+OK\r\n");
    assert_eq!(at_b.call("SET other x").await, b"+OK\r\n");
    support::wait_get(&mut reader, b"other", Some(b"x")).await;
    let replies = watcher.pipeline(&["MULTI", "SET k mine", "EXEC"]).await;
    assert_eq!(show(&replies[2]), "*1\\r\\n+OK\\r\\n");
    support::wait_get(&mut mesh.conn(1).await, b"k", Some(b"mine")).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_pipelines_and_watch_loops_count_exactly() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/watch_incr.py");
    for (what, port) in [("redis-server", redis.addr.port()), ("xsite", node.resp_addr.port())] {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3").arg(script).arg(port.to_string()).arg("200").output().expect("python3 is installed")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{what}: {stdout}");
        assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() == 2, "{what}: {stdout}");
    }
    stop_node(node, cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reader_sees_half_a_transaction() {
    const ROUNDS: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path()).await;
    let addr = node.resp_addr;
    let writer = tokio::spawn(async move {
        let mut c = Raw::connect(addr).await;
        for n in 1..=ROUNDS {
            let (set_a, set_b) = (format!("SET a {n}"), format!("SET b {n}"));
            let replies = c.pipeline(&["MULTI", &set_a, &set_b, "EXEC"]).await;
            assert_eq!(replies[3], b"*2\r\n+OK\r\n+OK\r\n", "round {n}");
        }
    });
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let mut reads = 0usize;
            let mut last = 0u64;
            loop {
                let reply = c.call("MGET a b").await;
                let Frame::Array(values) = Frame::parse(&mut Cursor::new(&reply[..])).unwrap() else {
                    panic!("MGET answered {}", show(&reply));
                };
                let [a, b] = &values[..] else { panic!("{values:?}") };
                assert_eq!(a, b, "a reader saw half a transaction");
                reads += 1;
                if let Frame::Bulk(v) = a {
                    last = std::str::from_utf8(v).unwrap().parse().unwrap();
                }
                if last == ROUNDS as u64 {
                    return reads;
                }
            }
        }));
    }
    tokio::time::timeout(WAIT * 4, writer).await.unwrap().unwrap();
    for reader in readers {
        let reads = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        assert!(reads > 1, "the reader raced the writer");
    }

    // A transaction of more entries than one WAL batch takes.
    let mut c = Raw::connect(addr).await;
    let n = xsite_node::engine::WAL_BATCH_ENTRIES_MAX + 10;
    let sets: Vec<String> = (0..n).map(|i| format!("SET big{i} {i}")).collect();
    let mut commands: Vec<&str> = vec!["MULTI"];
    commands.extend(sets.iter().map(String::as_str));
    commands.extend(["EXEC", "DBSIZE"]);
    let replies = c.pipeline(&commands).await;
    let exec = Frame::parse(&mut Cursor::new(&replies[n + 1][..])).unwrap();
    assert_eq!(exec, Frame::Array(vec![Frame::Simple("OK".into()); n]));
    assert_eq!(replies[n + 2], format!(":{}\r\n", n + 2).into_bytes());
    stop_node(node, cancel).await;
}

/// A transaction replicates as one unit: a reader at site B polling `MGET` while A
/// commits `MULTI; SET a n; SET b n; SET c n; SET d n; EXEC` in a loop never sees
/// some of the keys at `n` and others not (the keys fall in different partitions of
/// A's topic, so entries shipped one by one would be applied apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reader_at_another_site_sees_half_a_transaction() {
    const ROUNDS: u64 = 1_000;
    let mesh = support::Mesh::start(2).await;
    let (a, b) = (mesh.node(0).resp_addr, mesh.node(1).resp_addr);
    // Until A has heard that B reads transaction units, it ships entries one by one.
    support::wait_units_readable(mesh.node(0)).await;
    let writer = tokio::spawn(async move {
        let mut c = Raw::connect(a).await;
        for n in 1..=ROUNDS {
            let sets: Vec<String> = ["a", "b", "c", "d"].iter().map(|k| format!("SET {k} {n}")).collect();
            let mut commands = vec!["MULTI"];
            commands.extend(sets.iter().map(String::as_str));
            commands.push("EXEC");
            let replies = c.pipeline(&commands).await;
            assert_eq!(replies[5], b"*4\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n", "round {n}");
        }
    });
    let reader = tokio::spawn(async move {
        let mut c = Raw::connect(b).await;
        let (mut reads, mut seen) = (0usize, std::collections::BTreeSet::new());
        let deadline = Instant::now() + WAIT * 4;
        loop {
            let reply = c.call("MGET a b c d").await;
            let Frame::Array(values) = Frame::parse(&mut Cursor::new(&reply[..])).unwrap() else {
                panic!("MGET answered {}", show(&reply));
            };
            assert!(values.windows(2).all(|w| w[0] == w[1]), "a reader at B saw half a transaction: {values:?}");
            reads += 1;
            if let Frame::Bulk(v) = &values[0] {
                let n: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
                seen.insert(n);
                if n == ROUNDS {
                    return (reads, seen.len());
                }
            }
            assert!(Instant::now() < deadline, "B never showed round {ROUNDS}; it showed {} rounds", seen.len());
        }
    });
    tokio::time::timeout(WAIT * 4, writer).await.unwrap().unwrap();
    let (reads, rounds_seen) = tokio::time::timeout(WAIT * 4, reader).await.unwrap().unwrap();
    assert!(rounds_seen > 1, "the reader at B raced the writer ({reads} reads)");
    let units = support::engine_metric(mesh.node(0), "xsite_transaction_units");
    let split = support::engine_metric(mesh.node(0), "xsite_transactions_split_unreadable");
    eprintln!("{reads} reads at B saw {rounds_seen} rounds; A wrote {units} units, split {split}");
    assert_eq!((units, split), (ROUNDS as i64, 0), "every transaction went as one unit");
    assert!(support::engine_metric(mesh.node(1), "xsite_remote_units") > 0, "B applied units");
    mesh.shutdown().await;
}

/// Defect this exists to avoid (a command's several entries shipped one by one): a
/// reader at site B could see an `MSET` of two keys, or an `SMOVE` between two
/// sets, half applied. Each round A writes `left` and `right` with one `MSET`, and
/// B's `MGET` never sees them differ; then A moves one member back and forth
/// between two sets, and B (reading both sets at once, in a script) always finds
/// it in exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reader_at_another_site_sees_half_of_one_command() {
    let mesh = support::Mesh::start(2).await;
    support::wait_units_readable(mesh.node(0)).await;
    support::wait_reading(mesh.node(0), xsite_schemas::FORMAT_VERSION_SETS).await;
    support::never_seen_half(&mesh, 300, |i| {
        let mut cmd = redis::cmd("MSET");
        cmd.arg("left").arg(i).arg("right").arg(i);
        cmd
    })
    .await;
    const MOVES: usize = 300;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: i64 = redis::cmd("SADD").arg("s1").arg("m").query_async(&mut a).await.unwrap();
    let mover = tokio::spawn(async move {
        for i in 0..MOVES {
            let (from, to) = if i % 2 == 0 { ("s1", "s2") } else { ("s2", "s1") };
            let moved: i64 = redis::cmd("SMOVE").arg(from).arg(to).arg("m").query_async(&mut a).await.unwrap();
            assert_eq!(moved, 1, "move {i}");
        }
    });
    let both = "return redis.call('sismember', 's1', 'm') + redis.call('sismember', 's2', 'm')";
    let deadline = Instant::now() + WAIT;
    let (mut seen, mut seen_in_s2) = (false, false);
    while !mover.is_finished() || !seen_in_s2 {
        let (count, in_s2): (i64, i64) = redis::cmd("EVAL")
            .arg(format!("return {{{}, redis.call('sismember', 's2', 'm')}}", both.trim_start_matches("return ")))
            .arg(0)
            .query_async(&mut b)
            .await
            .unwrap();
        // Before the SADD arrives neither set holds it; from then on exactly one.
        assert!(count == 1 || (count == 0 && !seen), "site b saw the member in {count} of the two sets");
        seen |= count == 1;
        seen_in_s2 |= in_s2 == 1;
        assert!(Instant::now() < deadline, "site b never saw the member move");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    mover.await.unwrap();
    mesh.shutdown().await;
}
