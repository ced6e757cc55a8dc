//! The real `xsite` binary through `redis-cli` (Debian's redis-tools) and the
//! `redis` crate: what a user types gets what Redis would answer. Also the demo
//! as the README runs it: two sites, a write at one read at the other, Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli is installed (scripts/setup.sh)");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end_matches('\n').to_string()
}

fn wait_ping(port: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).arg("ping").output().unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
            return;
        }
        assert!(Instant::now() < deadline, "port {port} never answered PING");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_node(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["node", "--site", "cli-test", "--durability", "always", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .env("XSITE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ping(port);
    (Proc(child), port)
}

#[test]
fn redis_cli_gets_redis_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, p) = start_node(dir.path());
    let cases: &[(&[&str], &str)] = &[
        (&["set", "k", "v"], "OK"),
        (&["get", "k"], "v"),
        (&["set", "k", "w", "NX"], ""),
        (&["set", "k", "w", "XX", "GET"], "v"),
        (&["append", "k", "xyz"], "4"),
        (&["getrange", "k", "1", "-1"], "xyz"),
        (&["strlen", "k"], "4"),
        (&["incr", "n"], "1"),
        (&["incrby", "n", "41"], "42"),
        (&["decrby", "n", "2"], "40"),
        (&["incrbyfloat", "f", "0.1"], "0.1"),
        (&["incrbyfloat", "f", "0.2"], "0.3"),
        (&["incr", "k"], "ERR value is not an integer or out of range"),
        (&["set", "big", "9223372036854775807"], "OK"),
        (&["incr", "big"], "ERR increment or decrement would overflow"),
        (&["mset", "a", "1", "b", "2"], "OK"),
        (&["mget", "a", "b", "nope"], "1\n2"),
        (&["exists", "a", "b", "nope"], "2"),
        (&["expire", "a", "100"], "1"),
        (&["ttl", "a"], "100"),
        (&["persist", "a"], "1"),
        (&["ttl", "a"], "-1"),
        (&["ttl", "nope"], "-2"),
        (&["set", "e", "x", "EX", "0"], "ERR invalid expire time in 'set' command"),
        (&["set", "e", "x", "EX", "-5"], "ERR invalid expire time in 'set' command"),
        (&["type", "a"], "string"),
        (&["type", "nope"], "none"),
        (&["rename", "nope", "x"], "ERR no such key"),
        (&["get"], "ERR wrong number of arguments for 'get' command"),
        (&["frobnicate", "x"], "ERR unknown command 'frobnicate', with args beginning with: 'x' "),
        (&["del", "a", "b", "nope"], "2"),
        (&["select", "1"], "ERR DB index is out of range"),
        (&["ping"], "PONG"),
        (&["echo", "hi"], "hi"),
    ];
    for (args, expected) in cases {
        assert_eq!(cli(p, args), *expected, "redis-cli {args:?}");
    }
    assert_eq!(cli(p, &["--no-raw", "get", "nope"]), "(nil)");
    let keys = cli(p, &["keys", "*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(keys, ["big", "f", "k", "n"]);
    assert_eq!(cli(p, &["dbsize"]), "4");
    let info = cli(p, &["info", "keyspace"]);
    assert!(info.contains("db0:keys=4"), "{info}");
    // Binary-safe values through stdin (-x).
    let mut child = Command::new("redis-cli")
        .args(["-p", &p.to_string(), "-x", "set", "bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&[0, 1, 2, 0xff, b'\r', b'\n']).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(cli(p, &["strlen", "bin"]), "6");
}

#[tokio::test]
async fn redis_crate_pipelines_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, p) = start_node(dir.path());
    let client = redis::Client::open(format!("redis://127.0.0.1:{p}/")).unwrap();
    let mut c = tokio::time::timeout(WAIT, client.get_multiplexed_async_connection()).await.unwrap().unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("key{i}")).arg(i).ignore();
    }
    pipe.cmd("DBSIZE");
    let (n,): (i64,) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(n, 1000);
    drop(c);
    drop(node); // SIGKILL
    let (_node, p) = start_node(dir.path());
    let client = redis::Client::open(format!("redis://127.0.0.1:{p}/")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let v: i64 = redis::cmd("GET").arg("key999").query_async(&mut c).await.unwrap();
    assert_eq!(v, 999);
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 1000);
}

#[test]
fn demo_replicates_between_two_sites_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["demo", "--base-port", "0", "--data-dir"])
        .arg(dir.path())
        .env("XSITE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ports = Vec::new();
    let mut admins = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while ports.len() < 2 {
        let line = lines.next().expect("demo prints its sites").unwrap();
        if let Some(rest) = line.split("redis-cli -p ").nth(1) {
            ports.push(rest.split_whitespace().next().unwrap().parse::<u16>().unwrap());
            admins.push(line.split("admin ").nth(1).unwrap().trim().to_string());
        }
    }
    let child = Proc(child);
    assert_eq!(cli(ports[0], &["set", "greeting", "hello"]), "OK");
    let deadline = Instant::now() + WAIT;
    while cli(ports[1], &["get", "greeting"]) != "hello" {
        assert!(Instant::now() < deadline, "not replicated");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The operator commands of docs/operations.md against the demo's admin APIs.
    let verify = Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["verify", "--admin", &admins[0], "--admin", &admins[1], "--wait-secs", "20"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && out.contains("converged: 2 nodes agree"), "{out}");
    let status =
        Command::new(env!("CARGO_BIN_EXE_xsite")).args(["status", "--admin", &admins[1], "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status prints JSON");
    assert_eq!(status["site"], "site-b");
    assert_eq!(status["replication"]["remotes"][0]["site"], "site-a");
    let mut child = child;
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "demo exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}
