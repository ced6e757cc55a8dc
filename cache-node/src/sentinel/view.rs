//! Which site each master name designates, as this node sees the sites.
//!
//! **Caught up**, the one definition the Sentinel answers use (and the REST check
//! and status with them):
//! - this site: its WAL can write, no operator took it offline here (a drain,
//!   `POST /sites/{this site}/offline`), and every remote site that is not offline is
//!   consumed to the end offsets read when consuming (re)started (`online`, not
//!   `catching-up` or `needs-state-transfer`) with a lag, from offsets and this
//!   node's own clock, of at most `failback_lag_ms`;
//! - a remote site: it is `online` here, was heard from (entries or heartbeats)
//!   within `down_after_ms`, its latest heartbeat does not say an operator took it
//!   offline at its own node, and reports a watermark of every
//!   site that is up here at most `failback_lag_ms` behind this node's own
//!   watermark of that site. Watermarks are each origin's own timestamps, compared
//!   with each other: never the wall clock against an entry's timestamp, which
//!   clock skew would bias.
//!
//! A site that stops being caught up stops being named at once; a site that
//! becomes caught up again is named after `failback_hold_down_ms` (against
//! flapping). A site this node has not named yet is named as soon as it is caught
//! up. For the first `down_after_ms` after the node started it *learns*: a remote
//! site it has not heard from, or that has not reported its watermarks yet, is taken
//! as up and caught up, as it was before the node stopped, and no event is
//! published, so that a starting sentinel does not move the names around while it
//! learns the sites' states; it takes as long to notice a site that is gone as a
//! running one does.
//!
//! The names: `<cache>` of an active-passive cache names its primary site's node
//! (down when that site is, or when this node is the primary and fenced); of an
//! active-active cache the first site of `sentinel.order` that is caught up, and
//! `<cache>@<site>` that site while it is caught up, else the next caught-up one
//! after it in the order. When no site is (this node is catching up and the others
//! have not confirmed yet), the name goes to the first site in that order that is up
//! at all, flagged down (`s_down`): clients that check the flags wait, and those that
//! only ask `get-master-addr-by-name` reach a live node.

use crate::config::{SentinelConfig, Topology};
use crate::engine::Engine;
use crate::pubsub::Hub;
use crate::replication::Replication;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xsite_consumer::RemoteState;
use xsite_schemas::SiteId;

/// A host and port, as clients reach it.
pub type Addr = (String, u16);

/// One master name and what it designates now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub name: String,
    pub cache: String,
    pub site: SiteId,
    /// `None`: that site's address is not configured (`[[remote]] announce`).
    pub addr: Option<Addr>,
    /// Sentinel's `s_down`: the site designated is not available.
    pub down: bool,
    /// The other sites' nodes that take this cache's entries (active-passive: the
    /// standbys that are up), with their addresses.
    pub replicas: Vec<(SiteId, Addr)>,
}

/// What this node knows of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteView {
    pub site: SiteId,
    /// Caught up, and past its hold-down: named by the masters.
    pub usable: bool,
    /// Why not, when not.
    pub why: Option<String>,
}

#[derive(Debug, Default)]
struct Mark {
    /// When the site became (or becomes) usable; `None` while it is not caught up.
    usable_at: Option<Instant>,
    usable: bool,
    /// Named before: coming back, it waits for the hold-down.
    ever_usable: bool,
    why: Option<String>,
}

#[derive(Debug, Default)]
struct Board {
    evaluated: bool,
    sites: BTreeMap<SiteId, Mark>,
    masters: Vec<Master>,
}

/// The answers of this node's Sentinel, recomputed by [`Directory::evaluate`].
pub struct Directory {
    engine: Arc<Engine>,
    replication: Option<Arc<Replication>>,
    settings: SentinelConfig,
    order: Vec<SiteId>,
    hub: Hub,
    board: Mutex<Board>,
    /// When this directory (the node) started.
    started: Instant,
}

impl Directory {
    pub fn new(engine: Arc<Engine>, replication: Option<Arc<Replication>>, hub: Hub) -> Directory {
        let config = engine.config().clone();
        Directory {
            settings: config.sentinel.clone(),
            order: config.site_order(),
            engine,
            replication,
            hub,
            board: Mutex::new(Board::default()),
            started: Instant::now(),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The masters as of the last evaluation.
    pub fn masters(&self) -> Vec<Master> {
        self.board().masters.clone()
    }

    pub fn master(&self, name: &[u8]) -> Option<Master> {
        self.board().masters.iter().find(|m| m.name.as_bytes() == name).cloned()
    }

    /// Every site as of the last evaluation, in the global order.
    pub fn sites(&self) -> Vec<SiteView> {
        let board = self.board();
        self.order
            .iter()
            .map(|s| {
                let mark = board.sites.get(s);
                SiteView {
                    site: s.clone(),
                    usable: mark.is_some_and(|m| m.usable),
                    why: mark.and_then(|m| m.why.clone()),
                }
            })
            .collect()
    }

    /// The first `down_after_ms` after the node started, while it learns the sites'
    /// states: no hold-down, no events, and remote sites not heard from (or that have
    /// not reported yet) presumed up and caught up.
    pub fn learning(&self) -> bool {
        self.started.elapsed() < Duration::from_millis(self.settings.down_after_ms)
    }

    /// Whether `site` is up at all: this node, or a remote online here and heard from
    /// within `down_after_ms` (caught up or not).
    pub fn is_up(&self, site: &SiteId) -> bool {
        if site == self.engine.site() {
            return true;
        }
        let now_ms = xsite_schemas::hlc::wall_clock_ms();
        self.replication.as_ref().is_some_and(|r| self.remote_up(r, site, now_ms).is_ok())
    }

    /// Whether `site` is caught up now (see the module docs), and why not.
    pub fn caught_up(&self, site: &SiteId) -> Result<(), String> {
        let now_ms = xsite_schemas::hlc::wall_clock_ms();
        if site == self.engine.site() {
            return self.local_caught_up();
        }
        let Some(repl) = &self.replication else {
            return Err(format!("'{site}' is not a site of this node (no replication)"));
        };
        self.remote_caught_up(repl, site, now_ms)
    }

    fn local_caught_up(&self) -> Result<(), String> {
        self.local_caught_up_within(self.settings.failback_lag_ms)
    }

    /// Whether this site is caught up (see the module docs) with a lag of at most
    /// `tolerance_ms` instead of `failback_lag_ms`, and why not: what the REST
    /// availability check answers for `?extend_check=lag`.
    pub fn local_caught_up_within(&self, tolerance_ms: u64) -> Result<(), String> {
        let health = self.engine.wal().health();
        if !health.is_ok() {
            return Err(format!("its WAL cannot write ({health:?})"));
        }
        let Some(repl) = &self.replication else { return Ok(()) };
        if repl.own_site_offline() {
            return Err("taken offline by an operator".to_string());
        }
        for (remote, stats) in &repl.consumer_stats {
            match stats.remote.state() {
                RemoteState::Offline => continue,
                RemoteState::CatchingUp => return Err(format!("catching up on {remote}")),
                RemoteState::NeedsStateTransfer => return Err(format!("needs a state transfer from {remote}")),
                RemoteState::Online => {}
            }
            if let Some((ms, entries)) = repl.lag.get(remote).and_then(|l| l.total()) {
                if ms > tolerance_ms {
                    return Err(format!("{ms} ms ({entries} entries) behind {remote}"));
                }
            }
        }
        Ok(())
    }

    /// Whether a remote site is up at all (online here and heard from lately).
    fn remote_up(&self, repl: &Replication, site: &SiteId, now_ms: u64) -> Result<(), String> {
        let stats = repl.consumer_stats.get(site).ok_or_else(|| format!("'{site}' is not a configured remote"))?;
        // Catching up on a site is this node's lag, not the site's: it is up if heard.
        let state = stats.remote.state();
        if matches!(state, RemoteState::Offline | RemoteState::NeedsStateTransfer) {
            return Err(format!("{} here", state.as_str()));
        }
        if stats.offline_at_its_site() {
            return Err("taken offline by an operator at its own node".to_string());
        }
        let heard = stats.last_heard_ms.load(std::sync::atomic::Ordering::Relaxed);
        if heard == 0 && self.learning() {
            return Ok(());
        }
        let silent = now_ms.saturating_sub(heard);
        if silent > self.settings.down_after_ms {
            return Err(match heard {
                0 => "not heard from since this node started".to_string(),
                _ => format!("not heard from for {silent} ms"),
            });
        }
        Ok(())
    }

    fn remote_caught_up(&self, repl: &Replication, site: &SiteId, now_ms: u64) -> Result<(), String> {
        self.remote_up(repl, site, now_ms)?;
        let state = repl.consumer_stats[site].remote.state();
        if state != RemoteState::Online && !self.learning() {
            return Err(format!("{} here: its latest reports are not read yet", state.as_str()));
        }
        let theirs = repl.consumer_stats[site].reported_watermarks();
        if self.learning() && theirs.is_empty() {
            return Ok(()); // presumed until it reports (see the module docs)
        }
        for (origin, mine) in repl.watermark_view() {
            let up = &origin == self.engine.site()
                || repl.consumer_stats.get(&origin).is_some_and(|s| s.remote.state() != RemoteState::Offline);
            if &origin == site || !up {
                continue;
            }
            let Some(theirs) = theirs.get(&origin) else {
                return Err(format!("has not reported how far it applied {origin}"));
            };
            let behind = mine.wall_ms().saturating_sub(theirs.wall_ms());
            if behind > self.settings.failback_lag_ms {
                return Err(format!("{behind} ms behind {origin}"));
            }
        }
        Ok(())
    }

    /// Whether the primary `site` of an active-passive cache is up: this node while it
    /// takes the cache's writes, a remote while it is heard from.
    fn primary_up(&self, cache: &crate::engine::CacheState, site: &SiteId, now_ms: u64) -> bool {
        if site == self.engine.site() {
            return !cache.is_read_only() && self.engine.lease_holds(cache) && self.engine.wal().health().is_ok();
        }
        self.replication.as_ref().is_some_and(|r| self.remote_up(r, site, now_ms).is_ok())
    }

    /// Recomputes every site's state and every master, and publishes what changed:
    /// `+sdown`/`-sdown` when a site stops or starts being named, `+switch-master`
    /// when a name moves to another node.
    pub fn evaluate(&self, now: Instant) {
        let now_ms = xsite_schemas::hlc::wall_clock_ms();
        let hold_down = Duration::from_millis(self.settings.failback_hold_down_ms);
        let checks: Vec<(SiteId, Result<(), String>)> =
            self.order.iter().map(|s| (s.clone(), self.caught_up(s))).collect();
        let mut board = self.board();
        let first = !board.evaluated || self.learning();
        board.evaluated = true;
        let mut changed = Vec::new();
        for (site, check) in checks {
            let mark = board.sites.entry(site.clone()).or_default();
            let was = mark.usable;
            match check {
                Ok(()) => {
                    let wait = if first || !mark.ever_usable { Duration::ZERO } else { hold_down };
                    let at = *mark.usable_at.get_or_insert(now + wait);
                    mark.usable = now >= at;
                    mark.ever_usable |= mark.usable;
                    mark.why = (!mark.usable).then(|| {
                        format!("caught up; named again after {} ms without a setback", hold_down.as_millis())
                    });
                }
                Err(why) => {
                    *mark = Mark { usable_at: None, usable: false, ever_usable: mark.ever_usable, why: Some(why) };
                }
            }
            if was != mark.usable && !first {
                changed.push((site, mark.usable, mark.why.clone()));
            }
        }
        let usable: Vec<SiteId> =
            self.order.iter().filter(|s| board.sites.get(*s).is_some_and(|m| m.usable)).cloned().collect();
        let masters = self.compute_masters(&usable, now_ms);
        let before = std::mem::replace(&mut board.masters, masters.clone());
        drop(board);
        if first {
            return;
        }
        for (site, usable, why) in changed {
            let event = if usable { "-sdown" } else { "+sdown" };
            if usable {
                tracing::info!(site = %site, "sentinel: site caught up, named");
            } else {
                tracing::warn!(site = %site, reason = why.as_deref().unwrap_or("-"), "sentinel: site no longer named");
            }
            for m in masters.iter().filter(|m| m.name.ends_with(&format!("@{site}"))) {
                let (ip, port) = self.engine.address_of(&site).unwrap_or_default();
                self.hub.publish(event, format!("master {} {ip} {port}", m.name));
            }
        }
        for m in &masters {
            let Some(old) = before.iter().find(|b| b.name == m.name) else { continue };
            if old.down != m.down && !m.name.contains('@') {
                let (ip, port) = m.addr.clone().unwrap_or_default();
                self.hub.publish(if m.down { "+sdown" } else { "-sdown" }, format!("master {} {ip} {port}", m.name));
            }
            if let (Some((oh, op)), Some((nh, np))) = (&old.addr, &m.addr) {
                if (oh, op) != (nh, np) {
                    tracing::warn!(master = %m.name, from = %old.site, to = %m.site, "sentinel: switch-master");
                    self.hub.publish("+switch-master", format!("{} {oh} {op} {nh} {np}", m.name));
                }
            }
        }
    }

    fn compute_masters(&self, usable: &[SiteId], now_ms: u64) -> Vec<Master> {
        let mut out = Vec::new();
        for cache in self.engine.caches() {
            match cache.topology {
                Topology::ActivePassive => {
                    let Some(primary) = cache.primary() else { continue };
                    let replicas = self
                        .order
                        .iter()
                        .filter(|s| **s != primary)
                        .filter(|s| {
                            *s == self.engine.site()
                                || self.replication.as_ref().is_some_and(|r| self.remote_up(r, s, now_ms).is_ok())
                        })
                        .filter_map(|s| self.engine.address_of(s).map(|a| (s.clone(), a)))
                        .collect();
                    out.push(Master {
                        name: cache.name.to_string(),
                        cache: cache.name.to_string(),
                        addr: self.engine.address_of(&primary),
                        down: !self.primary_up(cache, &primary, now_ms),
                        site: primary,
                        replicas,
                    });
                }
                Topology::ActiveActive => {
                    // No site caught up (this node catching up, the others not
                    // confirmed yet): the name goes to the first site that is up,
                    // flagged down, rather than to one that is gone.
                    let up: Vec<SiteId> = self.order.iter().filter(|s| self.is_up(s)).cloned().collect();
                    let pick = |from: usize| {
                        let after = |set: &[SiteId]| {
                            (0..self.order.len())
                                .map(|k| &self.order[(from + k) % self.order.len()])
                                .find(|s| set.contains(s))
                                .cloned()
                        };
                        match after(usable) {
                            Some(s) => (s, false),
                            None => (after(&up).unwrap_or_else(|| self.order[from].clone()), true),
                        }
                    };
                    out.push(self.aa_master(cache.name.to_string(), cache.name.as_str(), pick(0)));
                    for (i, site) in self.order.iter().enumerate() {
                        out.push(self.aa_master(format!("{}@{site}", cache.name), cache.name.as_str(), pick(i)));
                    }
                }
            }
        }
        out
    }

    fn aa_master(&self, name: String, cache: &str, (site, down): (SiteId, bool)) -> Master {
        Master { name, cache: cache.to_string(), addr: self.engine.address_of(&site), down, site, replicas: Vec::new() }
    }

    /// Recomputes every `check_interval_ms` until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let every = Duration::from_millis(self.settings.check_interval_ms.max(1));
        loop {
            self.evaluate(Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
