#![cfg(feature = "containers")]
//! Automatic failover of an active-passive cache, as containers on private networks:
//! two sites, the cache [`PASSIVE_CACHE`] with site-a its first primary, failing over
//! by lease (`[failover] mode = "lease"`). Three clients write all along: one
//! pinned to each site's node, and one that follows what the sites' Sentinels name.
//! Every check is on what the clients were acknowledged, and when:
//!
//! - **no two primaries**: a write acknowledged by the old primary and *sent* after
//!   the new primary's first acknowledgement *arrived* would prove two sites taking
//!   writes at once (the decision lies between sending and receiving); none may exist;
//! - **the clients follow**: the Sentinel client writes through the new primary, in a
//!   measured time;
//! - **the old primary comes back as standby** (`-READONLY`), and nothing acknowledged
//!   is lost: at the end both sites hold every acknowledged key, with equal digests.
//!
//! The faults, in order, on one deployment (each scenario starts from the state the
//! previous one left):
//! 1. site-a cut off both ways: site-a fences itself, site-b promotes itself;
//! 2. the primary (site-b) unheard by the standby (site-b's broker detached from
//!    site-a's network, the other direction still up): site-b fences, site-a promotes;
//! 3. the standby (site-b) unheard by the primary (site-a): site-a fences, site-b,
//!    still hearing site-a, does not promote (two sites, no quorum): for the whole cut
//!    no site takes writes; healed, site-a takes them again;
//!
//! and on a second deployment the failures where only part of a site stops:
//! 4. only the primary's broker stops (its node runs): the primary fences, the
//!    standby promotes; what the old primary acknowledged in the meantime reaches the
//!    new one once its broker is back;
//! 5. the primary's node is SIGSTOPped past the margin (`failover_after_ms`): the
//!    standby promotes; resumed, the old primary acknowledges nothing it decided after
//!    the promotion and turns standby.
//!
//! Needs the local images (`bash scripts/build-images.sh`). Run with
//! `cargo test -p xsite-integration-tests --features containers --test containers_failover`.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_integration_tests::containers::client::Resp;
use xsite_integration_tests::containers::{Deployment, Options, Site, FAILOVER_MS, PASSIVE_CACHE, PASSIVE_DB};

/// Longest wait for a lease state, a promotion, a client to follow, convergence.
const WAIT: Duration = Duration::from_secs(60);
/// Pause between two writes of one client.
const WRITE_GAP: Duration = Duration::from_millis(10);
/// How much sooner than [`FAILOVER_MS`] after a fault the successor may promote:
/// the heartbeat interval (1 s) and some scheduling.
const PROMOTION_EARLY_MS_MAX: u64 = 1_500;
/// Keys read per `MGET` when checking what survived.
const MGET_CHUNK: usize = 500;

fn options() -> Options {
    Options { durability: "always", sentinel: true, passive: true, ..Options::default() }
}

/// One write a client was acknowledged: by which site, sent and answered when.
#[derive(Debug, Clone)]
struct Ack {
    site: String,
    key: String,
    sent: Instant,
    answered: Instant,
}

/// What every client was acknowledged and refused, shared with their tasks.
#[derive(Default)]
struct Journal {
    acks: Mutex<Vec<Ack>>,
    refusals: Mutex<Vec<String>>,
}

impl Journal {
    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    fn acks_since(&self, site: &str, since: Instant) -> Vec<Ack> {
        self.acks().into_iter().filter(|a| a.site == site && a.sent >= since).collect()
    }

    async fn record(&self, site: &str, key: String, resp: &mut Resp) -> Result<()> {
        let sent = Instant::now();
        match resp.set(&key, "v").await {
            Ok(()) => {
                let ack = Ack { site: site.to_string(), key, sent, answered: Instant::now() };
                self.acks.lock().unwrap().push(ack);
                Ok(())
            }
            Err(e) => {
                self.refusals.lock().unwrap().push(format!("{site} {key}: {e:#}"));
                Err(e)
            }
        }
    }
}

/// The three clients.
struct Clients {
    journal: Arc<Journal>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(dep: &Deployment) -> Clients {
        let journal = Arc::new(Journal::default());
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for site in dep.sites() {
            let (journal, stop, id, port) = (journal.clone(), stop.clone(), site.id.clone(), site.resp_port);
            tasks.push(tokio::spawn(async move {
                let mut resp = Resp::with_db(port, PASSIVE_DB);
                for n in 0.. {
                    if stop.is_cancelled() {
                        return;
                    }
                    let _ = journal.record(&id, format!("w:{id}:{n}"), &mut resp).await;
                    tokio::time::sleep(WRITE_GAP).await;
                }
            }));
        }
        let sites: Vec<(String, u16, u16)> =
            dep.sites().iter().map(|s| (s.id.clone(), s.resp_port, s.sentinel_port.expect("sentinel"))).collect();
        let (j, s) = (journal.clone(), stop.clone());
        tasks.push(tokio::spawn(async move { follow(&sites, &j, &s).await }));
        Clients { journal, stop, tasks }
    }

    async fn stop(self) -> Arc<Journal> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("client task");
        }
        self.journal
    }
}

/// The Sentinel client: asks the sentinels (in turn, starting with the one that
/// answered last) for the primary of [`PASSIVE_CACHE`] and writes there; after a
/// failed write it asks again, starting with the next sentinel.
async fn follow(sites: &[(String, u16, u16)], journal: &Journal, stop: &CancellationToken) {
    let mut first = 0;
    let mut current: Option<(usize, Resp)> = None;
    for n in 0.. {
        if stop.is_cancelled() {
            return;
        }
        if current.is_none() {
            for k in 0..sites.len() {
                let i = (first + k) % sites.len();
                if let Some(port) = named(sites[i].2).await {
                    if let Some(at) = sites.iter().position(|s| s.1 == port) {
                        first = i;
                        current = Some((at, Resp::with_db(port, PASSIVE_DB)));
                        break;
                    }
                }
            }
        }
        match current.as_mut() {
            Some((at, resp)) => {
                if journal.record(&sites[*at].0, format!("f:{n}"), resp).await.is_err() {
                    current = None;
                    first = (first + 1) % sites.len();
                }
            }
            None => first = (first + 1) % sites.len(),
        }
        tokio::time::sleep(WRITE_GAP).await;
    }
}

/// The RESP port a sentinel names as the primary of [`PASSIVE_CACHE`], if it answers.
async fn named(sentinel: u16) -> Option<u16> {
    let mut resp = Resp::new(sentinel);
    let cmd = redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(PASSIVE_CACHE).clone();
    let answer: Option<(String, u16)> =
        tokio::time::timeout(Duration::from_secs(2), resp.query(&cmd)).await.ok()?.ok()?;
    answer.map(|(_, port)| port)
}

/// The lease state of [`PASSIVE_CACHE`] at a site (`standby`, `held`, `fenced`, …).
async fn lease(site: &Site) -> Result<String> {
    let status = site.admin().status().await?;
    let state = &status["failover"]["caches"][PASSIVE_CACHE]["state"];
    state.as_str().map(str::to_string).ok_or_else(|| anyhow!("{} reports no lease: {}", site.id, status["failover"]))
}

/// Wait until a site's lease is in one of `states`; returns how long it took.
async fn wait_lease(site: &Site, states: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let state = lease(site).await;
        match &state {
            Ok(s) if states.contains(&s.as_str()) => return Ok(started.elapsed()),
            _ if started.elapsed() > WAIT => bail!("{}'s lease is {state:?}, not {states:?}, after {WAIT:?}", site.id),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The new primary's lease states: promoted, with or without its successor's
/// acknowledgement yet.
const PRIMARY: &[&str] = &["unleased", "held"];

/// Wait until a client was acknowledged a write by `site` that it sent after `since`.
async fn wait_acked(journal: &Journal, site: &str, key_prefix: &str, since: Instant) -> Result<Duration> {
    loop {
        if journal.acks_since(site, since).iter().any(|a| a.key.starts_with(key_prefix)) {
            return Ok(since.elapsed());
        }
        ensure!(since.elapsed() < WAIT, "no write with prefix {key_prefix} acknowledged by {site} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No write was acknowledged by `old` that was sent after `new`'s first
/// acknowledgement since `since` arrived. Returns the gap between the two primaries
/// as clients saw it (last answer of the old, first answer of the new).
fn check_handover(journal: &Journal, old: &str, new: &str, since: Instant) -> Result<Duration> {
    let acks = journal.acks();
    let first_new = acks
        .iter()
        .filter(|a| a.site == new && a.sent >= since)
        .map(|a| a.answered)
        .min()
        .with_context(|| format!("{new} acknowledged nothing since the fault"))?;
    let late: Vec<&Ack> = acks.iter().filter(|a| a.site == old && a.sent > first_new).collect();
    ensure!(late.is_empty(), "{old} acknowledged {} writes sent after {new} took its first: {:?}", late.len(), late);
    let last_old = acks.iter().filter(|a| a.site == old && a.answered <= first_new).map(|a| a.answered).max();
    Ok(last_old.map_or(Duration::ZERO, |t| first_new.saturating_duration_since(t)))
}

/// A write at `site` is refused with `-READONLY`: it is a standby.
async fn check_standby(site: &Site) -> Result<()> {
    let mut resp = Resp::with_db(site.resp_port, PASSIVE_DB);
    let deadline = Instant::now() + WAIT;
    loop {
        let err = match resp.set("probe:standby", "x").await {
            Ok(()) => bail!("{} took a write as a standby", site.id),
            Err(e) => e,
        };
        let kind = err.downcast_ref::<redis::RedisError>().map(redis::RedisError::kind);
        if kind == Some(redis::ErrorKind::ReadOnly) {
            return Ok(());
        }
        // Fenced still, or its clients' connections just closed: not yet a standby.
        ensure!(Instant::now() < deadline, "{} never refused a write as a standby: {err:#}", site.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One failover: `fault` makes `old` lose its lease; `old` fences itself, `new`
/// promotes itself, the Sentinel client follows; `heal` undoes the fault, and `old`
/// turns standby while `new` holds the lease.
async fn failover(
    dep: &Deployment,
    clients: &Clients,
    (old, new): (&str, &str),
    what: &str,
    fault: impl std::future::Future<Output = Result<()>>,
    heal: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let (o, n) = (dep.site(old), dep.site(new));
    let journal = &clients.journal;
    let before = Instant::now();
    wait_acked(journal, old, "w:", before).await?;
    wait_acked(journal, old, "f:", before).await?;
    let at = Instant::now();
    fault.await?;
    let promoted = wait_lease(n, PRIMARY).await?;
    let followed = wait_acked(journal, new, "f:", at).await?;
    wait_acked(journal, new, "w:", at).await?;
    let gap = check_handover(journal, old, new, at)?;
    println!(
        "{what}: {new} promoted {} ms after the fault, the Sentinel client wrote through it after {} ms; \
         no write acknowledged for {} ms between the two primaries",
        promoted.as_millis(),
        followed.as_millis(),
        gap.as_millis()
    );
    // The successor last heard the primary at most a heartbeat interval (and a tick)
    // before the fault, loaded or not: a sooner promotion means it had stopped hearing
    // a healthy primary (as when heartbeats were skipped behind in-flight records).
    ensure!(
        promoted >= Duration::from_millis(FAILOVER_MS - PROMOTION_EARLY_MS_MAX),
        "{new} promoted {promoted:?} after the fault: it had not heard the primary for {:?} before",
        Duration::from_millis(FAILOVER_MS).saturating_sub(promoted)
    );
    heal.await?;
    let standby = wait_lease(o, &["standby"]).await?;
    check_standby(o).await?;
    wait_lease(n, &["held"]).await?;
    println!("{what}: healed, {old} is a standby after {} ms and {new} holds the lease", standby.as_millis());
    Ok(())
}

/// The end of a deployment's scenarios: both sites hold every acknowledged key, and
/// their digests of [`PASSIVE_CACHE`] agree.
async fn check_nothing_lost(dep: &Deployment, journal: &Journal) -> Result<()> {
    let keys: Vec<String> = journal.acks().into_iter().map(|a| a.key).collect();
    let started = Instant::now();
    for site in dep.sites() {
        let mut resp = Resp::with_db(site.resp_port, PASSIVE_DB);
        for chunk in keys.chunks(MGET_CHUNK) {
            loop {
                let values: Vec<Option<String>> = resp.query(redis::cmd("MGET").arg(chunk)).await?;
                let missing: Vec<&String> =
                    chunk.iter().zip(&values).filter(|(_, v)| v.as_deref() != Some("v")).map(|(k, _)| k).collect();
                if missing.is_empty() {
                    break;
                }
                ensure!(
                    started.elapsed() < WAIT,
                    "{} lacks {} acknowledged keys, such as {:?}",
                    site.id,
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    loop {
        let mut digests = BTreeMap::new();
        for site in dep.sites() {
            digests.insert(site.id.clone(), site.admin().digest(PASSIVE_CACHE).await?);
        }
        let first = digests.values().next().expect("two sites");
        if digests.values().all(|d| d == first) {
            break;
        }
        ensure!(started.elapsed() < WAIT, "the sites' digests of {PASSIVE_CACHE} differ: {digests:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused = journal.refusals.lock().unwrap().len();
    println!("{} acknowledged writes all at both sites; {refused} writes refused along the way", keys.len());
    Ok(())
}

/// Both sites up, site-a the primary holding its lease, site-b a standby.
async fn settled(dep: &Deployment) -> Result<()> {
    wait_lease(dep.site("site-a"), &["held"]).await?;
    wait_lease(dep.site("site-b"), &["standby"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_passive_cache_fails_over_on_network_cuts_without_two_primaries() {
    let dep = Deployment::start(&["site-a", "site-b"], options()).await.expect("deployment");
    let result = network_cuts(&dep).await;
    dep.finish(result);
}

async fn network_cuts(dep: &Deployment) -> Result<()> {
    settled(dep).await?;
    let clients = Clients::start(dep);
    let both_ways = failover(
        dep,
        &clients,
        ("site-a", "site-b"),
        "site-a cut off both ways",
        dep.cut_off("site-a"),
        dep.heal("site-a"),
    );
    both_ways.await?;
    let unheard_primary = failover(
        dep,
        &clients,
        ("site-b", "site-a"),
        "site-b (primary) unheard by site-a",
        dep.cut_one_way("site-b", "site-a"),
        dep.heal_one_way("site-b", "site-a"),
    );
    unheard_primary.await?;
    standby_unheard(dep, &clients).await?;
    let journal = clients.stop().await;
    check_nothing_lost(dep, &journal).await
}

/// Scenario 3: the primary (site-a) no longer hears its standby (site-b), which still
/// hears it. site-a fences itself; site-b does not promote; no site takes a write
/// until the heal, after which site-a takes them again.
async fn standby_unheard(dep: &Deployment, clients: &Clients) -> Result<()> {
    let (a, b) = (dep.site("site-a"), dep.site("site-b"));
    let journal = &clients.journal;
    wait_acked(journal, "site-a", "w:", Instant::now()).await?;
    let at = Instant::now();
    dep.cut_one_way("site-b", "site-a").await?;
    let fenced = wait_lease(a, &["fenced"]).await?;
    let fenced_at = Instant::now();
    // All through the successor's timer and beyond, site-b stays a standby.
    while fenced_at.elapsed() < Duration::from_millis(FAILOVER_MS + 2_000) {
        let state = lease(b).await?;
        ensure!(state == "standby", "site-b's lease went {state} while it still heard site-a");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let silent_until = Instant::now();
    dep.heal_one_way("site-b", "site-a").await?;
    let healed = Instant::now();
    let back = wait_acked(journal, "site-a", "w:", healed).await?;
    wait_lease(a, &["held"]).await?;
    let acks = journal.acks();
    let during: Vec<&Ack> = acks.iter().filter(|x| x.sent > fenced_at && x.answered < silent_until).collect();
    ensure!(during.is_empty(), "writes acknowledged while site-a was fenced and site-b a standby: {during:?}");
    ensure!(journal.acks_since("site-b", at).is_empty(), "site-b acknowledged writes as a standby");
    println!(
        "site-b (standby) unheard by site-a: site-a fenced {} ms after the cut, site-b never promoted, \
         no site took a write until the heal; site-a took writes again {} ms after it",
        (fenced_at - at).as_millis().max(fenced.as_millis()),
        back.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_passive_cache_fails_over_when_only_part_of_the_primary_fails() {
    let dep = Deployment::start(&["site-a", "site-b"], options()).await.expect("deployment");
    let result = partial_failures(&dep).await;
    dep.finish(result);
}

async fn partial_failures(dep: &Deployment) -> Result<()> {
    settled(dep).await?;
    let clients = Clients::start(dep);
    let (a, b) = (dep.site("site-a"), dep.site("site-b"));
    let broker =
        failover(dep, &clients, ("site-a", "site-b"), "site-a's broker stopped", a.kill_broker(), a.restart_broker());
    broker.await?;
    let paused = failover(dep, &clients, ("site-b", "site-a"), "site-b's node SIGSTOPped", b.pause_node(), async {
        // Past the margin: resumed only once site-a has been promoted.
        wait_lease(a, PRIMARY).await?;
        b.resume_node().await
    });
    paused.await?;
    let journal = clients.stop().await;
    check_nothing_lost(dep, &journal).await
}
