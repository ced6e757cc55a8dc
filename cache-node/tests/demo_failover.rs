//! The README's failover in the demo, as a user runs it: `xsite demo` with its
//! Sentinel ports, `redis-cli … sentinel get-master-addr-by-name default`, then
//! `stop site-a` typed into the demo (the name moves to site-b) and `start site-a`
//! (it moves back once site-a has caught up), then Ctrl-C.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Two consecutive free ports, for the demo's RESP and Sentinel bases.
fn free_pair(from: u16) -> u16 {
    (from..from + 2_000).step_by(7).find(|&p| free(p) && free(p + 1)).expect("two free ports")
}

fn sentinel_names(sentinel: u16) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &sentinel.to_string(), "sentinel", "get-master-addr-by-name", "default"])
        .output()
        .expect("redis-cli is installed (scripts/setup.sh)");
    String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn wait_named(sentinel: u16, port: u16) -> Duration {
    let started = Instant::now();
    let want = format!("127.0.0.1 {port}");
    loop {
        let got = sentinel_names(sentinel);
        if got == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "sentinel {sentinel} says '{got}', not '{want}'");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_demo_fails_clients_over_when_a_site_stops_and_back_when_it_returns() {
    let base = free_pair(27_100);
    let sentinel = free_pair(base + 100);
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["demo", "--base-port", &base.to_string(), "--sentinel-base-port", &sentinel.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("XSITE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let until = |what: &str| loop {
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("the demo never printed '{what}'"));
        if line.contains(what) {
            return line;
        }
    };
    let line = until("where to write:");
    assert!(line.contains(&format!("redis-cli -p {sentinel} sentinel get-master-addr-by-name default")), "{line}");
    until("data in");
    let (a, b) = (base, base + 1);
    wait_named(sentinel + 1, a);

    let mut stdin = demo.stdin.take().unwrap();
    writeln!(stdin, "stop site-a").unwrap();
    until("site-a stopped");
    let moved = wait_named(sentinel + 1, b);
    eprintln!("site-b's sentinel named site-b {} ms after site-a stopped", moved.as_millis());
    let out = Command::new("redis-cli").args(["-p", &b.to_string(), "set", "while", "away"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");

    writeln!(stdin, "start site-a").unwrap();
    until("site-a started");
    wait_named(sentinel, a);
    let out = Command::new("redis-cli").args(["-p", &a.to_string(), "get", "while"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "away", "named again before it caught up");
    wait_named(sentinel + 1, a);

    writeln!(stdin, "stop site-z").unwrap();
    until("commands: stop <site>, start <site>");
    let pid = demo.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = demo.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}
