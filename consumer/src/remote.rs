//! The state of a remote site as this site sees it, and the gaps that force a state
//! transfer.
//!
//! - `online`: consumed and caught up (every partition up to the end it had when
//!   consuming started or resumed);
//! - `catching-up`: consumed, not caught up yet (after a start, a pause, or a state
//!   transfer);
//! - `offline`: not consumed (taken offline by an operator or by the node's health
//!   checks, see `xsite_node::replication::health`; or not started);
//! - `needs-state-transfer`: this site cannot have everything the remote wrote —
//!   entries were removed by retention before they were applied (a saved offset
//!   below the partition's start, a jump in offsets while consuming), the topic was
//!   re-created (its head marker changed), or the site was silent longer than
//!   `offline_max_ms`. While a gap is open this site's watermarks for that remote
//!   stand still, so no site collects a tombstone on the strength of them; a state
//!   transfer (the remote pushes its state, `POST /sites/{site}/state-transfer`)
//!   closes it once this site has consumed up to where the push ended.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::SiteId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteState {
    Online,
    CatchingUp,
    Offline,
    NeedsStateTransfer,
}

impl RemoteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteState::Online => "online",
            RemoteState::CatchingUp => "catching-up",
            RemoteState::Offline => "offline",
            RemoteState::NeedsStateTransfer => "needs-state-transfer",
        }
    }

    /// A number for the `xsite_remote_state` gauge: 0 online, 1 catching-up,
    /// 2 offline, 3 needs-state-transfer.
    pub fn code(self) -> i64 {
        match self {
            RemoteState::Online => 0,
            RemoteState::CatchingUp => 1,
            RemoteState::Offline => 2,
            RemoteState::NeedsStateTransfer => 3,
        }
    }
}

/// What status reports of a remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteStatus {
    pub state: RemoteState,
    /// Why it is in this state: for `needs-state-transfer` what gap, for `offline`
    /// who took it offline and why, for `catching-up` what started it.
    pub reason: Option<String>,
    /// Unix ms when it entered this state.
    pub since_ms: u64,
}

/// The state machine of one remote site. Every change of state (or of its reason)
/// is logged once, with the reason: info for online and catching-up, warn for
/// offline, error for needs-state-transfer.
#[derive(Debug)]
pub struct RemoteTracker {
    /// The remote site, for the log lines (none in tests that do not name it).
    site: Option<SiteId>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    status: RemoteStatus,
    /// Per partition, the offset to reach (last offset, inclusive) before the
    /// remote counts as caught up (catching-up) or transferred (needs-state-transfer
    /// with a transfer under way).
    targets: Option<BTreeMap<i32, i64>>,
}

impl Default for RemoteTracker {
    fn default() -> Self {
        RemoteTracker {
            site: None,
            inner: Mutex::new(Inner {
                status: RemoteStatus { state: RemoteState::Offline, reason: None, since_ms: wall_clock_ms() },
                targets: None,
            }),
        }
    }
}

impl RemoteTracker {
    /// The tracker of `site`, offline (not consumed yet).
    pub fn new(site: SiteId) -> RemoteTracker {
        RemoteTracker { site: Some(site), ..RemoteTracker::default() }
    }

    /// The remote site (none in tests that do not name it).
    pub fn site(&self) -> Option<&SiteId> {
        self.site.as_ref()
    }

    pub fn status(&self) -> RemoteStatus {
        self.lock().status.clone()
    }

    pub fn state(&self) -> RemoteState {
        self.lock().status.state
    }

    /// A gap is open: watermarks of this remote must not move.
    pub fn gap_open(&self) -> bool {
        self.state() == RemoteState::NeedsStateTransfer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves to `state` for `reason` (kept in the status) and logs the change;
    /// `why` is what the log says when there is no reason to keep.
    fn set(&self, inner: &mut Inner, state: RemoteState, reason: Option<String>, why: &str) {
        if inner.status.state == state && inner.status.reason == reason {
            return;
        }
        let from = inner.status.state.as_str();
        inner.status = RemoteStatus { state, reason, since_ms: wall_clock_ms() };
        let remote = self.site.as_ref().map_or("?", SiteId::as_str);
        let reason = inner.status.reason.as_deref().unwrap_or(why);
        match state {
            RemoteState::Online => {
                tracing::info!(remote = %remote, from = %from, reason = %reason, "remote site online")
            }
            RemoteState::CatchingUp => {
                tracing::info!(remote = %remote, from = %from, reason = %reason, "remote site catching up")
            }
            RemoteState::Offline => {
                tracing::warn!(remote = %remote, from = %from, reason = %reason, "remote site offline")
            }
            RemoteState::NeedsStateTransfer => tracing::error!(
                remote = %remote,
                from = %from,
                reason = %reason,
                "remote site needs a state transfer: some of its entries cannot be applied here"
            ),
        }
    }

    /// Consuming is about to start again, for `reason` (an operator, the site
    /// reachable again, the node starting). A gap stays open.
    pub fn resuming(&self, reason: &str) {
        let mut inner = self.lock();
        if inner.status.state == RemoteState::NeedsStateTransfer {
            return;
        }
        inner.targets = None;
        self.set(&mut inner, RemoteState::CatchingUp, Some(reason.to_string()), reason);
    }

    /// Consuming (re)started; `ends` are the partitions' last offsets now. A gap
    /// stays open; the reason it resumed for is kept.
    pub fn started(&self, ends: BTreeMap<i32, i64>) {
        let mut inner = self.lock();
        if inner.status.state == RemoteState::NeedsStateTransfer {
            return;
        }
        inner.targets = Some(ends);
        if inner.status.state != RemoteState::CatchingUp {
            self.set(&mut inner, RemoteState::CatchingUp, Some("consuming started".into()), "consuming started");
        }
    }

    /// Consuming stopped (taken offline) for `reason`. A gap stays open.
    pub fn stopped(&self, reason: &str) {
        let mut inner = self.lock();
        if inner.status.state != RemoteState::NeedsStateTransfer {
            inner.targets = None;
            self.set(&mut inner, RemoteState::Offline, Some(reason.to_string()), reason);
        }
    }

    /// While offline: says why it stays so (e.g. reachable again, waiting for an
    /// operator). Nothing changes in any other state.
    pub fn offline_because(&self, reason: &str) {
        let mut inner = self.lock();
        if inner.status.state == RemoteState::Offline {
            self.set(&mut inner, RemoteState::Offline, Some(reason.to_string()), reason);
        }
    }

    /// Entries of the remote cannot all be here: a state transfer is needed. The
    /// first reason is kept.
    pub fn gap(&self, reason: String) {
        let mut inner = self.lock();
        if inner.status.state == RemoteState::NeedsStateTransfer {
            return;
        }
        inner.targets = None;
        self.set(&mut inner, RemoteState::NeedsStateTransfer, Some(reason), "");
    }

    /// The remote pushed its state; once this site has applied up to `ends`, the gap
    /// is closed.
    pub fn transferring(&self, ends: BTreeMap<i32, i64>) {
        let mut inner = self.lock();
        inner.targets = Some(ends);
        if inner.status.state != RemoteState::NeedsStateTransfer {
            self.set(&mut inner, RemoteState::CatchingUp, Some("state transfer".into()), "state transfer");
        }
    }

    /// This site has applied (durably) up to `applied` per partition.
    pub fn progress(&self, applied: &BTreeMap<i32, i64>) {
        let mut inner = self.lock();
        let Some(targets) = &inner.targets else { return };
        let reached = targets.iter().all(|(p, end)| *end < 0 || applied.get(p).is_some_and(|a| a >= end));
        if !reached {
            return;
        }
        let why = if inner.status.state == RemoteState::NeedsStateTransfer {
            "state transfer applied: the gap is closed"
        } else {
            "caught up"
        };
        inner.targets = None;
        self.set(&mut inner, RemoteState::Online, None, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_stays_open_until_a_transfer_is_applied() {
        let t = RemoteTracker::default();
        assert_eq!(t.state(), RemoteState::Offline);
        t.started(BTreeMap::from([(0, 10), (1, -1)]));
        assert_eq!(t.state(), RemoteState::CatchingUp);
        t.progress(&BTreeMap::from([(0, 9)]));
        assert_eq!(t.state(), RemoteState::CatchingUp);
        t.progress(&BTreeMap::from([(0, 10)]));
        assert_eq!(t.state(), RemoteState::Online);
        t.gap("entries removed by retention".into());
        assert!(t.gap_open());
        t.stopped("taken offline by an operator");
        assert_eq!(t.status().reason.as_deref(), Some("entries removed by retention"), "a gap keeps its reason");
        t.started(BTreeMap::from([(0, 20)]));
        t.progress(&BTreeMap::from([(0, 20)]));
        assert_eq!(t.state(), RemoteState::NeedsStateTransfer, "only a transfer closes a gap");
        assert_eq!(t.status().reason.as_deref(), Some("entries removed by retention"));
        t.transferring(BTreeMap::from([(0, 30)]));
        t.progress(&BTreeMap::from([(0, 29)]));
        assert!(t.gap_open());
        t.progress(&BTreeMap::from([(0, 30)]));
        assert_eq!(t.state(), RemoteState::Online);
    }

    #[test]
    fn every_state_keeps_the_reason_it_was_entered_for() {
        let t = RemoteTracker::new(SiteId::new("site-b").unwrap());
        t.resuming("node started");
        t.started(BTreeMap::from([(0, 5)]));
        assert_eq!(t.status().reason.as_deref(), Some("node started"), "started keeps why it resumed");
        t.progress(&BTreeMap::from([(0, 5)]));
        assert_eq!((t.state(), t.status().reason), (RemoteState::Online, None));
        t.stopped("taken offline automatically: 3 consecutive failed checks");
        assert_eq!(t.state(), RemoteState::Offline);
        t.offline_because("reachable again; waiting for an operator");
        assert_eq!(t.status().reason.as_deref(), Some("reachable again; waiting for an operator"));
        t.resuming("brought online by an operator");
        t.offline_because("ignored unless offline");
        assert_eq!(t.status().reason.as_deref(), Some("brought online by an operator"));
        assert_eq!(t.state(), RemoteState::CatchingUp);
    }
}
