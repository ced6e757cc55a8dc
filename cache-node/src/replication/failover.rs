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
//! What remains: the guarantee holds while neither node is paused (fsync stall, CPU
//! starvation, SIGSTOP) for longer than the margin between the two timeouts, and
//! while monotonic clocks advance at about the same rate. With two sites there is no
//! quorum: losing the successor, or the link to it, stops writes at the primary.
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
}

/// The failover state of this node's active-passive caches.
pub struct Failover {
    config: Config,
    engine: Arc<Engine>,
    roles: Arc<Roles>,
    repl: Arc<Replication>,
    leases: Mutex<BTreeMap<CacheName, Lease>>,
}

impl Failover {
    pub fn new(config: &Config, engine: Arc<Engine>, roles: Arc<Roles>, repl: Arc<Replication>) -> Failover {
        let now = Instant::now();
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
                };
                (c.name.clone(), lease)
            })
            .collect();
        Failover { config: config.clone(), engine, roles, repl, leases: Mutex::new(leases) }
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

    /// One check of every cache: the primary's lease, the successor's timer.
    pub async fn check(&self, now: Instant) {
        let f = &self.config.failover;
        let local = self.config.site.clone();
        let mut promote = Vec::new();
        {
            let mut leases = self.lock();
            for (name, lease) in leases.iter_mut() {
                let Some(cache) = self.engine.cache(name) else { continue };
                let Some(primary) = cache.primary() else {
                    lease.state = LeaseState::Standby;
                    lease.reason = Some("no primary known".into());
                    continue;
                };
                let successor = self.config.successor_of(&primary);
                lease.successor = successor.clone();
                if primary == local {
                    self.primary_check(name, lease, successor.as_ref(), now, f);
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
                    lease.reason = Some(format!("primary {primary} last heard {} ms ago", silent.as_millis()));
                    if successor.as_ref() == Some(&local) && silent >= Duration::from_millis(f.failover_after_ms) {
                        promote.push((name.clone(), primary.clone(), silent));
                    }
                }
            }
        }
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

    fn primary_check(
        &self,
        name: &CacheName,
        lease: &mut Lease,
        successor: Option<&SiteId>,
        now: Instant,
        f: &crate::config::FailoverConfig,
    ) {
        let local = &self.config.site;
        let acked = successor
            .and_then(|s| self.repl.consumer_stats.get(s))
            .and_then(|s| s.reported_watermarks().get(local).copied());
        let until = acked
            .and_then(|w| self.repl.lease_book.sent_at(w))
            .map(|sent| sent + Duration::from_millis(f.self_fence_after_ms));
        let valid = until.is_some_and(|u| now < u);
        lease.remaining_ms = until.filter(|_| valid).map(|u| u.saturating_duration_since(now).as_millis() as u64);
        let successor_name = successor.map_or("-".to_string(), |s| s.to_string());
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
