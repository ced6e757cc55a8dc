//! Automatic failover of active-passive caches (`[failover] mode = "lease"`), as a
//! lease the successor grants the primary. Both decisions hang on the same
//! heartbeats, each timed on its own node's monotonic clock:
//!
//! - **The primary** records when it sends each heartbeat ([`LeaseBook`]). The
//!   successor's heartbeats report the primary's watermark it has applied, which is
//!   the watermark of one heartbeat the primary sent: the lease runs until that
//!   heartbeat's send time plus `self_fence_after_ms`. Every write is checked against
//!   it when it starts and again before its reply (`Engine::lease_holds`); past it
//!   the primary is *fenced*: writes get `-READONLY` and its Sentinel flags it down.
//!   A fenced primary whose lease comes back (the link healed before any promotion)
//!   takes writes again after holding it for `unfence_hold_down_ms`. A primary that
//!   starts is fenced until its successor acknowledges a heartbeat it sent since.
//! - **The successor** promotes itself `failover_after_ms` after it last heard from
//!   the primary (entries or heartbeats; a node that starts counts from its start).
//!   Since `failover_after_ms` exceeds `self_fence_after_ms` by two heartbeat
//!   intervals, the primary's lease — which ran from a send time before the
//!   successor heard that heartbeat — has lapsed by then, whichever way the link
//!   broke (the primary's broker down while it runs, a one-way cut, a stalled
//!   mirror): no two sites take writes at once.
//! - **A promoted primary** takes writes unleased until its successor (the old
//!   primary, fenced, or down) acknowledges one of its heartbeats; from then on it
//!   holds the lease like any primary. The old primary learns the new epoch from the
//!   new primary's topic before it can count any acknowledgement of it, and turns
//!   standby.
//!
//! - **With a witness** (`failover.witness`), the lease is a majority of three:
//!   the witness's acknowledgements renew it too, and the successor, once the
//!   primary has been silent for `failover_after_ms`, *runs for primary* and
//!   promotes itself only when the witness votes for that candidacy, which the
//!   witness does only once it too has not heard the primary that long. A site that
//!   runs or votes says so in its heartbeats' claims (`xsite_schemas::claims`), and
//!   a claim with either flag renews no lease: each flag is set only after every
//!   lease its site's earlier acknowledgements granted has lapsed, and a promotion
//!   needs both. The vote is kept in sled and withdrawn only when the successor's
//!   newest claims show that candidacy ended at the same epoch, or a newer epoch is
//!   known.
//!
//! What remains: the guarantee holds while neither node is paused (fsync stall, CPU
//! starvation, SIGSTOP) for longer than the margin between the two timeouts, and
//! while monotonic clocks advance at about the same rate. With two sites (no
//! witness) there is no quorum: losing the successor, or the link to it, stops
//! writes at the primary.
//! Writes the primary acknowledged that the successor had not applied when it
//! promoted stay only at the old primary until it rejoins; they then reach every
//! site and lose to the new epoch's writes on the same keys.

use super::Replication;
use crate::config::{Config, FailoverMode, Topology};
use crate::engine::Engine;
use crate::topology::Roles;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xsite_schemas::claims::{encode_claims, Claim, Claims, Flag, KAFKA_HEADER_FAILOVER};
use xsite_schemas::{CacheName, Hlc, SiteId};

/// Heartbeats remembered with their send times (at one per second, minutes).
const SENT_MAX: usize = 512;
/// How often the lease and the successor's timer are checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// When this node sent each of its recent heartbeats, by the own watermark it carried.
#[derive(Debug, Default)]
pub struct LeaseBook {
    sent: Mutex<VecDeque<(Hlc, Instant)>>,
}

impl LeaseBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Hlc, Instant)>> {
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A heartbeat carrying `watermark` is being sent now.
    pub fn sent(&self, watermark: Hlc, at: Instant) {
        let mut sent = self.lock();
        if sent.back().is_some_and(|(w, _)| *w >= watermark) {
            return; // the same watermark again: its first send time counts
        }
        if sent.len() == SENT_MAX {
            sent.pop_front();
        }
        sent.push_back((watermark, at));
    }

    /// When the latest heartbeat at or below `acked` was sent (`None`: none this
    /// node remembers sending).
    pub fn sent_at(&self, acked: Hlc) -> Option<Instant> {
        self.lock().iter().rev().find(|(w, _)| *w <= acked).map(|(_, t)| *t)
    }

    /// Forgets every heartbeat sent so far (at a promotion: only acknowledgements
    /// of what the new primary sends count).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// What the lease of one cache is, for status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// This site is not the primary.
    Standby,
    /// The primary started: fenced until its successor first acknowledges it.
    Starting,
    /// Promoted here, waiting for the successor's first acknowledgement.
    Unleased,
    Held,
    Fenced,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheLease {
    pub state: LeaseState,
    pub successor: Option<SiteId>,
    /// The witness of the lease (`failover.witness`, unless primary or successor).
    pub witness: Option<SiteId>,
    /// This successor runs for primary: since when (Unix ms, its candidacy's number).
    pub candidacy: Option<u64>,
    /// This witness votes for a candidacy: `<site>:<number>`.
    pub vote: Option<String>,
    pub reason: Option<String>,
    /// Until when the lease holds, in ms from now (held only).
    pub remaining_ms: Option<u64>,
}

#[derive(Debug)]
struct Lease {
    state: LeaseState,
    /// When the lease last came back while fenced (for the hold-down).
    back_since: Option<Instant>,
    /// The successor: when this node last saw the primary's `last_heard_ms` move.
    heard_at: Instant,
    heard_ms: u64,
    reason: Option<String>,
    remaining_ms: Option<u64>,
    successor: Option<SiteId>,
    witness: Option<SiteId>,
    /// The successor (with a witness): its candidacy while it runs for primary, and
    /// the number of its latest one.
    candidacy: Option<u64>,
    last_candidacy: u64,
    /// The witness: the candidacy it votes for (kept in sled).
    vote: Option<Vote>,
}

/// A witness's vote: for candidacy `candidacy` of `candidate`, cast at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vote {
    candidate: SiteId,
    candidacy: u64,
    epoch: u64,
}

impl Vote {
    fn encode(&self) -> String {
        format!("{}:{}:{}", self.candidate, self.candidacy, self.epoch)
    }

    fn decode(text: &[u8]) -> Option<Vote> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.split(':');
        let candidate = SiteId::new(parts.next()?).ok()?;
        let (candidacy, epoch) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        Some(Vote { candidate, candidacy, epoch })
    }
}

impl Lease {
    /// What this node's heartbeats say of the cache beyond its epoch and primary.
    fn flag(&self) -> Option<Flag> {
        match (&self.candidacy, &self.vote) {
            (Some(k), _) => Some(Flag::Candidate(*k)),
            (None, Some(v)) => Some(Flag::Vote { candidate: v.candidate.clone(), candidacy: v.candidacy }),
            (None, None) => None,
        }
    }
}

/// The failover state of this node's active-passive caches.
pub struct Failover {
    config: Config,
    engine: Arc<Engine>,
    roles: Arc<Roles>,
    repl: Arc<Replication>,
    leases: Mutex<BTreeMap<CacheName, Lease>>,
    /// The witness's votes, by cache: a vote outlives a restart, or a restarted
    /// witness could renew a primary's lease that a promotion it voted for ended.
    votes: sled::Tree,
}

impl Failover {
    pub fn new(
        config: &Config,
        engine: Arc<Engine>,
        roles: Arc<Roles>,
        repl: Arc<Replication>,
        db: &sled::Db,
    ) -> Result<Failover, sled::Error> {
        let now = Instant::now();
        let votes = db.open_tree("failover_votes")?;
        let leases = config
            .caches
            .iter()
            .filter(|c| c.topology == Topology::ActivePassive)
            .map(|c| {
                let lease = Lease {
                    state: LeaseState::Starting,
                    back_since: None,
                    heard_at: now,
                    heard_ms: 0,
                    reason: Some("started: waiting for the successor's acknowledgement".into()),
                    remaining_ms: None,
                    successor: None,
                    witness: None,
                    candidacy: None,
                    last_candidacy: 0,
                    vote: votes.get(c.name.as_str()).ok().flatten().and_then(|v| Vote::decode(&v)),
                };
                (c.name.clone(), lease)
            })
            .collect();
        Ok(Failover { config: config.clone(), engine, roles, repl, leases: Mutex::new(leases), votes })
    }

    /// Keeps the witness's vote for `cache` (`None`: none) durably.
    fn save_vote(&self, cache: &CacheName, vote: Option<&Vote>) {
        let saved = match vote {
            Some(v) => self.votes.insert(cache.as_str(), v.encode().as_bytes()).map(|_| ()),
            None => self.votes.remove(cache.as_str()).map(|_| ()),
        };
        if let Err(err) = saved.and_then(|()| self.votes.flush().map(|_| ())) {
            tracing::error!(cache = %cache, error = %err, "could not keep the witness's vote in sled");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<CacheName, Lease>> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every active-passive cache's lease, for status.
    pub fn status(&self) -> BTreeMap<String, CacheLease> {
        self.lock()
            .iter()
            .map(|(c, l)| {
                let lease = CacheLease {
                    state: l.state.clone(),
                    successor: l.successor.clone(),
                    witness: l.witness.clone(),
                    candidacy: l.candidacy,
                    vote: l.vote.as_ref().map(|v| format!("{}:{}", v.candidate, v.candidacy)),
                    reason: l.reason.clone(),
                    remaining_ms: l.remaining_ms,
                };
                (c.to_string(), lease)
            })
            .collect()
    }

    /// This node was just promoted for `cache` (by itself or an operator): it takes
    /// writes unleased until its successor acknowledges it.
    pub fn promoted(&self, cache: &CacheName) {
        self.repl.lease_book.clear();
        if let Some(l) = self.lock().get_mut(cache) {
            l.state = LeaseState::Unleased;
            l.reason = Some("promoted: takes writes until its successor acknowledges it, then holds a lease".into());
            l.back_since = None;
        }
        self.engine.set_lease(cache, None);
    }

    /// One check of every cache: the primary's lease, the successor's timer (and,
    /// with a witness, its candidacy), the witness's vote; then what this node's
    /// heartbeats claim of each cache.
    pub async fn check(&self, now: Instant) {
        let f = &self.config.failover;
        let local = self.config.site.clone();
        let mut promote = Vec::new();
        let mut claims = Claims::new();
        {
            let mut leases = self.lock();
            for (name, lease) in leases.iter_mut() {
                let Some(cache) = self.engine.cache(name) else { continue };
                let epoch = cache.epoch();
                let Some(primary) = cache.primary() else {
                    lease.state = LeaseState::Standby;
                    lease.reason = Some("no primary known".into());
                    claims.insert(name.clone(), Claim { epoch, primary: None, flag: lease.flag() });
                    continue;
                };
                let successor = self.config.successor_of(&primary);
                let witness = self.config.witness_for(&primary, successor.as_ref());
                lease.successor = successor.clone();
                lease.witness = witness.clone();
                if primary == local {
                    lease.candidacy = None;
                    self.primary_check(name, epoch, lease, now, f);
                } else {
                    lease.state = LeaseState::Standby;
                    lease.remaining_ms = None;
                    let heard = self
                        .repl
                        .consumer_stats
                        .get(&primary)
                        .map_or(0, |s| s.last_heard_ms.load(std::sync::atomic::Ordering::Relaxed));
                    if heard != lease.heard_ms {
                        lease.heard_ms = heard;
                        lease.heard_at = now;
                    }
                    let silent = now.saturating_duration_since(lease.heard_at);
                    let silent_long = silent >= Duration::from_millis(f.failover_after_ms);
                    lease.reason = Some(format!("primary {primary} last heard {} ms ago", silent.as_millis()));
                    if successor.as_ref() == Some(&local) {
                        let promotes = match &witness {
                            None => silent_long,
                            Some(w) => self.run_for_primary(name, lease, (epoch, &primary), w, silent_long),
                        };
                        if promotes {
                            promote.push((name.clone(), primary.clone(), silent));
                        }
                    } else {
                        lease.candidacy = None;
                    }
                    if witness.as_ref() == Some(&local) {
                        self.witness_check(name, lease, (epoch, &primary), successor.as_ref(), silent_long);
                    }
                }
                if lease.vote.as_ref().is_some_and(|v| epoch > v.epoch) {
                    tracing::info!(cache = %name, epoch, "the witness's vote is over: a newer epoch is known");
                    lease.vote = None;
                    self.save_vote(name, None);
                }
                claims.insert(name.clone(), Claim { epoch, primary: Some(primary), flag: lease.flag() });
            }
        }
        self.repl.beat_extras.set(KAFKA_HEADER_FAILOVER, (!claims.is_empty()).then(|| encode_claims(&claims)));
        for (cache, primary, silent) in promote {
            tracing::warn!(cache = %cache, primary = %primary, silent_ms = silent.as_millis() as u64, failover_after_ms = f.failover_after_ms, "the primary has been silent too long: this successor promotes itself");
            match self.roles.promote(&cache) {
                Ok(epoch) => {
                    self.promoted(&cache);
                    if let Err(err) = self.engine.announce_epoch(&cache).await {
                        tracing::error!(cache = %cache, error = %err, "announcing the new epoch failed; the next write or heartbeat carries it");
                    }
                    tracing::warn!(cache = %cache, epoch, "promoted: this site is the primary");
                }
                Err(err) => tracing::error!(cache = %cache, error = %err, "promotion failed"),
            }
        }
    }

    /// What `site`'s newest heartbeat claims of `cache`.
    fn claim_of(&self, site: &SiteId, cache: &CacheName) -> Option<Claim> {
        self.repl.consumer_stats.get(site)?.claims()?.remove(cache)
    }

    /// The successor, with a witness: once the primary has been silent for
    /// `failover_after_ms` it runs for primary (its heartbeats then renew no lease)
    /// and promotes itself once the witness votes for this candidacy; hearing the
    /// primary again first, it ends the candidacy. Whether to promote now.
    fn run_for_primary(
        &self,
        name: &CacheName,
        lease: &mut Lease,
        (epoch, primary): (u64, &SiteId),
        witness: &SiteId,
        silent_long: bool,
    ) -> bool {
        if !silent_long {
            if let Some(k) = lease.candidacy.take() {
                tracing::info!(cache = %name, primary = %primary, candidacy = k, "the primary is heard again: this successor ends its candidacy");
            }
            return false;
        }
        let last = lease.last_candidacy;
        let k = *lease.candidacy.get_or_insert_with(|| {
            // A number no earlier candidacy of this node had.
            let k = xsite_schemas::hlc::wall_clock_ms().max(last + 1);
            tracing::warn!(cache = %name, primary = %primary, witness = %witness, candidacy = k, "the primary has been silent too long: this successor runs for primary and waits for the witness's vote");
            k
        });
        let local = &self.config.site;
        let voted = self.claim_of(witness, name).is_some_and(|c| {
            c.epoch == epoch
                && c.primary.as_ref() == Some(primary)
                && c.flag == Some(Flag::Vote { candidate: local.clone(), candidacy: k })
        });
        lease.last_candidacy = k;
        lease.reason = Some(match voted {
            true => format!("the witness {witness} votes for this candidacy: promoting"),
            false => format!("running for primary since {k} (Unix ms): waiting for the vote of the witness {witness}"),
        });
        voted
    }

    /// The witness: once the primary has been silent for `failover_after_ms` here
    /// too, it votes for the successor's candidacy (its heartbeats then renew no
    /// lease), and keeps the vote until the successor ends that candidacy or a newer
    /// epoch is known.
    fn witness_check(
        &self,
        name: &CacheName,
        lease: &mut Lease,
        (epoch, primary): (u64, &SiteId),
        successor: Option<&SiteId>,
        silent_long: bool,
    ) {
        let Some(successor) = successor else { return };
        let theirs = self.claim_of(successor, name).filter(|c| c.epoch == epoch && c.primary.as_ref() == Some(primary));
        let running = match theirs.as_ref().and_then(|c| c.flag.clone()) {
            Some(Flag::Candidate(k)) => Some(k),
            _ => None,
        };
        if let Some(v) = &lease.vote {
            // Its newest heartbeat, at the epoch voted at and naming the same primary,
            // no longer runs that candidacy: it will never promote on this vote.
            let ended =
                v.epoch == epoch && theirs.as_ref().is_some_and(|c| c.flag != Some(Flag::Candidate(v.candidacy)));
            if ended {
                tracing::info!(cache = %name, candidate = %v.candidate, candidacy = v.candidacy, "the successor ended the candidacy this witness voted for: the vote is withdrawn");
                lease.vote = None;
                self.save_vote(name, None);
            }
        }
        if lease.vote.is_none() && silent_long {
            if let Some(k) = running {
                let vote = Vote { candidate: successor.clone(), candidacy: k, epoch };
                tracing::warn!(cache = %name, primary = %primary, candidate = %successor, candidacy = k, "the primary has been silent too long here too: this witness votes for the successor");
                self.save_vote(name, Some(&vote));
                lease.vote = Some(vote);
            }
        }
        if let Some(v) = &lease.vote {
            lease.reason = Some(format!("witness: votes for candidacy {} of {}", v.candidacy, v.candidate));
        }
    }

    /// The highest heartbeat of this primary `site` acknowledged at `epoch` of
    /// `cache`: from a site that sends claims, only while it named this site the
    /// primary at that epoch and neither ran for primary nor voted; from an older
    /// build, as its heartbeats report.
    fn acknowledged_by(&self, site: &SiteId, cache: &CacheName, epoch: u64) -> Option<Hlc> {
        let stats = self.repl.consumer_stats.get(site)?;
        match stats.claims() {
            Some(_) => stats.acknowledged(cache, epoch),
            None => stats.reported_watermarks().get(&self.config.site).copied(),
        }
    }

    fn primary_check(
        &self,
        name: &CacheName,
        epoch: u64,
        lease: &mut Lease,
        now: Instant,
        f: &crate::config::FailoverConfig,
    ) {
        let successor = lease.successor.clone();
        let successor = successor.as_ref();
        // The lease is renewed by the successor's acknowledgement or the witness's.
        let acked = lease
            .successor
            .iter()
            .chain(lease.witness.iter())
            .filter_map(|s| self.acknowledged_by(s, name, epoch))
            .max();
        let until = acked
            .and_then(|w| self.repl.lease_book.sent_at(w))
            .map(|sent| sent + Duration::from_millis(f.self_fence_after_ms));
        let valid = until.is_some_and(|u| now < u);
        lease.remaining_ms = until.filter(|_| valid).map(|u| u.saturating_duration_since(now).as_millis() as u64);
        let successor_name = match (successor, &lease.witness) {
            (Some(s), Some(w)) => format!("{s} (or the witness {w})"),
            (Some(s), None) => s.to_string(),
            (None, _) => "-".to_string(),
        };
        match lease.state {
            LeaseState::Unleased if valid => {
                lease.state = LeaseState::Held;
                lease.reason = None;
                tracing::info!(cache = %name, successor = %successor_name, "the successor acknowledged this primary: it holds a lease from now on");
            }
            LeaseState::Unleased => {}
            LeaseState::Starting if valid => {
                lease.state = LeaseState::Held;
                lease.reason = None;
                tracing::info!(cache = %name, successor = %successor_name, "the successor acknowledged this primary: it takes writes");
            }
            LeaseState::Starting => {}
            LeaseState::Held | LeaseState::Standby if valid => {
                lease.state = LeaseState::Held;
                lease.reason = None;
            }
            LeaseState::Held | LeaseState::Standby => {
                lease.state = LeaseState::Fenced;
                lease.back_since = None;
                lease.reason = Some(format!(
                    "{successor_name} has acknowledged no heartbeat sent in the last {} ms",
                    f.self_fence_after_ms
                ));
                tracing::error!(cache = %name, successor = %successor_name, self_fence_after_ms = f.self_fence_after_ms, "self-fenced: this primary refuses writes until its successor acknowledges it again");
                self.engine.fence(name);
                self.engine.close_clients(name, "self-fenced");
            }
            LeaseState::Fenced if valid => {
                let since = *lease.back_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= Duration::from_millis(f.unfence_hold_down_ms) {
                    lease.state = LeaseState::Held;
                    lease.reason = None;
                    lease.back_since = None;
                    tracing::warn!(cache = %name, successor = %successor_name, "unfenced: the successor acknowledges this primary again");
                } else {
                    lease.reason = Some("the lease is back; holding it before taking writes".into());
                }
            }
            LeaseState::Fenced => lease.back_since = None,
        }
        match (&lease.state, until) {
            (LeaseState::Unleased, _) => self.engine.set_lease(name, None),
            (LeaseState::Held, Some(until)) => self.engine.set_lease(name, Some(until)),
            _ => self.engine.fence(name),
        }
    }

    /// Checks every [`CHECK_INTERVAL`] until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if self.config.failover.mode != FailoverMode::Lease {
            return;
        }
        loop {
            self.check(Instant::now()).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
    }
}
