//! The Redis Enterprise REST API shapes that client-side geographic failover calls
//! (`GET /v1/bdbs`, `GET /v1/bdbs/{uid}/availability?extend_check=lag`), on
//! librdkafka's mock cluster, and redis-py's `MultiDBClient` with
//! `LagAwareHealthCheck`, unchanged, failing over from site-a to site-b and back once
//! site-a has caught up.
//!
//! redis-py asks every database's REST API on one port (`rest_api_port`) at its own
//! host (`health_check_url`), and finds the database by its endpoint's host, so each
//! site has its own loopback address: site-a 127.0.0.2, site-b 127.0.0.3, with the
//! same admin port.

mod support;

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{default_cache, Mesh, WAIT};
use xsite_node::config::{CacheConfig, Config, Topology};
use xsite_schemas::CacheName;

const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const TOKEN: &str = "s3cret";

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port()
}

/// A port free on both sites' addresses.
fn free_port_on_both() -> u16 {
    loop {
        let port = free_port(HOSTS[0]);
        if std::net::TcpListener::bind((HOSTS[1], port)).is_ok() {
            return port;
        }
    }
}

#[derive(Clone, Copy)]
struct Ports {
    resp: [u16; 2],
    admin: u16,
}

/// Two active-active sites on their own loopback addresses, with the same admin port
/// and ports kept across restarts, and a second cache (uid 2).
async fn two_sites(tweak: impl Fn(&mut Config)) -> (Mesh, Ports) {
    let ports = Ports { resp: [free_port(HOSTS[0]), free_port(HOSTS[1])], admin: free_port_on_both() };
    let mesh = Mesh::start_with(2, move |c: &mut Config| {
        let me = usize::from(c.site.as_str() == "site-b");
        c.server.bind = HOSTS[me].into();
        c.server.port = ports.resp[me];
        c.server.admin_port = Some(ports.admin);
        c.caches.push(CacheConfig {
            name: CacheName::new("sessions").unwrap(),
            db: 1,
            policy: "last-write-wins".into(),
            conflict_window_ms: xsite_consumer::merge::CONFLICT_WINDOW_MS_DEFAULT,
            topology: Topology::ActiveActive,
            primary: None,
        });
        tweak(c);
    })
    .await;
    (mesh, ports)
}

async fn get(url: &str, basic: bool) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(url);
    if basic {
        request = request.basic_auth("admin@example.com", Some("not-a-token"));
    }
    let response = tokio::time::timeout(WAIT, request.send()).await.unwrap().unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn availability_url(site: usize, ports: Ports, uid: &str, query: &str) -> String {
    format!("http://{}:{}/v1/bdbs/{uid}/availability{query}", HOSTS[site], ports.admin)
}

fn lag_query(tolerance_ms: u64) -> String {
    format!("?extend_check=lag&availability_lag_tolerance_ms={tolerance_ms}")
}

/// Waits until `site` answers 200 to the lag-aware check.
async fn wait_available(site: usize, ports: Ports, tolerance_ms: u64) {
    let url = availability_url(site, ports, "1", &lag_query(tolerance_ms));
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(&url, false).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "{} never became available: {status} {body}", HOSTS[site]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until Kafka has acknowledged everything in site `i`'s WAL now.
async fn wait_shipped(mesh: &Mesh, i: usize) {
    let node = mesh.node(i);
    let last = node.engine.wal().last_lsn().0;
    let stats = &node.replication.as_ref().unwrap().shipper_stats;
    let deadline = Instant::now() + WAIT;
    while stats.acked_lsn.load(std::sync::atomic::Ordering::Relaxed) < last {
        assert!(Instant::now() < deadline, "site {i} never shipped up to LSN {last}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn bdb(uid: u64, name: &str, site: &str, host: &str, port: u16) -> Value {
    json!({
        "uid": uid,
        "name": name,
        "endpoints": [{
            "uid": format!("{uid}:1"),
            "dns_name": host,
            "addr": [host],
            "port": port,
            "addr_type": "external",
            "proxy_policy": "single",
        }],
        "xsite_site": site,
    })
}

/// Entries site-b writes while site-a does not consume it (offline, or stopped):
/// enough that catching up takes a measurable time (about a second in a debug
/// build).
const WRITES_WHILE_AWAY: usize = 20_000;

/// Writes `<prefix>:<i>` = i for i in 0..WRITES_WHILE_AWAY, pipelined.
async fn write_many(conn: &mut MultiplexedConnection, prefix: &str) {
    for chunk in (0..WRITES_WHILE_AWAY).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set(format!("{prefix}:{i}"), i).ignore();
        }
        let () = pipe.query_async(conn).await.unwrap();
    }
}

/// Asserts that `conn`'s site holds every key [`write_many`] wrote.
async fn assert_has_all(conn: &mut MultiplexedConnection, prefix: &str, when: &str) {
    for chunk in (0..WRITES_WHILE_AWAY).collect::<Vec<_>>().chunks(1_000) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("{prefix}:{i}")).collect();
        let got: Vec<Option<usize>> = conn.mget(&keys).await.unwrap();
        let missing: Vec<&String> = keys.iter().zip(&got).filter(|(_, g)| g.is_none()).map(|(k, _)| k).collect();
        assert!(missing.is_empty(), "{when} before it had {} of site-b's writes: {missing:?}", missing.len());
    }
}

/// What the lag-aware check of a site answered while it caught up.
struct CatchUp {
    lagging: usize,
    why: Option<String>,
    took: Duration,
}

/// Polls `site`'s lag-aware check until it answers 200; every other answer must be
/// 503 `bdb_lagging` (while it is, a check without `extend_check` answers 200).
async fn poll_until_caught_up(site: usize, ports: Ports, tolerance_ms: u64) -> CatchUp {
    let url = availability_url(site, ports, "1", &lag_query(tolerance_ms));
    let started = Instant::now();
    let (mut lagging, mut why) = (0, None);
    loop {
        let (status, body) = get(&url, false).await;
        if status == StatusCode::OK {
            return CatchUp { lagging, why, took: started.elapsed() };
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error_code"], "bdb_lagging", "{body}");
        if lagging == 0 {
            assert_eq!(get(&availability_url(site, ports, "1", ""), false).await.0, StatusCode::OK);
        }
        lagging += 1;
        why = body["description"].as_str().map(String::from);
        assert!(started.elapsed() < WAIT, "{} never caught up: {body}", HOSTS[site]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rest_api_answers_as_redis_enterprise_does_and_lags_while_catching_up() {
    // site-a announces its bind address and port (the defaults), site-b others.
    let (mesh, p) = two_sites(|c| {
        c.server.admin_token = Some(TOKEN.into());
        c.caches.push(support::passive_cache("carts", 2, "site-a"));
        if c.site.as_str() == "site-b" {
            c.server.announce_host = Some("b.example".into());
            c.server.announce_port = Some(16379);
        }
    })
    .await;
    let tolerance_ms = 1_000;
    wait_available(0, p, tolerance_ms).await;
    wait_available(1, p, tolerance_ms).await;

    let (status, bdbs) = get(&format!("http://{}:{}/v1/bdbs", HOSTS[0], p.admin), false).await;
    assert_eq!(status, StatusCode::OK);
    let want_a = json!([
        bdb(1, "default", "site-a", HOSTS[0], p.resp[0]),
        bdb(2, "sessions", "site-a", HOSTS[0], p.resp[0]),
        bdb(3, "carts", "site-a", HOSTS[0], p.resp[0]),
    ]);
    assert_eq!(bdbs, want_a);
    let (status, bdbs) = get(&format!("http://{}:{}/v1/bdbs", HOSTS[1], p.admin), true).await;
    assert_eq!(status, StatusCode::OK, "basic auth on a GET is ignored");
    let want_b = json!([
        bdb(1, "default", "site-b", "b.example", 16379),
        bdb(2, "sessions", "site-b", "b.example", 16379),
        bdb(3, "carts", "site-b", "b.example", 16379),
    ]);
    assert_eq!(bdbs, want_b);

    // Available, with and without the lag check, with and without basic auth.
    let available = |uid: u64, name: &str| json!({"uid": uid, "name": name, "xsite_site": "site-a", "available": true});
    for (uid, name) in [(1, "default"), (2, "sessions"), (3, "carts")] {
        for query in [String::new(), "?extend_check=lag".into(), lag_query(tolerance_ms)] {
            for basic in [false, true] {
                let got = get(&availability_url(0, p, &uid.to_string(), &query), basic).await;
                assert_eq!(got, (StatusCode::OK, available(uid, name)), "uid {uid}{query}, basic auth {basic}");
            }
        }
    }
    // An active-passive cache is available at its primary only.
    let (status, body) = get(&availability_url(1, p, "3", ""), false).await;
    assert_eq!((status, &body["error_code"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("bdb_unavailable")), "{body}");
    assert_eq!(body["description"], "site-b is a standby of 'carts' (its primary: site-a)", "{body}");
    for uid in ["0", "4", "x", "-1"] {
        let (status, body) = get(&availability_url(0, p, uid, ""), false).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "uid {uid}: {body}");
        assert_eq!(body["error_code"], "bdb_not_found", "{body}");
    }
    for query in ["?extend_check=ping", "?extend_check=lag&availability_lag_tolerance_ms=soon"] {
        let (status, body) = get(&availability_url(0, p, "1", query), false).await;
        assert_eq!((status, &body["error_code"]), (StatusCode::BAD_REQUEST, &json!("invalid_parameter")), "{body}");
    }

    // POSTs stay guarded: basic auth is not the bearer token.
    let http = reqwest::Client::new();
    let admin_a = format!("http://{}:{}", HOSTS[0], p.admin);
    let refused = http
        .post(format!("{admin_a}/sites/site-b/offline"))
        .basic_auth("admin@example.com", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // site-a stops consuming site-b: an offline remote does not make it lag.
    let post = |path: &str| http.post(format!("{admin_a}{path}")).bearer_auth(TOKEN).send();
    assert_eq!(post("/sites/site-b/offline").await.unwrap().status(), StatusCode::OK);
    let lag_url = availability_url(0, p, "1", &lag_query(tolerance_ms));
    assert_eq!(get(&lag_url, false).await.0, StatusCode::OK, "site-b is offline here: it does not count");
    let mut b = mesh.conn(1).await;
    write_many(&mut b, "while-offline").await;
    wait_shipped(&mesh, 1).await;

    // Back online: lagging (503) while it catches up, then available (200).
    assert_eq!(post("/sites/site-b/online").await.unwrap().status(), StatusCode::OK);
    let CatchUp { lagging, why, took } = poll_until_caught_up(0, p, tolerance_ms).await;
    eprintln!("site-a answered bdb_lagging {lagging} times ({why:?}), then 200 after {} ms", took.as_millis());
    assert!(lagging > 0, "no bdb_lagging while site-a caught up on {WRITES_WHILE_AWAY} entries");
    let why = why.unwrap();
    assert!(why.starts_with("site-a is not available: ") && why.contains("site-b"), "{why}");
    // Available with the lag check means it had everything site-b wrote before.
    assert_has_all(&mut mesh.conn(0).await, "while-offline", "available").await;
    mesh.converged().await;
    mesh.shutdown().await;
}

/// redis-py's lag tolerance, in ms.
const LAG_TOLERANCE_MS: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_py_multidb_client_fails_over_and_back_once_caught_up() {
    let (mut mesh, p) = two_sites(|_| {}).await;
    wait_available(0, p, LAG_TOLERANCE_MS).await;
    wait_available(1, p, LAG_TOLERANCE_MS).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/multidb_loop.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(p.admin.to_string())
        .arg(LAG_TOLERANCE_MS.to_string())
        .arg(format!("{}:{}:1.0", HOSTS[0], p.resp[0]))
        .arg(format!("{}:{}:0.5", HOSTS[1], p.resp[1]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is installed");
    let rx = support::lines_of(child.stdout.take().unwrap());
    let mut lines: Vec<String> = Vec::new();
    let mut until = |what: &str, ok: &dyn Fn(&str) -> bool| -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("redis-py never printed {what}; it printed:\n{}", lines.join("\n")));
            assert!(!line.starts_with("Traceback"), "{line}");
            lines.push(line.clone());
            if ok(&line) {
                return lines.clone();
            }
        }
    };
    let served_by = |site: &'static str| move |l: &str| l.starts_with("ok ") && l.split(' ').nth(2) == Some(site);

    until("a write served by site-a", &served_by("site-a"));
    let stopping = Instant::now();
    mesh.stop(0).await;
    let stop_took = stopping.elapsed();
    let failed_over = until("a write served by site-b", &served_by("site-b"));
    eprintln!(
        "redis-py wrote through site-b {} ms after site-a began to stop (the stop took {} ms); that operation took {} ms",
        stopping.elapsed().as_millis(),
        stop_took.as_millis(),
        failed_over.last().unwrap().split(' ').nth(3).unwrap()
    );
    // While site-a is down site-b takes many writes, so that site-a takes a while to
    // catch up when it is back; they and every write redis-py made through site-b so
    // far are in Kafka before site-a starts consuming again, so site-a must have
    // them all before redis-py writes through it again.
    write_many(&mut mesh.conn(1).await, "while-down").await;
    let before_restart = until("one more write through site-b", &served_by("site-b"));
    wait_shipped(&mesh, 1).await;
    mesh.restart(0).await;
    let restarted = Instant::now();
    let catch_up = poll_until_caught_up(0, p, LAG_TOLERANCE_MS).await;
    until("a write served by site-a again", &served_by("site-a"));
    eprintln!(
        "site-a answered bdb_lagging {} times, then 200 {} ms after it restarted; redis-py wrote through it again {} ms after it restarted",
        catch_up.lagging,
        catch_up.took.as_millis(),
        restarted.elapsed().as_millis()
    );
    assert!(catch_up.lagging > 0, "no bdb_lagging while site-a caught up on {WRITES_WHILE_AWAY} entries");
    let mut a = mesh.conn(0).await;
    assert_has_all(&mut a, "while-down", "redis-py failed back to site-a").await;
    for l in before_restart.iter().filter(|l| served_by("site-b")(l)) {
        let n = l.split(' ').nth(1).unwrap();
        let got: Option<String> = a.get(format!("mdb:{n}")).await.unwrap();
        assert_eq!(got.as_deref(), Some(n), "redis-py failed back to site-a before it had site-b's mdb:{n}");
    }
    until("one more write through site-a", &served_by("site-a"));
    drop(child.stdin.take());
    let lines = until("its summary", &|l| l.starts_with("done "));
    assert!(child.wait().unwrap().success());

    let summary: Vec<u64> = lines.last().unwrap().split(' ').skip(1).map(|n| n.parse().unwrap()).collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("err ")).collect();
    let actives: Vec<&String> = lines.iter().filter(|l| l.starts_with("active ")).collect();
    eprintln!("redis-py: {} ok, {} failed: {errors:?}; {actives:?}", summary[0], summary[1]);
    // The bound: 2. The loop is sequential, so one operation is in flight at a
    // time, and two moments can fail one: the breaker opening when site-a stops (a
    // SET taken by site-a whose GET, retried at site-b, comes before site-a's entry
    // does; a command refused is retried for ~2 s, which outlasts the breaker), and
    // the failback, when the client moves between the SET (site-b) and the GET
    // (site-a) of one operation: replication is asynchronous.
    assert!(summary[1] <= 2, "operations failed beyond the two that can (failover, failback): {errors:?}");
    let active = |site: usize| format!("active {} {}", HOSTS[site], p.resp[site]);
    assert_eq!(actives, [&active(0), &active(1), &active(0)], "one failover and one failback");
    // Nothing acknowledged is lost: every write redis-py got OK for is at both sites.
    let contents = mesh.converged().await;
    for l in lines.iter().filter(|l| l.starts_with("ok ")) {
        let n = l.split(' ').nth(1).unwrap();
        assert_eq!(contents.get(format!("mdb:{n}").as_bytes()).map(|v| v.as_slice()), Some(n.as_bytes()), "mdb:{n}");
    }
    let default = default_cache();
    assert_eq!(mesh.node(0).engine.digest(&default), mesh.node(1).engine.digest(&default));
    mesh.shutdown().await;
}
