//! Pub/sub and keyspace notifications as clients see them:
//!
//! - the same scenarios sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply and every message compared byte for byte:
//!   (un)subscriptions, patterns, subscribed-mode errors and `PING`, `PUBSUB`,
//!   RESP3 pushes, `MULTI`, and the keyspace notifications of a sequence of
//!   commands under `notify-keyspace-events KEA` and narrower flags;
//! - a subscriber that does not read is disconnected, and counted, while the
//!   publisher and a subscriber that reads go on;
//! - two sites: a write at A notifies a subscriber at B once applied there, and
//!   `PUBLISH` stays at the site it was sent to;
//! - redis-py's `pubsub()` and a cache that invalidates itself from keyspace
//!   notifications, against both servers, RESP2 and RESP3.
//!
//! Every wait is bounded by [`WAIT`]: messages expected are read until they come;
//! that no message came is shown by a marker published after, never by a sleep.

#[allow(dead_code)] // the suites share it, each its part
#[path = "support/prom.rs"]
mod prom;
mod support;

use std::io::Cursor;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::redis_server::{show, Raw, RedisServer};
use support::WAIT;
use tokio_util::sync::CancellationToken;
use xsite_node::config::{CacheConfig, Config, Topology};
use xsite_node::node::RunningNode;
use xsite_node::resp::Frame;
use xsite_schemas::CacheName;

/// A node alone (no replication) with a second cache on db 1; `tweak` changes its
/// config.
async fn start_node(dir: &std::path::Path, tweak: impl Fn(&mut Config)) -> (RunningNode, CancellationToken) {
    support::start_single(dir, "pubsub-test", |c| {
        c.caches.push(CacheConfig {
            name: CacheName::new("second").unwrap(),
            db: 1,
            policy: "last-write-wins".into(),
            conflict_window_ms: xsite_consumer::merge::CONFLICT_WINDOW_MS_DEFAULT,
            topology: Topology::ActiveActive,
            primary: None,
        });
        tweak(c);
    })
    .await
}

async fn stop_node(node: RunningNode, cancel: CancellationToken) {
    support::stop_single(node, cancel).await
}

/// The marker a scenario publishes to end what a subscriber collects.
const MARKER: &str = "PUBLISH end done";
const MARKER_FRAME: &[u8] = b"*3\r\n$7\r\nmessage\r\n$3\r\nend\r\n$4\r\ndone\r\n";

/// One step of a scenario; clients are numbered 0 to 3.
#[derive(Clone, Copy)]
enum Step {
    /// The client sends a command and reads one frame; compared.
    Cmd(usize, &'static str),
    /// Sent and its frame read, not compared (it names the server: `HELLO`).
    Unchecked(usize, &'static str),
    /// The client reads its next frame (a message); compared.
    Next(usize),
    /// The client sends a command and reads this many frames (a subscription to
    /// several channels); compared as one.
    Many(usize, &'static str, usize),
    /// The client sends a command and reads this many frames, compared in any
    /// order (Redis's order is its hash table's): the replies of `UNSUBSCRIBE`
    /// without arguments, or an array reply's elements with 1.
    Unordered(usize, &'static str, usize),
    /// Client 3 publishes [`MARKER`]; the client (subscribed to `end`) reads every
    /// frame up to it: the messages since, compared as one.
    Collect(usize),
    /// The client reads frames until one contains this text; compared as one.
    Until(usize, &'static str),
}

use Step::{Cmd, Collect, Many, Next, Unchecked, Unordered, Until};

fn keyspace_commands() -> Vec<Step> {
    let a = |c| Cmd(0, c);
    [
        "SET k v",
        "SET k v2 KEEPTTL",
        "SETNX k x",
        "SETNX n x",
        "SETEX e 100 v",
        "PSETEX e 100000 v",
        "MSET a 1 b 2",
        "MSETNX c 1 d 2",
        "MSETNX c 1 z 2",
        "GETSET k w",
        "GETDEL k",
        "GETDEL k",
        "GETEX a EX 100",
        "GETEX a PERSIST",
        "GETEX a",
        "GETEX n PXAT 1",
        "APPEND b x",
        "APPEND new y",
        "SETRANGE b 1 zz",
        "SETRANGE b 0 ''",
        "SETRANGE nokey 0 ''",
        "SETRANGE nokey2 2 x",
        "INCR i",
        "DECR i",
        "INCRBY i 5",
        "DECRBY i 2",
        "INCRBYFLOAT f 1.5",
        "INCR b",
        "DEL b nosuch new",
        "UNLINK c",
        "EXPIRE d 100",
        "PEXPIRE d 100000",
        "EXPIREAT d 9999999999",
        "PEXPIREAT d 9999999999000",
        "EXPIRE d 100 NX",
        "PERSIST d",
        "PERSIST d",
        "EXPIRE d -1",
        "EXPIRE nosuch 10",
        "SET r 1",
        "RENAME r r2",
        "RENAME r2 r2",
        "RENAME nosuch x",
        "SET q 1",
        "RENAMENX q r2",
        "RENAMENX q q2",
        "SET g 1 GET",
        "SET g 2 NX",
        "SET g 3 XX",
        "SET g 4 EX 100",
        "SET g 5 PXAT 99999999999999",
        "SELECT 1",
        "SET k1 v",
        "DEL k1",
        "SELECT 0",
        "FLUSHDB",
        "SET y 1",
        "FLUSHALL",
        "GET y",
    ]
    .into_iter()
    .map(a)
    .collect()
}

/// The scenarios, each on four fresh connections to an empty server.
fn scenarios() -> Vec<(&'static str, Vec<Step>)> {
    let a = |c| Cmd(0, c);
    let b = |c| Cmd(1, c);
    let c = |c| Cmd(2, c);
    let d = |c| Cmd(3, c);
    let notifications = |flags: &'static str, mut commands: Vec<Step>| {
        let mut steps =
            vec![c("PSUBSCRIBE __key*__:*"), c("SUBSCRIBE end"), a(flags), a("CONFIG GET notify-keyspace-events")];
        steps.append(&mut commands);
        steps.extend([Collect(2), a("CONFIG SET notify-keyspace-events ''")]);
        steps
    };
    vec![
        (
            "subscribe, publish, unsubscribe",
            vec![
                a("SUBSCRIBE c1"),
                a("SUBSCRIBE c1"),
                b("PUBLISH c1 hello"),
                Next(0),
                b("PUBLISH nosuch x"),
                b("PUBLISH '' x"),
                a("UNSUBSCRIBE c1"),
                a("UNSUBSCRIBE"),
                a("PUNSUBSCRIBE"),
                a("SUNSUBSCRIBE"),
                a("UNSUBSCRIBE never"),
                a("PING"),
                a("GET k"),
                b("UNSUBSCRIBE"),
                b("GET k"),
                Many(0, "SUBSCRIBE x y z", 3),
                Unordered(0, "UNSUBSCRIBE", 3),
                a("GET k"),
            ],
        ),
        (
            "subscribed mode allows only pub/sub, PING, QUIT and RESET",
            vec![
                a("SUBSCRIBE c"),
                a("GET k"),
                a("PING"),
                a("PING hi"),
                a("PING a b"),
                a("CLIENT ID"),
                a("NOSUCH x"),
                a("SUBSCRIBE"),
                a("PUBLISH c x"),
                a("MULTI"),
                a("SSUBSCRIBE s"),
                a("SUNSUBSCRIBE s"),
                a("PSUBSCRIBE p*"),
                a("UNSUBSCRIBE c"),
                a("GET k"),
                a("PUNSUBSCRIBE p*"),
                a("GET k"),
                a("SSUBSCRIBE s"),
                a("GET k"),
                a("RESET"),
                a("GET k"),
                a("PUBLISH s x"),
                a("SPUBLISH s x"),
                a("SUBSCRIBE c"),
                a("QUIT"),
            ],
        ),
        (
            "patterns match as stringmatchlen does",
            vec![
                Many(0, "PSUBSCRIBE h?llo x[a-c]y esc\\* n[^0-9] [z-x] [a", 6),
                a("SUBSCRIBE end"),
                b("PSUBSCRIBE *"),
                b("SUBSCRIBE chan"),
                d("PUBLISH hello 1"),
                d("PUBLISH xby 2"),
                d("PUBLISH esc* 4"),
                d("PUBLISH escX 5"),
                d("PUBLISH nA 6"),
                d("PUBLISH y 7"),
                d("PUBLISH chan 8"),
                d("PUBLISH '' 9"),
                d("PUBLISH [ 10"),
                d("PUBLISH a 11"),
                Collect(0),
                b("PUNSUBSCRIBE *"),
            ],
        ),
        (
            "one pattern per subscriber, deliveries counted per subscription",
            vec![
                a("PSUBSCRIBE h?llo"),
                Many(0, "SUBSCRIBE hello end", 2),
                b("PSUBSCRIBE h[ae]llo"),
                b("SUBSCRIBE end"),
                c("PSUBSCRIBE h[^e]llo"),
                c("SUBSCRIBE end"),
                d("PUBLISH hello 1"),
                d("PUBLISH hallo 2"),
                d("PUBLISH hillo 3"),
                d("PUBLISH hllo 4"),
                Collect(0),
                Next(1),
                Next(1),
                Next(1),
                Next(2),
                Next(2),
                Next(2),
            ],
        ),
        (
            "PUBSUB",
            vec![
                Many(0, "SUBSCRIBE x y", 2),
                b("SUBSCRIBE y"),
                b("PSUBSCRIBE p*"),
                c("PSUBSCRIBE p*"),
                c("SSUBSCRIBE s1"),
                d("PUBSUB NUMSUB x y z"),
                d("PUBSUB NUMSUB"),
                d("PUBSUB NUMPAT"),
                d("PUBSUB CHANNELS x"),
                d("PUBSUB CHANNELS z*"),
                Unordered(3, "PUBSUB CHANNELS", 1),
                Unordered(3, "PUBSUB CHANNELS *", 1),
                d("PUBSUB SHARDCHANNELS"),
                d("PUBSUB SHARDCHANNELS s?"),
                d("PUBSUB SHARDNUMSUB s1 x"),
                d("PUBSUB SHARDNUMSUB"),
                d("SPUBLISH s1 hi"),
                Next(2),
                d("PUBLISH s1 hi"),
                d("PUBSUB"),
                d("PUBSUB NOSUCH"),
                d("PUBSUB NUMPAT x"),
                d("PUBSUB CHANNELS a b"),
                d("PUBSUB HELP"),
                d("PUBSUB help x"),
                d("PUBLISH x"),
                d("SPUBLISH x"),
                d("PSUBSCRIBE"),
                d("SSUBSCRIBE"),
            ],
        ),
        (
            "RESP3: pushes, and every command in subscribed mode",
            vec![
                Unchecked(0, "HELLO 3"),
                a("SUBSCRIBE c"),
                a("GET k"),
                a("SET k v"),
                a("PING"),
                b("PUBLISH c m"),
                Next(0),
                a("PSUBSCRIBE c*"),
                b("PUBLISH c m2"),
                Next(0),
                Next(0),
                a("PUBLISH c self"),
                Next(0),
                Next(0),
                a("SSUBSCRIBE s"),
                b("SPUBLISH s m3"),
                Next(0),
                a("UNSUBSCRIBE c"),
                a("PUNSUBSCRIBE"),
                a("UNSUBSCRIBE"),
                a("SUNSUBSCRIBE"),
                a("PING"),
            ],
        ),
        (
            "RESP3 keyspace notifications of the client's own writes come before the reply",
            vec![
                Unchecked(0, "HELLO 3"),
                a("CONFIG SET notify-keyspace-events KEA"),
                a("PSUBSCRIBE __keyspace@0__:*"),
                a("SET k v"),
                Next(0),
                a("INCR n"),
                Next(0),
                a("CONFIG SET notify-keyspace-events ''"),
            ],
        ),
        (
            "SUBSCRIBE and PUBLISH inside MULTI",
            vec![
                a("MULTI"),
                a("SUBSCRIBE c d"),
                a("SET k v"),
                a("EXEC"),
                Next(0),
                a("GET k"),
                b("MULTI"),
                b("PUBLISH c x"),
                b("PUBLISH nosuch x"),
                b("EXEC"),
                Next(0),
                c("MULTI"),
                c("PSUBSCRIBE p*"),
                c("EXEC"),
                c("PING"),
            ],
        ),
        ("keyspace notifications, KEA", notifications("CONFIG SET notify-keyspace-events KEA", keyspace_commands())),
        (
            "keyspace notifications, new keys (AKEn)",
            notifications(
                "CONFIG SET notify-keyspace-events AKEn",
                ["SET a 1", "SET a 2", "MSET b 1 a 3", "APPEND c x", "INCR d", "INCRBYFLOAT e 1", "SETEX f 10 v"]
                    .into_iter()
                    .chain(["SETRANGE g 1 x", "RENAME a h", "RENAME b h", "GETSET i 1", "SET j 1 GET", "DEL j"])
                    .map(a)
                    .collect(),
            ),
        ),
        ("keyspace notifications, Kg", notifications("CONFIG SET notify-keyspace-events Kg", keyspace_commands())),
        ("keyspace notifications, E$", notifications("CONFIG SET notify-keyspace-events E$", keyspace_commands())),
        ("keyspace notifications, Kn", notifications("CONFIG SET notify-keyspace-events Kn", keyspace_commands())),
        (
            "keyspace notifications, g$ without K or E",
            notifications("CONFIG SET notify-keyspace-events g$", keyspace_commands()),
        ),
        (
            "expired",
            vec![
                c("PSUBSCRIBE __key*__:*"),
                a("CONFIG SET notify-keyspace-events Ex"),
                a("SET x 1 PX 50"),
                a("SET y 1"),
                Until(2, "expired"),
                a("CONFIG SET notify-keyspace-events KEA"),
                a("SET z 1 PX 50"),
                Until(2, "__keyevent@0__:expired"),
                a("CONFIG SET notify-keyspace-events ''"),
            ],
        ),
        (
            "CONFIG SET and GET notify-keyspace-events",
            vec![
                a("CONFIG SET notify-keyspace-events Kgx"),
                a("CONFIG GET notify-keyspace-events"),
                a("CONFIG SET notify-keyspace-events AKEmn"),
                a("CONFIG GET notify-keyspace-events"),
                a("CONFIG SET notify-keyspace-events KElshzxetdg$"),
                a("CONFIG GET notify-*"),
                a("CONFIG SET notify-keyspace-events E$nm"),
                a("CONFIG GET notify-keyspace-events"),
                a("CONFIG SET notify-keyspace-events Q"),
                a("CONFIG SET notify-keyspace-events kea"),
                a("CONFIG GET notify-keyspace-events"),
                a("CONFIG SET notify-keyspace-events"),
                a("CONFIG SET notify-keyspace-events KA m"),
                a("CONFIG SET notify-keyspace-events g notify-keyspace-events x"),
                a("CONFIG SET NOTIFY-KEYSPACE-EVENTS K"),
                a("CONFIG GET notify-keyspace-events"),
                a("CONFIG SET notify-keyspace-events ''"),
                a("CONFIG GET notify-keyspace-events"),
            ],
        ),
    ]
}

/// The frames of an unordered reply, sorted: each `unsubscribe` reply's kind and
/// name, and apart its count (which depends on the order); or the elements of
/// one array reply.
fn sorted(frames: Vec<Vec<u8>>) -> Vec<u8> {
    let (mut names, mut counts) = (Vec::new(), Vec::new());
    for f in frames {
        match Frame::parse(&mut Cursor::new(&f[..])).unwrap() {
            Frame::Array(mut items) | Frame::Push(mut items) if matches!(items.last(), Some(Frame::Integer(_))) => {
                counts.push(format!("{:?}", items.pop()));
                names.push(format!("{items:?}"));
            }
            Frame::Array(items) => names.extend(items.iter().map(|i| format!("{i:?}"))),
            other => names.push(format!("{other:?}")),
        }
    }
    names.sort();
    counts.sort();
    format!("{names:?} {counts:?}").into_bytes()
}

/// Runs a scenario on `addr`: the frames of the steps that are compared.
async fn run_scenario(addr: SocketAddr, steps: &[Step]) -> Vec<(String, Vec<u8>)> {
    let mut clean = Raw::connect(addr).await;
    assert_eq!(clean.call("FLUSHALL").await, b"+OK\r\n");
    assert_eq!(clean.call("CONFIG SET notify-keyspace-events ''").await, b"+OK\r\n");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Raw::connect(addr).await);
    }
    let mut out = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let (label, frames) = match *step {
            Cmd(i, command) => (format!("{i}: {command}"), clients[i].call(command).await),
            Unchecked(i, command) => {
                clients[i].call(command).await;
                continue;
            }
            Next(i) => (format!("{i}: next frame (step {n})"), clients[i].reply().await),
            Many(i, command, frames) => {
                clients[i].send(&[command]).await;
                let mut got = Vec::new();
                for _ in 0..frames {
                    got.extend(clients[i].reply().await);
                }
                (format!("{i}: {command}"), got)
            }
            Unordered(i, command, frames) => {
                clients[i].send(&[command]).await;
                let mut got = Vec::new();
                for _ in 0..frames {
                    got.push(clients[i].reply().await);
                }
                (format!("{i}: {command} (any order)"), sorted(got))
            }
            Collect(i) => {
                let mut got = clients[3].call(MARKER).await;
                loop {
                    let frame = clients[i].reply().await;
                    if frame == MARKER_FRAME {
                        break;
                    }
                    got.extend_from_slice(&frame);
                }
                (format!("{i}: messages until the marker (step {n})"), got)
            }
            Until(i, text) => {
                let deadline = Instant::now() + WAIT;
                let mut got = Vec::new();
                loop {
                    let frame = clients[i].reply().await;
                    got.extend_from_slice(&frame);
                    if String::from_utf8_lossy(&frame).contains(text) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "never got {text}");
                }
                (format!("{i}: messages until {text}"), got)
            }
        };
        out.push((label, frames));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_and_message_is_redis_7s() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path(), |_| {}).await;
    let mut differences = Vec::new();
    for (name, steps) in scenarios() {
        let want = run_scenario(redis.addr, &steps).await;
        let got = run_scenario(node.resp_addr, &steps).await;
        assert_eq!(want.len(), got.len());
        for ((step, want), (_, got)) in want.iter().zip(&got) {
            if want != got {
                differences.push(format!("{name}: {step}:\n  redis {}\n  xsite {}", show(want), show(got)));
            }
        }
    }
    assert!(differences.is_empty(), "replies differ from Redis's:\n{}", differences.join("\n"));
    stop_node(node, cancel).await;
}

/// A subscriber that reads nothing is disconnected once what waits for it passes
/// `pubsub.subscriber_buffer_bytes_max`; the publisher never waits for it, a
/// subscriber that reads gets everything, and the disconnection is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_disconnected() {
    const MESSAGES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path(), |c| {
        c.pubsub.subscriber_buffer_bytes_max = 1024 * 1024;
        c.server.admin_port = Some(0);
    })
    .await;
    let addr = node.resp_addr;
    let mut slow = Raw::connect(addr).await;
    assert_eq!(slow.call("SUBSCRIBE big").await, b"*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n");
    let mut fast = Raw::connect(addr).await;
    assert_eq!(fast.call("SUBSCRIBE big").await, b"*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n");
    let payload = "x".repeat(128 * 1024);
    let mut publisher = Raw::connect(addr).await;
    let publish = format!("PUBLISH big {payload}");
    for _ in 0..MESSAGES {
        // Two receivers until the slow one is dropped from its channel with its
        // connection; the publisher never waits for it.
        let reply = publisher.call(&publish).await;
        assert!(reply == b":2\r\n" || reply == b":1\r\n", "{}", show(&reply));
        let frame = fast.reply().await;
        assert!(frame.starts_with(b"*3\r\n$7\r\nmessage\r\n$3\r\nbig\r\n"), "{}", show(&frame[..40]));
    }
    assert!(slow.closed().await, "the subscriber that did not read is still connected");
    let deadline = Instant::now() + WAIT;
    while publisher.call("PUBSUB NUMSUB big").await != b"*2\r\n$3\r\nbig\r\n:1\r\n" {
        assert!(Instant::now() < deadline, "the slow subscriber never left its channel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fast.call("PING").await, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    let text =
        reqwest::get(format!("http://{}/metrics", node.admin_addr.unwrap())).await.unwrap().text().await.unwrap();
    let scrape = prom::Scrape::parse(&text).unwrap();
    assert_eq!(scrape.value("xsite_pubsub_slow_subscribers_disconnected_total", &[]), 1.0);
    assert_eq!(scrape.value("xsite_pubsub_subscribers", &[]), 1.0);
    assert_eq!(scrape.value("xsite_pubsub_channels", &[]), 1.0);
    assert!(scrape.value("xsite_pubsub_messages_published_total", &[]) >= MESSAGES as f64);
    stop_node(node, cancel).await;
}

/// The frames a subscriber reads until one contains `until`.
async fn read_until(conn: &mut Raw, until: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        let frame = show(&conn.reply().await);
        let done = frame.contains(until);
        got.push(frame);
        if done {
            return got;
        }
        assert!(Instant::now() < deadline, "never got {until}: {got:?}");
    }
}

fn keyspace(key: &str, event: &str) -> String {
    let channel = format!("__keyspace@0__:{key}");
    format!(
        "*4\\r\\n$8\\r\\npmessage\\r\\n$16\\r\\n__keyspace@0__:*\\r\\n${}\\r\\n{channel}\\r\\n${}\\r\\n{event}\\r\\n",
        channel.len(),
        event.len()
    )
}

/// A write at site A notifies a subscriber at site B once B applied it (the one
/// hook, on the replication path); `PUBLISH` stays at the site it was sent to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_at_one_site_notifies_subscribers_at_another() {
    let mesh = support::Mesh::start_with(2, |c| c.pubsub.notify_keyspace_events = "KEA".into()).await;
    let (a, b) = (mesh.node(0).resp_addr, mesh.node(1).resp_addr);
    let mut at_b = Raw::connect(b).await;
    at_b.call("PSUBSCRIBE __keyspace@0__:*").await;
    assert_eq!(show(&at_b.call("SUBSCRIBE news").await), "*3\\r\\n$9\\r\\nsubscribe\\r\\n$4\\r\\nnews\\r\\n:2\\r\\n");
    let mut at_a = Raw::connect(a).await;
    at_a.call("SUBSCRIBE news").await;
    let mut writer = Raw::connect(a).await;
    for command in ["SET k v", "INCR n", "EXPIRE k 100", "PERSIST k", "DEL k", "APPEND s x"] {
        writer.call(command).await;
    }
    // Each key's events in order (the keys travel in different partitions, so
    // apart they may not be).
    let last = [keyspace("k", "del"), keyspace("n", "incrby"), keyspace("s", "set")];
    let mut got = Vec::new();
    while !last.iter().all(|l| got.contains(l)) {
        got.extend(read_until(&mut at_b, "pmessage").await);
    }
    let of = |key: &str| -> Vec<&String> { got.iter().filter(|f| f.contains(&format!(":{key}\\r"))).collect() };
    let want_k = [keyspace("k", "set"), keyspace("k", "expire"), keyspace("k", "persist"), keyspace("k", "del")];
    assert_eq!(of("k"), want_k.iter().collect::<Vec<_>>(), "{got:?}");
    assert_eq!(of("n"), vec![&keyspace("n", "incrby")], "{got:?}");
    assert_eq!(of("s"), vec![&keyspace("s", "set")], "APPEND arrives as the value it made: {got:?}");

    // PUBLISH at A reaches A's subscriber, and not B's, even once a later write
    // of A's has been applied at B.
    assert_eq!(writer.call("PUBLISH news local").await, b":1\r\n");
    assert_eq!(show(&at_a.reply().await), "*3\\r\\n$7\\r\\nmessage\\r\\n$4\\r\\nnews\\r\\n$5\\r\\nlocal\\r\\n");
    writer.call("SET marker 1").await;
    let got = read_until(&mut at_b, "__keyspace@0__:marker\\r").await;
    assert!(!got.iter().any(|f| f.contains("local")), "a message published at A reached B: {got:?}");
    // B's own writes notify B's subscribers too.
    let mut writer_b = Raw::connect(b).await;
    writer_b.call("SET mine 1").await;
    assert_eq!(read_until(&mut at_b, ":mine\\r").await, vec![keyspace("mine", "set")]);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_pubsub_and_cache_invalidation() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = start_node(dir.path(), |_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pubsub_invalidation.py");
    for (what, port) in [("redis-server", redis.addr.port()), ("xsite", node.resp_addr.port())] {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .args(["60", "python3", script, &port.to_string()])
                .output()
                .expect("python3 is installed")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{what}: {stdout}");
        assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{what}: {stdout}");
    }
    stop_node(node, cancel).await;
}
