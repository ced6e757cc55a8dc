//! The Sentinel protocol every node serves, on librdkafka's mock cluster, with stock
//! clients: raw commands (`SENTINEL …`, `INFO`, `ROLE`, events over `SUBSCRIBE`),
//! the `redis` crate's sentinel client and redis-py's `Sentinel`. Two active-active
//! sites in the order site-a, site-b, and an active-passive cache with site-a
//! primary: when site-a's node stops, both names move to site-b at once; when it
//! comes back they move back only once site-a has caught up, and `ROLE` on the data
//! port says master or slave as Redis does.

mod support;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Mesh, WAIT};
use xsite_node::config::Config;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Clone, Copy)]
struct Ports {
    resp: [u16; 2],
    sentinel: [u16; 2],
}

/// Two sites whose nodes keep their ports across restarts, each announcing the
/// other's, with fast Sentinel timings.
async fn two_sites() -> (Mesh, Ports) {
    let ports = Ports { resp: [free_port(), free_port()], sentinel: [free_port(), free_port()] };
    let mesh = Mesh::start_with(2, move |c: &mut Config| {
        let me = usize::from(c.site.as_str() == "site-b");
        c.server.port = ports.resp[me];
        c.sentinel.port = Some(ports.sentinel[me]);
        c.sentinel.down_after_ms = 1_000;
        c.sentinel.failback_hold_down_ms = 300;
        c.sentinel.failback_lag_ms = 10_000;
        c.sentinel.check_interval_ms = 50;
        for r in &mut c.remotes {
            let other = usize::from(r.site.as_str() == "site-b");
            r.announce = Some(format!("127.0.0.1:{}", ports.resp[other]));
            r.sentinel = Some(format!("127.0.0.1:{}", ports.sentinel[other]));
        }
        c.caches.push(support::passive_cache("sessions", 1, "site-a"));
    })
    .await;
    (mesh, ports)
}

async fn connect(port: u16) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection()).await.unwrap().unwrap()
}

async fn master_addr(sentinel: u16, name: &str) -> Option<(String, u16)> {
    let mut c = connect(sentinel).await;
    redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(name).query_async(&mut c).await.unwrap()
}

/// Waits until the sentinel names `port` for `name`, not down; returns how long it
/// took.
async fn wait_named(sentinel: u16, name: &str, port: u16) -> Duration {
    let started = Instant::now();
    loop {
        let got = master_addr(sentinel, name).await;
        let fields = master_fields(sentinel, name).await;
        if got == Some(("127.0.0.1".to_string(), port)) && fields["flags"] == "master" {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "sentinel {sentinel} names {got:?} for {name}, not port {port}: {fields:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A master's fields, from `SENTINEL master <name>`.
async fn master_fields(sentinel: u16, name: &str) -> std::collections::HashMap<String, String> {
    let mut c = connect(sentinel).await;
    redis::cmd("SENTINEL").arg("master").arg(name).query_async(&mut c).await.unwrap()
}

/// Waits until both sentinels have learnt the sites (a starting one publishes
/// nothing for down_after_ms) and name every site: each site's heartbeats have
/// reported on every origin.
async fn wait_steady(mesh: &Mesh) {
    let deadline = Instant::now() + WAIT;
    for i in 0..2 {
        let d = &mesh.node(i).directory;
        while d.learning() || !d.sites().iter().all(|v| v.usable) {
            assert!(Instant::now() < deadline, "site {i} never named every site: {:?}", d.sites());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn site_of(conn: &mut MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("xsite_site:")).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinels_move_the_names_when_a_site_goes_and_back_once_it_caught_up() {
    let (mut mesh, p) = two_sites().await;
    let [a, b] = p.resp;
    let [sa, sb] = p.sentinel;
    // Events, as a Sentinel client's pub/sub listener gets them, from the start.
    let events_client = redis::Client::open(format!("redis://127.0.0.1:{sb}/")).unwrap();
    let mut pubsub = events_client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("+switch-master").await.unwrap();
    pubsub.psubscribe("*sdown").await.unwrap();
    let subscribed = Instant::now();
    let (tx, rx) = mpsc::channel::<(String, String, Instant)>();
    let events = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while let Some(m) = stream.next().await {
            let payload: String = m.get_payload().unwrap();
            if tx.send((m.get_channel_name().to_string(), payload, Instant::now())).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<(String, String, Instant)> = Vec::new();
    // Waits for the event `channel payload` received after `after`.
    let mut wait_event = |channel: &str, payload: String, after: Instant| {
        let deadline = Instant::now() + WAIT;
        while !seen.iter().any(|(c, p, at)| c == channel && *p == payload && *at > after) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(event) => seen.push(event),
                Err(e) => panic!("no {channel} {payload} ({e}); got {seen:?}"),
            }
        }
    };

    wait_steady(&mesh).await;
    for s in [sa, sb] {
        wait_named(s, "default", a).await;
        wait_named(s, "default@site-b", b).await;
        wait_named(s, "sessions", a).await;
    }

    // What stock clients check after discovery, and the rest of the protocol.
    let mut data_a = connect(a).await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut data_a).await.unwrap();
    assert_eq!(role[0], redis::Value::BulkString(b"master".to_vec()));
    let mut data_b = connect(b).await;
    let _: () = redis::cmd("SELECT").arg(1).query_async(&mut data_b).await.unwrap();
    let role: (String, String, u16, String, i64) = redis::cmd("ROLE").query_async(&mut data_b).await.unwrap();
    assert_eq!(role, ("slave".into(), "127.0.0.1".into(), a, "connected".into(), 0));
    let replication: String = redis::cmd("INFO").arg("replication").query_async(&mut data_b).await.unwrap();
    assert!(replication.contains("role:slave") && replication.contains(&format!("master_port:{a}")), "{replication}");
    let mut s = connect(sb).await;
    let pong: String = redis::cmd("PING").query_async(&mut s).await.unwrap();
    assert_eq!(pong, "PONG");
    let masters: Vec<std::collections::HashMap<String, String>> =
        redis::cmd("SENTINEL").arg("masters").query_async(&mut s).await.unwrap();
    let names: Vec<&str> = masters.iter().map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["default", "default@site-a", "default@site-b", "sessions"]);
    assert!(masters.iter().all(|m| m["flags"] == "master"), "{masters:?}");
    let replicas: Vec<std::collections::HashMap<String, String>> =
        redis::cmd("SENTINEL").arg("replicas").arg("sessions").query_async(&mut s).await.unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!((replicas[0]["port"].as_str(), replicas[0]["flags"].as_str()), (b.to_string().as_str(), "slave"));
    let sentinels: Vec<std::collections::HashMap<String, String>> =
        redis::cmd("SENTINEL").arg("sentinels").arg("default").query_async(&mut s).await.unwrap();
    assert_eq!(sentinels.len(), 1);
    assert_eq!(sentinels[0]["port"], sa.to_string());
    let quorum: String = redis::cmd("SENTINEL").arg("ckquorum").arg("default").query_async(&mut s).await.unwrap();
    assert!(quorum.starts_with("OK 2 usable Sentinels"), "{quorum}");
    let unknown = redis::cmd("SENTINEL").arg("master").arg("nope").query_async::<()>(&mut s).await.unwrap_err();
    assert!(unknown.to_string().contains("No such master with that name"), "{unknown}");
    let refused = redis::cmd("SENTINEL").arg("failover").arg("default").query_async::<()>(&mut s).await.unwrap_err();
    assert!(refused.to_string().contains("not supported"), "{refused}");
    let info: String = redis::cmd("INFO").query_async(&mut s).await.unwrap();
    assert!(info.contains("redis_mode:sentinel"), "{info}");
    assert!(info.contains(&format!("master0:name=default,status=ok,address=127.0.0.1:{a},")), "{info}");
    let role: (String, Vec<String>) = redis::cmd("ROLE").query_async(&mut s).await.unwrap();
    assert_eq!(role.0, "sentinel");

    // The redis crate's sentinel client finds site-a (and checks ROLE there).
    let sentinel_urls = vec![format!("redis://127.0.0.1:{sa}/"), format!("redis://127.0.0.1:{sb}/")];
    let mut client = redis::sentinel::SentinelClient::build(
        sentinel_urls.clone(),
        "default".into(),
        None,
        redis::sentinel::SentinelServerType::Master,
    )
    .unwrap();
    let mut via = client.get_async_connection().await.unwrap();
    assert_eq!(site_of(&mut via).await, "site-a");

    // site-a's node stops: both names move to site-b, at once (down_after_ms).
    mesh.stop(0).await;
    let moved = wait_named(sb, "default", b).await;
    eprintln!("sentinel named site-b {} ms after site-a stopped", moved.as_millis());
    wait_named(sb, "default@site-a", b).await;
    // (On a busy machine site-a's heartbeats can lag enough for the names to move a
    // little before it stops: any move since the names were first checked counts.)
    wait_event("+switch-master", format!("default 127.0.0.1 {a} 127.0.0.1 {b}"), subscribed);
    wait_event("+sdown", format!("master default@site-a 127.0.0.1 {a}"), subscribed);
    // The active-passive cache keeps its primary, flagged down once it is silent
    // for down_after_ms (no automatic promotion here).
    let deadline = Instant::now() + WAIT;
    loop {
        let sessions = master_fields(sb, "sessions").await;
        assert_eq!(sessions["port"], a.to_string(), "{sessions:?}");
        if sessions["flags"] == "master,s_down" {
            break;
        }
        assert!(Instant::now() < deadline, "sessions never flagged down: {sessions:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut via = client.get_async_connection().await.unwrap();
    assert_eq!(site_of(&mut via).await, "site-b");
    for i in 0..200 {
        let _: () = via.set(format!("while-a-was-down:{i}"), i).await.unwrap();
    }

    // site-a comes back: named again only once it has caught up.
    let restarting = Instant::now();
    mesh.restart(0).await;
    wait_named(sa, "default", a).await;
    let mut back = connect(a).await;
    for i in 0..200 {
        let got: Option<i64> = back.get(format!("while-a-was-down:{i}")).await.unwrap();
        assert_eq!(got, Some(i), "site-a named again before it had site-b's write {i}");
    }
    let returned = wait_named(sb, "default", a).await;
    eprintln!("site-b's sentinel named site-a again {} ms after site-a's own", returned.as_millis());
    wait_event("+switch-master", format!("default 127.0.0.1 {b} 127.0.0.1 {a}"), restarting);
    wait_event("-sdown", format!("master default@site-a 127.0.0.1 {a}"), restarting);
    wait_named(sb, "default@site-b", b).await;
    let mut via = client.get_async_connection().await.unwrap();
    assert_eq!(site_of(&mut via).await, "site-a");
    events.abort();
    mesh.converged().await;
    mesh.shutdown().await;
}

/// redis-py's `Sentinel`, unchanged: `master_for("default")` with its own retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_py_sentinel_client_fails_over_with_no_failed_operation() {
    let (mut mesh, p) = two_sites().await;
    let [a, b] = p.resp;
    let [sa, sb] = p.sentinel;
    wait_steady(&mesh).await;
    for s in [sa, sb] {
        wait_named(s, "default", a).await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sentinel_loop.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg("default")
        .arg(format!("127.0.0.1:{sa}"))
        .arg(format!("127.0.0.1:{sb}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is installed");
    let rx = support::lines_of(child.stdout.take().unwrap());
    let mut lines: Vec<String> = Vec::new();
    let mut until = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("redis-py never printed {what}; it printed:\n{}", lines.join("\n")));
            assert!(!line.starts_with("Traceback"), "{line}");
            lines.push(line.clone());
            if ok(&line) {
                return;
            }
        }
    };
    until("a write served by site-a", &|l| l.starts_with("ok ") && l.split(' ').nth(2) == Some("site-a"));
    mesh.stop(0).await;
    let stopped = Instant::now();
    until("a write served by site-b", &|l| l.starts_with("ok ") && l.split(' ').nth(2) == Some("site-b"));
    eprintln!("redis-py wrote through site-b {} ms after site-a stopped", stopped.elapsed().as_millis());
    mesh.restart(0).await;
    until("site-a named again", &|l| l == format!("master 127.0.0.1 {a}"));
    until("one more write", &|l| l.starts_with("ok "));
    drop(child.stdin.take());
    until("its summary", &|l| l.starts_with("done "));
    assert!(child.wait().unwrap().success());
    let summary: Vec<u64> = lines.last().unwrap().split(' ').skip(1).map(|n| n.parse().unwrap()).collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("err ")).collect();
    assert_eq!(summary[1], 0, "operations failed beyond redis-py's retries: {errors:?}");
    assert!(lines.contains(&format!("master 127.0.0.1 {b}")), "redis-py never saw site-b named: {lines:?}");
    // Nothing acknowledged is lost: every write redis-py got OK for is at both sites.
    let contents = mesh.converged().await;
    for l in lines.iter().filter(|l| l.starts_with("ok ")) {
        let n = l.split(' ').nth(1).unwrap();
        assert_eq!(contents.get(format!("py:{n}").as_bytes()).map(|v| v.as_slice()), Some(n.as_bytes()), "py:{n}");
    }
    let _ = std::io::stdout().flush();
    mesh.shutdown().await;
}

/// Runs `xsite site <action> <site> --admin <admin>` (the runbook's command) and
/// returns what it printed, or its error.
async fn xsite_site(admin: std::net::SocketAddr, action: &str, site: &str) -> Result<String, String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["site", action, site, "--admin", &format!("http://{admin}")])
        .env("XSITE_LOG", "warn")
        .env_remove("XSITE_ADMIN_TOKEN")
        .env_remove("XSITE_ADMIN_URL")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    if out.status.success() {
        Ok(stdout.trim_end().to_string())
    } else {
        Err(stderr.trim_end().to_string())
    }
}

/// The REST availability check redis-py's `LagAwareHealthCheck` makes, for the
/// database `default` (uid 1): its HTTP status.
async fn availability(admin: std::net::SocketAddr) -> u16 {
    let url = format!("http://{admin}/v1/bdbs/1/availability?extend_check=lag&availability_lag_tolerance_ms=10000");
    reqwest::get(url).await.unwrap().status().as_u16()
}

/// A site taken offline at its own node (a drain for maintenance): both sentinels
/// stop naming it (its heartbeats say so), its clients are disconnected once, its
/// REST availability check fails, it keeps replicating, and it stays offline across
/// a restart until an operator brings it online; then it is named again. The
/// primary of an active-passive cache is refused (switch it over first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_taken_offline_at_its_own_node_is_named_nowhere_until_brought_online() {
    let (mut mesh, p) = two_sites().await;
    let [a, b] = p.resp;
    let [sa, sb] = p.sentinel;
    let admin = |mesh: &Mesh, i: usize| mesh.node(i).admin_addr.expect("admin port");
    wait_steady(&mesh).await;
    for s in [sa, sb] {
        wait_named(s, "default@site-b", b).await;
    }
    assert_eq!(availability(admin(&mesh, 1)).await, 200);

    // site-a is the primary of `sessions`: refused, nothing changes.
    let refused = xsite_site(admin(&mesh, 0), "offline", "site-a").await.expect_err("the primary is refused");
    assert!(refused.contains("primary of the active-passive cache 'sessions'"), "{refused}");
    assert!(refused.contains("switchover"), "{refused}");
    wait_named(sa, "default", a).await;

    // site-b drained: named nowhere, its client disconnected, still replicating.
    let mut client_b = connect(b).await;
    let _: () = client_b.set("before-drain", 1).await.unwrap();
    let said = xsite_site(admin(&mesh, 1), "offline", "site-b").await.unwrap();
    assert!(said.contains("site-b (this site) taken offline"), "{said}");
    for s in [sb, sa] {
        wait_named(s, "default@site-b", a).await;
        wait_named(s, "default", a).await;
    }
    let closed = redis::cmd("PING").query_async::<String>(&mut client_b).await;
    assert!(closed.is_err(), "site-b's client was not disconnected: {closed:?}");
    assert_eq!(availability(admin(&mesh, 1)).await, 503);
    let mut direct_b = connect(b).await;
    let _: () = direct_b.set("written-at-b-while-drained", 7).await.unwrap();
    let mut conn_a = connect(a).await;
    support::wait_get(&mut conn_a, b"written-at-b-while-drained", Some(b"7")).await;
    let metrics = reqwest::get(format!("http://{}/metrics", admin(&mesh, 1))).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "xsite_site_offline 1"), "{metrics}");

    // Still offline after a restart of its node.
    mesh.stop(1).await;
    mesh.restart(1).await;
    let status: serde_json::Value =
        reqwest::get(format!("http://{}/status", admin(&mesh, 1))).await.unwrap().json().await.unwrap();
    assert_eq!(status["offline"], true, "{status:#}");
    assert_eq!(availability(admin(&mesh, 1)).await, 503);
    let deadline = Instant::now() + WAIT;
    while !mesh.node(0).replication.as_ref().unwrap().consumer_stats.values().all(|c| c.offline_at_its_site()) {
        assert!(Instant::now() < deadline, "site-a never heard that site-b is offline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_named(sa, "default@site-b", a).await;

    // Brought online: named again at both sentinels.
    let said = xsite_site(admin(&mesh, 1), "online", "site-b").await.unwrap();
    assert!(said.contains("site-b (this site) brought online"), "{said}");
    for s in [sb, sa] {
        wait_named(s, "default@site-b", b).await;
    }
    assert_eq!(availability(admin(&mesh, 1)).await, 200);
    mesh.converged().await;
    mesh.shutdown().await;
}
