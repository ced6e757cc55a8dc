//! The state of a remote site as this site sees it, and the gaps that force a state
//! transfer.
//!
//! - `online`: consumed and caught up (every partition up to the end it had when
//!   consuming started or resumed);
//! - `catching-up`: consumed, not caught up yet (after a start, a pause, or a state
//!   transfer);
//! - `offline`: not consumed (taken offline by an operator, or not started);
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
    /// Why it is in this state (for `needs-state-transfer`: what gap).
    pub reason: Option<String>,
    /// Unix ms when it entered this state.
    pub since_ms: u64,
}

/// The state machine of one remote site.
#[derive(Debug)]
pub struct RemoteTracker {
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
            inner: Mutex::new(Inner {
                status: RemoteStatus { state: RemoteState::Offline, reason: None, since_ms: wall_clock_ms() },
                targets: None,
            }),
        }
    }
}

impl RemoteTracker {
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

    fn set(inner: &mut Inner, state: RemoteState, reason: Option<String>) {
        if inner.status.state != state || inner.status.reason != reason {
            inner.status = RemoteStatus { state, reason, since_ms: wall_clock_ms() };
        }
    }

    /// Consuming (re)started; `ends` are the partitions' last offsets now. A gap
    /// stays open.
    pub fn started(&self, ends: BTreeMap<i32, i64>) {
        let mut inner = self.lock();
        if inner.status.state == RemoteState::NeedsStateTransfer {
            return;
        }
        inner.targets = Some(ends);
        Self::set(&mut inner, RemoteState::CatchingUp, None);
    }

    /// Consuming stopped (taken offline). A gap stays open.
    pub fn stopped(&self) {
        let mut inner = self.lock();
        if inner.status.state != RemoteState::NeedsStateTransfer {
            inner.targets = None;
            Self::set(&mut inner, RemoteState::Offline, None);
        }
    }

    /// Entries of the remote cannot all be here: a state transfer is needed. The
    /// first reason is kept.
    pub fn gap(&self, reason: String) {
        let mut inner = self.lock();
        if inner.status.state == RemoteState::NeedsStateTransfer {
            return;
        }
        tracing::error!(reason = %reason, "remote site needs a state transfer: some of its entries cannot be applied here");
        inner.targets = None;
        Self::set(&mut inner, RemoteState::NeedsStateTransfer, Some(reason));
    }

    /// The remote pushed its state; once this site has applied up to `ends`, the gap
    /// is closed.
    pub fn transferring(&self, ends: BTreeMap<i32, i64>) {
        let mut inner = self.lock();
        inner.targets = Some(ends);
        if inner.status.state != RemoteState::NeedsStateTransfer {
            Self::set(&mut inner, RemoteState::CatchingUp, Some("state transfer".into()));
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
        let was = inner.status.state;
        inner.targets = None;
        Self::set(&mut inner, RemoteState::Online, None);
        if was == RemoteState::NeedsStateTransfer {
            tracing::info!("state transfer applied: the gap is closed and the remote site is online");
        } else {
            tracing::info!("remote site caught up");
        }
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
        t.stopped();
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
}
