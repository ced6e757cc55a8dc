//! Automatic failover of an active-passive cache (`[failover] mode = "lease"`) on
//! librdkafka's mock cluster: two sites, `sessions` with site-a primary and site-b
//! its successor. A client writes at both sites all along and records when each
//! write was acknowledged; the checks are on those acknowledgements, as a client
//! sees them:
//! - the link from site-a to site-b cut (site-b stops consuming site-a): site-a
//!   fences itself, then site-b promotes itself; no write is acknowledged at site-a
//!   after the first one at site-b; healed, site-a turns standby and the sites agree;
//! - the link back cut (site-a stops consuming site-b): site-a fences itself and
//!   site-b, still hearing site-a, does not promote (two sites: no quorum); healed,
//!   site-a takes writes again after the hold-down;
//! - site-a's node stops: site-b promotes itself; site-a restarts fenced, learns the
//!   new epoch and turns standby, and site-b then holds a lease from it;
//! - a planned switchover (`xsite site switchover`), under load: nothing
//!   acknowledged is lost, and the pause is reported.

mod support;

use redis::aio::MultiplexedConnection;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Mesh, WAIT};
use tokio_util::sync::CancellationToken;
use xsite_node::config::{Config, FailoverMode};
use xsite_schemas::{CacheName, SiteId};

const SELF_FENCE_MS: u64 = 3_000;
const FAILOVER_MS: u64 = 5_000;

async fn two_sites() -> Mesh {
    Mesh::start_with(2, |c: &mut Config| {
        c.failover.mode = FailoverMode::Lease;
        c.failover.self_fence_after_ms = SELF_FENCE_MS;
        c.failover.failover_after_ms = FAILOVER_MS;
        c.failover.unfence_hold_down_ms = 500;
        c.caches.push(support::passive_cache("sessions", 1, "site-a"));
    })
    .await
}

fn site(name: &str) -> SiteId {
    SiteId::new(name).unwrap()
}

async fn sessions(mesh: &Mesh, i: usize) -> MultiplexedConnection {
    let mut c = mesh.conn(i).await;
    let _: () = redis::cmd("SELECT").arg(1).query_async(&mut c).await.unwrap();
    c
}

async fn set(c: &mut MultiplexedConnection, key: &str, value: &str) -> redis::RedisResult<()> {
    tokio::time::timeout(Duration::from_secs(5), redis::cmd("SET").arg(key).arg(value).query_async(c))
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::IoError, "timed out"))))
}

/// Waits until a write at site `i` is acknowledged; returns when.
async fn wait_writable(mesh: &Mesh, i: usize) -> Instant {
    let mut c = sessions(mesh, i).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match set(&mut c, "probe", "x").await {
            Ok(()) => return Instant::now(),
            Err(e) => assert!(Instant::now() < deadline, "site {i} never took a write: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client writing `w:<site>:<n>` at one site in a loop, recording each
/// acknowledgement (key, when) and each refusal.
struct Writer {
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    refused: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(mesh: &Mesh, i: usize) -> Writer {
        let mut c = sessions(mesh, i).await;
        let url = format!("redis://{}/1", mesh.node(i).resp_addr);
        let (acked, refused) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let stop = CancellationToken::new();
        let (a, r, s) = (acked.clone(), refused.clone(), stop.clone());
        let task = tokio::spawn(async move {
            for n in 0.. {
                if s.is_cancelled() {
                    return;
                }
                let key = format!("w:{i}:{n}");
                match set(&mut c, &key, "v").await {
                    Ok(()) => a.lock().unwrap().push((key, Instant::now())),
                    Err(e) => {
                        // A node that stops taking writes closes its clients'
                        // connections: connect again, as a pool does.
                        if e.is_connection_dropped() || e.is_io_error() {
                            if let Ok(client) = redis::Client::open(url.as_str()) {
                                let connect = client.get_multiplexed_async_connection();
                                if let Ok(Ok(fresh)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
                                    c = fresh;
                                }
                            }
                        }
                        r.lock().unwrap().push(format!("{key}: {e}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer { acked, refused, stop, task }
    }

    fn acked(&self) -> Vec<(String, Instant)> {
        self.acked.lock().unwrap().clone()
    }

    async fn stop(self) -> (Vec<(String, Instant)>, Vec<String>) {
        self.stop.cancel();
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        (acked, refused)
    }
}

fn lease_state(mesh: &Mesh, i: usize) -> String {
    let f = mesh.node(i).failover.as_ref().expect("replication");
    format!("{:?}", f.status()["sessions"].state)
}

async fn wait_lease(mesh: &Mesh, i: usize, state: &str) {
    let deadline = Instant::now() + WAIT;
    while lease_state(mesh, i) != state {
        assert!(
            Instant::now() < deadline,
            "site {i}'s lease never {state}: {:?}",
            mesh.node(i).failover.as_ref().unwrap().status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_from_its_successor_the_primary_fences_itself_before_the_successor_promotes() {
    let mesh = two_sites().await;
    wait_writable(&mesh, 0).await;
    wait_lease(&mesh, 0, "Held").await;
    let at_a = Writer::start(&mesh, 0).await;
    let at_b = Writer::start(&mesh, 1).await;
    let deadline = Instant::now() + WAIT;
    while at_a.acked().len() < 20 {
        assert!(Instant::now() < deadline, "site-a took no writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Clients of site-a: one on `sessions`, one on `default`.
    let mut on_sessions = sessions(&mesh, 0).await;
    let mut on_default = mesh.conn(0).await;
    // Cut site-a -> site-b: site-b no longer hears site-a.
    let cut = Instant::now();
    mesh.node(1).replication.as_ref().unwrap().take_offline(&site("site-a")).await.unwrap();
    wait_lease(&mesh, 0, "Fenced").await;
    let fenced = cut.elapsed();
    let metrics = reqwest::get(format!("http://{}/metrics", mesh.node(0).admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.lines().any(|l| l == r#"xsite_failover_lease_state{cache="sessions"} 4"#), "{metrics}");
    // Fenced, it closes its `sessions` clients' connections so that their pools ask
    // Sentinel again; the `default` clients' connections stay.
    let deadline = Instant::now() + WAIT;
    while redis::cmd("PING").query_async::<String>(&mut on_sessions).await.is_ok() {
        assert!(Instant::now() < deadline, "the fenced primary kept its clients' connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lease_state(&mesh, 1), "Standby", "closed only when site-b was promoted, not when site-a fenced");
    let pong: String = redis::cmd("PING").query_async(&mut on_default).await.unwrap();
    assert_eq!(pong, "PONG");
    wait_lease(&mesh, 1, "Unleased").await;
    let promoted = cut.elapsed();
    eprintln!("site-a fenced {} ms and site-b promoted {} ms after the cut", fenced.as_millis(), promoted.as_millis());
    let deadline = Instant::now() + WAIT;
    while at_b.acked().is_empty() {
        assert!(Instant::now() < deadline, "site-b took no writes after its promotion");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (acked_a, refused_a) = at_a.stop().await;
    let (acked_b, _) = at_b.stop().await;
    let last_a = acked_a.last().unwrap().1;
    let first_b = acked_b.first().unwrap().1;
    assert!(last_a < first_b, "site-a acknowledged a write after site-b's first: no two primaries at once");
    eprintln!(
        "no write acknowledged for {} ms between the two primaries; site-a refused {} writes",
        first_b.duration_since(last_a).as_millis(),
        refused_a.len()
    );
    assert!(refused_a.iter().any(|r| r.contains("fenced")), "{refused_a:?}");

    // Heal: site-a learns the new epoch and turns standby; the sites agree.
    mesh.node(1).replication.as_ref().unwrap().bring_online(&site("site-a")).unwrap();
    let mut a = sessions(&mesh, 0).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut a).await.unwrap();
        if role[0] == redis::Value::BulkString(b"slave".to_vec()) {
            break;
        }
        assert!(Instant::now() < deadline, "site-a never turned standby: {role:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = set(&mut a, "after", "heal").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    wait_lease(&mesh, 1, "Held").await;
    let mut b = sessions(&mesh, 1).await;
    for (key, _) in acked_a.iter().chain(&acked_b) {
        support::wait_get(&mut b, key.as_bytes(), Some(b"v")).await;
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_its_successor_the_primary_stops_writes_and_takes_them_again_when_it_returns() {
    let mesh = two_sites().await;
    wait_writable(&mesh, 0).await;
    let epoch = mesh.node(1).engine.epoch(&CacheName::new("sessions").unwrap());
    // Cut site-b -> site-a: site-a no longer hears site-b's acknowledgements.
    let cut = Instant::now();
    mesh.node(0).replication.as_ref().unwrap().take_offline(&site("site-b")).await.unwrap();
    wait_lease(&mesh, 0, "Fenced").await;
    eprintln!("site-a fenced {} ms after the cut", cut.elapsed().as_millis());
    let mut a = sessions(&mesh, 0).await;
    let err = set(&mut a, "k", "v").await.unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");
    // site-b still hears site-a (the fenced primary goes on sending heartbeats): all
    // through failover_after_ms and beyond, its timer never nears the promotion.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(FAILOVER_MS + 1_000) {
        let status = mesh.node(1).failover.as_ref().unwrap().status()["sessions"].clone();
        assert_eq!(format!("{:?}", status.state), "Standby", "{status:?}");
        let reason = status.reason.unwrap_or_default();
        let silent: u64 = reason
            .strip_prefix("primary site-a last heard ")
            .and_then(|r| r.strip_suffix(" ms ago"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{reason}"));
        assert!(silent < FAILOVER_MS / 2, "site-b has not heard site-a for {silent} ms");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mesh.node(1).engine.epoch(&CacheName::new("sessions").unwrap()), epoch);
    // Healed: site-a takes writes again, after holding its lease for the hold-down.
    mesh.node(0).replication.as_ref().unwrap().bring_online(&site("site-b")).unwrap();
    let healed = Instant::now();
    let back = wait_writable(&mesh, 0).await;
    eprintln!("site-a took writes again {} ms after the heal", back.duration_since(healed).as_millis());
    wait_lease(&mesh, 0, "Held").await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_successor_promotes_itself_when_the_primary_stops_and_the_old_primary_returns_as_standby() {
    let mut mesh = two_sites().await;
    wait_writable(&mesh, 0).await;
    let mut a = sessions(&mesh, 0).await;
    set(&mut a, "before", "stop").await.unwrap();
    mesh.stop(0).await;
    let stopped = Instant::now();
    let writable = wait_writable(&mesh, 1).await;
    eprintln!("site-b took writes {} ms after site-a stopped", writable.duration_since(stopped).as_millis());
    assert!(writable.duration_since(stopped) >= Duration::from_millis(FAILOVER_MS - SELF_FENCE_MS));
    let mut b = sessions(&mesh, 1).await;
    set(&mut b, "while", "a-was-down").await.unwrap();
    mesh.restart(0).await;
    // site-a restarts fenced, then learns the new epoch: a standby from then on.
    let mut a = sessions(&mesh, 0).await;
    assert!(set(&mut a, "at-restart", "refused").await.is_err());
    support::wait_get(&mut a, b"while", Some(b"a-was-down")).await;
    wait_lease(&mesh, 0, "Standby").await;
    let err = set(&mut a, "standby", "refused").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    wait_lease(&mesh, 1, "Held").await;
    // What site-a acknowledged just before it stopped may not have reached site-b
    // before it promoted; it does once site-a is back (every site applies every
    // entry), and survives since the new epoch did not write that key.
    support::wait_get(&mut b, b"before", Some(b"stop")).await;
    mesh.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switchover_under_load_loses_nothing_acknowledged() {
    let admin = [free_port(), free_port()];
    let mesh = Mesh::start_with(2, move |c: &mut Config| {
        let me = usize::from(c.site.as_str() == "site-b");
        c.server.admin_port = Some(admin[me]);
        for r in &mut c.remotes {
            let other = usize::from(r.site.as_str() == "site-b");
            r.admin_url = Some(format!("http://127.0.0.1:{}", admin[other]));
        }
        c.caches.push(support::passive_cache("sessions", 1, "site-a"));
    })
    .await;
    wait_writable(&mesh, 0).await;
    let at_a = Writer::start(&mesh, 0).await;
    let at_b = Writer::start(&mesh, 1).await;
    let deadline = Instant::now() + WAIT;
    while at_a.acked().len() < 50 {
        assert!(Instant::now() < deadline, "site-a took no writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_xsite"))
        .args(["site", "switchover", "sessions", "--admin", &format!("http://127.0.0.1:{}", admin[0])])
        .env("XSITE_LOG", "warn")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{said} {}", String::from_utf8_lossy(&out.stderr));
    assert!(said.starts_with("site-a handed cache 'sessions' over to site-b (epoch 1): writes paused "), "{said}");
    eprintln!("{said}");
    let deadline = Instant::now() + WAIT;
    while at_b.acked().is_empty() {
        assert!(Instant::now() < deadline, "site-b took no writes after the switchover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (acked_a, _) = at_a.stop().await;
    let (acked_b, _) = at_b.stop().await;
    assert!(acked_a.last().unwrap().1 < acked_b.first().unwrap().1, "both sites took writes at once");
    // Nothing site-a acknowledged is lost: all of it is at site-b, the new primary.
    let mut b = sessions(&mesh, 1).await;
    for (key, _) in &acked_a {
        let got: Option<String> = redis::cmd("GET").arg(key).query_async(&mut b).await.unwrap();
        assert_eq!(got.as_deref(), Some("v"), "{key}, acknowledged by site-a, is not at site-b");
    }
    let mut a = sessions(&mesh, 0).await;
    let err = set(&mut a, "old", "primary").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    mesh.shutdown().await;
}

/// Three sites: `sessions` with site-a primary, site-b its successor, site-c the
/// witness (`[failover] witness`, successors site-a and site-b only).
async fn three_sites() -> Mesh {
    Mesh::start_with(3, |c: &mut Config| {
        c.failover.mode = FailoverMode::Lease;
        c.failover.self_fence_after_ms = SELF_FENCE_MS;
        c.failover.failover_after_ms = FAILOVER_MS;
        c.failover.unfence_hold_down_ms = 500;
        c.failover.successors = vec![site("site-a"), site("site-b")];
        c.failover.witness = Some(site("site-c"));
        c.caches.push(support::passive_cache("sessions", 1, "site-a"));
    })
    .await
}

fn lease(mesh: &Mesh, i: usize) -> xsite_node::replication::failover::CacheLease {
    mesh.node(i).failover.as_ref().expect("replication").status()["sessions"].clone()
}

/// Waits until `what` holds of site `i`'s lease; returns when.
async fn wait_for(
    mesh: &Mesh,
    i: usize,
    what: &str,
    holds: impl Fn(&xsite_node::replication::failover::CacheLease) -> bool,
) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let l = lease(mesh, i);
        if holds(&l) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "site {i}: never {what}: {l:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes site `other` offline at site `at` (`at` stops hearing it).
async fn cut(mesh: &Mesh, at: usize, other: &str) {
    mesh.node(at).replication.as_ref().unwrap().take_offline(&site(other)).await.unwrap();
}

fn heal(mesh: &Mesh, at: usize, other: &str) {
    mesh.node(at).replication.as_ref().unwrap().bring_online(&site(other)).unwrap();
}

/// With a witness, what two sites cannot do: the link between the primary and its
/// successor cut both ways, the primary keeps its lease through the witness and the
/// successor, running for primary, never gets the witness's vote; the successor
/// lost, the primary keeps writing. Healed, the successor ends its candidacy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_witness_a_cut_from_the_successor_or_its_loss_stops_no_writes() {
    let mut mesh = three_sites().await;
    wait_writable(&mesh, 0).await;
    wait_lease(&mesh, 0, "Held").await;
    assert_eq!(lease(&mesh, 0).witness, Some(site("site-c")));
    let at_a = Writer::start(&mesh, 0).await;

    // site-a and site-b cut off from each other, both ways.
    cut(&mesh, 0, "site-b").await;
    cut(&mesh, 1, "site-a").await;
    let running = wait_for(&mesh, 1, "a candidate", |l| l.candidacy.is_some()).await;
    // Past the self-fence time again: site-a's lease is renewed by site-c alone.
    while running.elapsed() < Duration::from_millis(SELF_FENCE_MS + 1_000) {
        assert_eq!(lease_state(&mesh, 0), "Held", "site-a fenced though site-c acknowledges it");
        assert_eq!(lease_state(&mesh, 1), "Standby", "site-b promoted without the witness's vote");
        assert_eq!(lease(&mesh, 2).vote, None, "site-c voted while it hears site-a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut a = sessions(&mesh, 0).await;
    set(&mut a, "during", "the-cut").await.unwrap();
    heal(&mesh, 0, "site-b");
    heal(&mesh, 1, "site-a");
    wait_for(&mesh, 1, "done running", |l| l.candidacy.is_none()).await;

    // site-b lost: site-a goes on writing, acknowledged by site-c.
    mesh.stop(1).await;
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_millis(FAILOVER_MS + 1_000) {
        assert_eq!(lease_state(&mesh, 0), "Held", "site-a fenced on losing its successor, with a witness");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set(&mut a, "without", "site-b").await.unwrap();
    let (acked, refused) = at_a.stop().await;
    assert!(refused.is_empty(), "site-a refused writes: {:?}", &refused[..refused.len().min(5)]);
    let last = acked.last().unwrap().1;
    assert!(last.duration_since(stopped) > Duration::from_millis(FAILOVER_MS), "site-a's writer stalled");
    mesh.restart(1).await;
    let mut b = sessions(&mesh, 1).await;
    support::wait_get(&mut b, b"without", Some(b"site-b")).await;
    mesh.shutdown().await;
}

/// With a witness, the primary cut off from both other sites fences itself; the
/// successor runs for primary, the witness (not hearing the primary either) votes
/// for it, and it promotes itself: no write acknowledged at site-a after the first
/// at site-b. The new primary then holds its lease through the witness while the
/// old one is still cut off; healed, the old primary turns standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_witness_the_successor_promotes_itself_only_with_the_witness_vote() {
    let mesh = three_sites().await;
    wait_writable(&mesh, 0).await;
    wait_lease(&mesh, 0, "Held").await;
    let at_a = Writer::start(&mesh, 0).await;
    let at_b = Writer::start(&mesh, 1).await;
    let started = Instant::now();
    while at_a.acked().len() < 20 {
        assert!(started.elapsed() < WAIT, "site-a took no writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // site-a cut off from site-b and site-c, both ways.
    let cut_at = Instant::now();
    for (at, other) in [(0, "site-b"), (0, "site-c"), (1, "site-a"), (2, "site-a")] {
        cut(&mesh, at, other).await;
    }
    wait_lease(&mesh, 0, "Fenced").await;
    let fenced = cut_at.elapsed();
    let voted = wait_for(&mesh, 2, "voting", |l| l.vote.is_some()).await;
    wait_lease(&mesh, 1, "Unleased").await;
    let promoted = cut_at.elapsed();
    assert!(promoted >= Duration::from_millis(FAILOVER_MS) - Duration::from_millis(1_500), "{promoted:?}");
    eprintln!(
        "site-a fenced {} ms, site-c voted {} ms and site-b promoted {} ms after the cut",
        fenced.as_millis(),
        voted.duration_since(cut_at).as_millis(),
        promoted.as_millis()
    );
    // The witness learns the new epoch and acknowledges the new primary: a lease.
    wait_lease(&mesh, 1, "Held").await;
    assert_eq!(lease(&mesh, 2).vote, None, "the vote outlived the promotion");
    let deadline = Instant::now() + WAIT;
    while at_b.acked().is_empty() {
        assert!(Instant::now() < deadline, "site-b took no writes after its promotion");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (acked_a, _) = at_a.stop().await;
    let (acked_b, _) = at_b.stop().await;
    let (last_a, first_b) = (acked_a.last().unwrap().1, acked_b.first().unwrap().1);
    assert!(last_a < first_b, "site-a acknowledged a write after site-b's first: two primaries at once");
    eprintln!("no write acknowledged for {} ms between the two primaries", first_b.duration_since(last_a).as_millis());

    for (at, other) in [(0, "site-b"), (0, "site-c"), (1, "site-a"), (2, "site-a")] {
        heal(&mesh, at, other);
    }
    wait_lease(&mesh, 0, "Standby").await;
    let mut a = sessions(&mesh, 0).await;
    let err = set(&mut a, "after", "heal").await.unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
    let mut c = sessions(&mesh, 2).await;
    for (key, _) in acked_a.iter().chain(&acked_b) {
        support::wait_get(&mut c, key.as_bytes(), Some(b"v")).await;
    }
    mesh.shutdown().await;
}
