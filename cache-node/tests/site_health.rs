//! Site health and lag on librdkafka's mock cluster: a remote site whose broker is
//! unreachable is taken offline by the health checks and brought back online once
//! it is reachable again — status, metrics and the log show each transition — and
//! the replication lag (entries and ms, from offsets, and its histogram) rises while
//! a consumer is paused and falls after. `/metrics` is read with a strict OpenMetrics
//! parser (`support/prom.rs`).

#[path = "support/prom.rs"]
mod prom;
mod support;

use prom::Scrape;
use redis::AsyncCommands;
use serde_json::Value;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::{wait_get, Mesh, WAIT};
use xsite_node::config::Config;
use xsite_schemas::SiteId;

/// Everything the nodes of this test binary log, for the tests to read.
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Sink;
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                log().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,rdkafka=warn")
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn log_lines(all: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    text.lines().filter(|l| all.iter().all(|w| l.contains(w))).map(str::to_string).collect()
}

/// Checks every 100 ms, so that transitions take a fraction of a second.
fn fast_checks(c: &mut Config) {
    c.sites.health_check_interval_ms = 100;
    c.sites.health_check_timeout_ms = 200;
    c.sites.retry_backoff_initial_ms = 100;
    c.sites.retry_backoff_max_ms = 400;
}

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().error_for_status().unwrap().text().await.unwrap()
}

async fn metrics(mesh: &Mesh, i: usize) -> Scrape {
    let text = get(&format!("http://{}/metrics", mesh.node(i).admin_addr.unwrap())).await;
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Waits until node `i`'s metrics satisfy `ok`; returns them.
async fn wait_metrics(mesh: &Mesh, i: usize, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(mesh, i).await;
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn remote_status(mesh: &Mesh, i: usize) -> Value {
    let text = get(&format!("http://{}/status", mesh.node(i).admin_addr.unwrap())).await;
    let status: Value = serde_json::from_str(&text).unwrap();
    status["replication"]["remotes"][0].clone()
}

/// Waits until the only remote site of node `i` is in `state`.
async fn wait_state(mesh: &Mesh, i: usize, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let remote = remote_status(mesh, i).await;
        if remote["state"]["state"] == state {
            return remote;
        }
        assert!(Instant::now() < deadline, "node {i} never saw its remote {state}: {remote:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_site_is_taken_offline_and_brought_back_online_by_itself() {
    log();
    let mesh = Mesh::start_with(2, |c| {
        fast_checks(c);
        c.sites.take_offline_after_failures = 3;
        c.sites.take_offline_after_ms = 0;
    })
    .await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: () = a.set("before", "1").await.unwrap();
    wait_get(&mut b, b"before", Some(b"1")).await;
    wait_state(&mesh, 1, "online").await;

    mesh.kafka.set_all(false).unwrap();
    for i in [0, 1] {
        let remote = wait_state(&mesh, i, "offline").await;
        let reason = remote["state"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("taken offline automatically: 3 consecutive failed checks"), "{reason}");
        assert_eq!(remote["health"]["offline_cause"], "unreachable");
        assert_eq!(remote["health"]["reachable"], false);
        assert_eq!(remote["online"], false, "its consumer is stopped");
        let m = metrics(&mesh, i).await;
        let remote = remote["site"].as_str().unwrap();
        assert_eq!(m.value("xsite_remote_state", &[("remote", remote)]), 2.0);
        assert_eq!(m.value("xsite_remote_reachable", &[("remote", remote)]), 0.0);
        assert_eq!(m.value("xsite_remote_taken_offline_total", &[("remote", remote), ("reason", "unreachable")]), 1.0);
        assert_eq!(m.value("xsite_remote_taken_offline_total", &[("remote", remote), ("reason", "operator")]), 0.0);
    }
    for i in 0..20 {
        let _: () = a.set(format!("during-{i}"), i).await.unwrap(); // writes go on
    }
    // Checked again with exponential backoff, up to its bound (400 ms here).
    let deadline = Instant::now() + WAIT;
    while remote_status(&mesh, 1).await["health"]["next_check_ms"] != 400 {
        assert!(Instant::now() < deadline, "no backoff: {:#}", remote_status(&mesh, 1).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    mesh.kafka.set_all(true).unwrap();
    wait_get(&mut b, b"during-19", Some(b"19")).await;
    for i in [0, 1] {
        wait_state(&mesh, i, "online").await;
        let m = metrics(&mesh, i).await;
        let remote = if i == 0 { "site-b" } else { "site-a" };
        assert_eq!(m.value("xsite_remote_state", &[("remote", remote)]), 0.0);
        assert_eq!(m.value("xsite_remote_reachable", &[("remote", remote)]), 1.0);
        assert_eq!(m.value("xsite_remote_taken_offline_total", &[("remote", remote), ("reason", "unreachable")]), 1.0);
        assert!(m.value("xsite_remote_health_check_failures_total", &[("remote", remote)]) >= 3.0);
    }
    // Each transition is one log line, with its reason.
    let offline = log_lines(&["WARN", "remote site offline", "remote=site-a", "taken offline automatically"]);
    assert_eq!(offline.len(), 1, "{offline:#?}");
    let back = log_lines(&["remote site catching up", "remote=site-a", "brought online automatically"]);
    assert_eq!(back.len(), 1, "{back:#?}");
    assert!(!log_lines(&["remote site online", "remote=site-a", "from=catching-up", "caught up"]).is_empty());
    mesh.converged().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_rises_while_a_consumer_is_paused_and_falls_after() {
    log();
    let mesh = Mesh::start_with(2, fast_checks).await;
    let mut a = mesh.conn(0).await;
    wait_state(&mesh, 1, "online").await;
    let site_a = SiteId::new("site-a").unwrap();
    let origin = [("origin", "site-a")];
    let caught_up = |m: &Scrape| {
        m.samples("xsite_replication_lag_entries", &origin).count() == 4
            && m.sum("xsite_replication_lag_entries", &origin) == 0.0
            && m.max("xsite_replication_lag_ms", &origin) == 0.0
    };
    wait_metrics(&mesh, 1, "caught up at the start", caught_up).await;

    let repl_b = mesh.node(1).replication.clone().unwrap();
    repl_b.take_offline(&site_a).await.unwrap();
    for i in 0..50 {
        let _: () = a.set(format!("k{i}"), i).await.unwrap();
    }
    let paused = wait_metrics(&mesh, 1, "the lag rises", |m| {
        m.sum("xsite_replication_lag_entries", &origin) >= 50.0 && m.max("xsite_replication_lag_ms", &origin) >= 500.0
    })
    .await;
    assert_eq!(paused.value("xsite_remote_state", &[("remote", "site-a")]), 2.0);
    let status = remote_status(&mesh, 1).await;
    assert!(status["lag"]["entries"].as_u64().unwrap() >= 50, "{status:#}");
    assert_eq!(status["state"]["reason"], "taken offline by an operator (POST /sites/site-a/offline)");

    repl_b.bring_online(&site_a).unwrap();
    let after = wait_metrics(&mesh, 1, "the lag falls", caught_up).await;
    // The histogram saw lags above half a second while it was paused.
    let partitions = after.samples("xsite_replication_lag_seconds_count", &origin).count();
    assert_eq!(partitions, 4, "one series per partition");
    let count = after.sum("xsite_replication_lag_seconds_count", &origin);
    let quick = after.sum("xsite_replication_lag_seconds_bucket", &[("origin", "site-a"), ("le", "0.5")]);
    assert!(
        count > quick && after.sum("xsite_replication_lag_seconds_sum", &origin) > 2.0,
        "count {count}, ≤0.5 s {quick}"
    );
    assert_eq!(after.value("xsite_conflicts_total", &[("cache", "default"), ("outcome", "won")]), 50.0);
    assert_eq!(after.value("xsite_remote_taken_offline_total", &[("remote", "site-a"), ("reason", "operator")]), 1.0);
    mesh.shutdown().await;
}
