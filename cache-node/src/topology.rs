//! Active-active and active-passive, per cache, with epoch fencing.
//!
//! An active-passive cache has one primary site; every other site answers writes
//! with `-READONLY`. `promote` makes the local site primary and raises the cache's
//! epoch; every entry carries its origin's epoch. A site that sees an entry with a
//! higher epoch learns the new primary and turns read-only (a returning old primary
//! included): the fence is on the local write path only.
//!
//! Entries of a lower epoch are applied like any other: once one site has applied an
//! entry, a rule that made another refuse it would be a divergence no join can undo.
//! Versions order by epoch first, so what a cut-off old primary accepted after a
//! promotion loses to every write of the new epoch on the same key, and survives (at
//! every site alike) only on keys the new epoch did not write. They are counted
//! ([`Roles::stale_entries`]) and logged.
//!
//! `demote` turns the local site read-only for a cache it was primary of, with no
//! primary known until a site is promoted (an empty primary in sled): a planned
//! hand-over, or fencing an old primary by hand.
//!
//! The epoch and primary of each cache are kept in sled so they survive restarts.

use crate::config::{Config, Topology};
use crate::engine::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use xsite_schemas::{CacheName, LogEntry, Op, SiteId};

const TREE: &str = "topology";

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("no cache named '{0}'")]
    UnknownCache(String),
    #[error("cache '{0}' is active-active: every site takes writes, there is nothing to promote or demote")]
    NotPassive(String),
}

#[derive(Debug, Clone)]
struct CacheRole {
    topology: Topology,
    primary: Option<SiteId>,
}

/// The node's view of who may write each cache.
pub struct Roles {
    local: SiteId,
    tree: sled::Tree,
    engine: Arc<Engine>,
    caches: Mutex<HashMap<CacheName, CacheRole>>,
    stale: std::sync::atomic::AtomicU64,
}

/// Why an entry was refused.
#[derive(Debug)]
pub struct Fenced(pub String);

impl Roles {
    /// Load each cache's epoch and primary (sled first, else the config) and set the
    /// engine's read-only flags accordingly.
    pub fn open(config: &Config, db: &sled::Db, engine: Arc<Engine>) -> Result<Roles, TopologyError> {
        let tree = db.open_tree(TREE)?;
        let mut caches = HashMap::new();
        for c in &config.caches {
            let epoch = read_u64(&tree, &format!("epoch/{}", c.name))?.unwrap_or(0);
            // An empty primary: demoted, none known until a promotion.
            let primary = match tree.get(format!("primary/{}", c.name))? {
                Some(v) => SiteId::new(String::from_utf8_lossy(&v)).ok(),
                None => c.primary.clone(),
            };
            engine.set_epoch(&c.name, epoch);
            engine.set_primary(&c.name, primary.clone());
            let read_only = c.topology == Topology::ActivePassive && primary.as_ref() != Some(&config.site);
            engine.set_read_only(&c.name, read_only);
            caches.insert(c.name.clone(), CacheRole { topology: c.topology, primary });
        }
        Ok(Roles { local: config.site.clone(), tree, engine, caches: Mutex::new(caches), stale: Default::default() })
    }

    /// Make this site the primary of `cache`: raise the epoch, accept writes. Returns
    /// the new epoch. The caller announces it (a heartbeat entry through the WAL).
    pub fn promote(&self, cache: &CacheName) -> Result<u64, TopologyError> {
        let mut caches = self.caches.lock().expect("roles lock");
        let role = caches.get_mut(cache).ok_or_else(|| TopologyError::UnknownCache(cache.to_string()))?;
        if role.topology != Topology::ActivePassive {
            return Err(TopologyError::NotPassive(cache.to_string()));
        }
        let epoch = self.engine.epoch(cache) + 1;
        self.persist(cache, epoch, Some(&self.local))?;
        role.primary = Some(self.local.clone());
        self.engine.set_primary(cache, role.primary.clone());
        self.engine.set_epoch(cache, epoch);
        self.engine.set_read_only(cache, false);
        tracing::warn!(cache = %cache, epoch, site = %self.local, "promoted to primary");
        Ok(epoch)
    }

    /// Turn this site read-only for `cache` (active-passive): it no longer takes
    /// writes, and no primary is known until a site is promoted (the epoch stays;
    /// the next promotion raises it). Returns whether this site was the primary.
    pub fn demote(&self, cache: &CacheName) -> Result<bool, TopologyError> {
        let mut caches = self.caches.lock().expect("roles lock");
        let role = caches.get_mut(cache).ok_or_else(|| TopologyError::UnknownCache(cache.to_string()))?;
        if role.topology != Topology::ActivePassive {
            return Err(TopologyError::NotPassive(cache.to_string()));
        }
        let was_primary = role.primary.as_ref() == Some(&self.local);
        let epoch = self.engine.epoch(cache);
        if was_primary {
            self.persist(cache, epoch, None)?;
            role.primary = None;
            self.engine.set_primary(cache, None);
        }
        self.engine.set_read_only(cache, true);
        tracing::warn!(cache = %cache, epoch, site = %self.local, was_primary, "demoted: this site is read-only for the cache");
        if was_primary {
            self.engine.close_clients(cache, "demoted");
        }
        Ok(was_primary)
    }

    /// Undoes a [`Roles::demote`] of this site made at `epoch` (a switchover that did
    /// not complete): primary again at the same epoch, if no site was promoted since.
    pub fn resume(&self, cache: &CacheName, epoch: u64) -> Result<bool, TopologyError> {
        let mut caches = self.caches.lock().expect("roles lock");
        let role = caches.get_mut(cache).ok_or_else(|| TopologyError::UnknownCache(cache.to_string()))?;
        if self.engine.epoch(cache) != epoch || role.primary.is_some() {
            return Ok(false);
        }
        self.persist(cache, epoch, Some(&self.local))?;
        role.primary = Some(self.local.clone());
        self.engine.set_primary(cache, role.primary.clone());
        self.engine.set_read_only(cache, false);
        tracing::warn!(cache = %cache, epoch, "switchover abandoned: this site is the primary again");
        Ok(true)
    }

    /// Entries applied whose epoch was below the cache's (written by a fenced-off
    /// primary after a promotion).
    pub fn stale_entries(&self) -> u64 {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Check a remote entry against the cache's roles; learn a newer epoch. Only an
    /// unknown cache is refused; an entry of an older epoch is admitted (and
    /// counted): see the module docs.
    pub fn admit(&self, entry: &LogEntry) -> Result<(), Fenced> {
        let mut caches = self.caches.lock().expect("roles lock");
        let Some(role) = caches.get_mut(&entry.cache) else {
            return Err(Fenced(format!("unknown cache '{}'", entry.cache)));
        };
        if role.topology != Topology::ActivePassive {
            return Ok(());
        }
        let current = self.engine.epoch(&entry.cache);
        // Who is primary is said by the primary alone: its writes and its announcement
        // (a heartbeat with no watermarks). Every site's watermark heartbeat carries
        // the epoch it knows — enough to fence this site — but not who the primary is.
        let (heartbeat, names_primary) = match &entry.op {
            Op::Heartbeat { applied } => (true, applied.is_empty()),
            _ => (false, true),
        };
        if entry.epoch < current {
            if !heartbeat {
                let n = self.stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(origin = %entry.origin, entry_epoch = entry.epoch, epoch = current, cache = %entry.cache, stale_entries = n + 1, "applying entries an old primary wrote after a promotion; the new epoch's writes win over them");
                }
            }
            return Ok(());
        }
        if entry.epoch > current {
            let primary = names_primary.then(|| entry.origin.clone());
            if let Err(err) = self.persist(&entry.cache, entry.epoch, primary.as_ref()) {
                tracing::error!(error = %err, "saving the new epoch failed");
            }
            // Took writes until now (not read-only, and not fenced by its lease).
            let was_writable =
                self.engine.cache(&entry.cache).is_some_and(|c| !c.is_read_only() && self.engine.lease_holds(c));
            role.primary = primary.clone();
            self.engine.set_primary(&entry.cache, primary.clone());
            self.engine.set_epoch(&entry.cache, entry.epoch);
            self.engine.set_read_only(&entry.cache, primary.as_ref() != Some(&self.local));
            if was_writable && primary.as_ref() != Some(&self.local) {
                self.engine.close_clients(&entry.cache, "another site was promoted");
            }
            match primary {
                Some(p) => {
                    tracing::warn!(cache = %entry.cache, epoch = entry.epoch, primary = %p, "learned a new primary; this site is read-only")
                }
                None => {
                    tracing::warn!(cache = %entry.cache, epoch = entry.epoch, from = %entry.origin, "learned a newer epoch from a heartbeat; this site is read-only until the new primary is heard from")
                }
            }
        } else if names_primary && role.primary.is_none() && entry.origin != self.local {
            // The primary of the current epoch, heard from at last.
            if let Err(err) = self.persist(&entry.cache, entry.epoch, Some(&entry.origin)) {
                tracing::error!(error = %err, "saving the primary failed");
            }
            role.primary = Some(entry.origin.clone());
            self.engine.set_primary(&entry.cache, role.primary.clone());
            tracing::info!(cache = %entry.cache, epoch = entry.epoch, primary = %entry.origin, "learned the primary");
        }
        Ok(())
    }

    /// `(cache, topology, primary, epoch, read_only)` for status reports.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let caches = self.caches.lock().expect("roles lock");
        let mut out: Vec<_> = caches
            .iter()
            .map(|(name, role)| {
                serde_json::json!({
                    "cache": name.as_str(),
                    "topology": match role.topology { Topology::ActiveActive => "active-active", Topology::ActivePassive => "active-passive" },
                    "primary": role.primary.as_ref().map(SiteId::as_str),
                    "epoch": self.engine.epoch(name),
                    "read_only": self.engine.is_read_only(name),
                })
            })
            .collect();
        out.sort_by(|a, b| a["cache"].as_str().cmp(&b["cache"].as_str()));
        out
    }

    /// Saves the epoch and primary of `cache` (`None`: no primary known, demoted).
    fn persist(&self, cache: &CacheName, epoch: u64, primary: Option<&SiteId>) -> Result<(), TopologyError> {
        self.tree.insert(format!("epoch/{cache}"), &epoch.to_be_bytes())?;
        self.tree.insert(format!("primary/{cache}"), primary.map_or("", SiteId::as_str).as_bytes())?;
        self.tree.flush()?;
        Ok(())
    }
}

fn read_u64(tree: &sled::Tree, key: &str) -> Result<Option<u64>, sled::Error> {
    Ok(tree.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use std::collections::BTreeMap;
    use xsite_schemas::Hlc;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    fn entry(origin: &str, epoch: u64, op: Op) -> LogEntry {
        LogEntry {
            id: LogEntry::new_id(),
            origin: site(origin),
            seq: 1,
            hlc: Hlc::new(1_000, 0),
            epoch,
            cache: CacheName::new("sessions").unwrap(),
            op,
        }
    }

    /// Defect: a third site's watermark heartbeat, carrying the newer epoch it had
    /// learned, named that third site the primary at a site that heard it before the
    /// new primary: its Sentinel then named the wrong node. Only the primary's own
    /// entries (and its announcement) name it; a heartbeat only fences.
    #[tokio::test]
    async fn a_third_sites_heartbeat_fences_but_does_not_name_the_primary() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_site(site("site-a"));
        config.data_dir = dir.path().to_path_buf();
        config.caches.push(CacheConfig {
            name: CacheName::new("sessions").unwrap(),
            db: 1,
            policy: "last-write-wins".into(),
            conflict_window_ms: xsite_consumer::merge::CONFLICT_WINDOW_MS_DEFAULT,
            topology: Topology::ActivePassive,
            primary: Some(site("site-a")),
        });
        let engine = Engine::open(&config).await.unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let roles = Roles::open(&config, &db, engine.clone()).unwrap();
        let cache = CacheName::new("sessions").unwrap();
        assert!(!engine.is_read_only(&cache));

        // site-b was promoted (epoch 1); site-c, which learned it, beats first.
        let applied = BTreeMap::from([(site("site-c"), Hlc::new(900, 0))]);
        roles.admit(&entry("site-c", 1, Op::Heartbeat { applied })).unwrap();
        assert!(engine.is_read_only(&cache), "a newer epoch fences this site");
        assert_eq!(engine.epoch(&cache), 1);
        assert_eq!(engine.cache(&cache).unwrap().primary(), None, "site-c is not the primary");

        // The new primary's announcement names it.
        roles.admit(&entry("site-b", 1, Op::Heartbeat { applied: BTreeMap::new() })).unwrap();
        assert_eq!(engine.cache(&cache).unwrap().primary(), Some(site("site-b")));
        assert_eq!(roles.stale_entries(), 0);
        // An old epoch's heartbeat is not a stale write.
        let applied = BTreeMap::from([(site("site-a"), Hlc::new(950, 0))]);
        roles.admit(&entry("site-c", 0, Op::Heartbeat { applied })).unwrap();
        assert_eq!(roles.stale_entries(), 0);
        assert_eq!(engine.cache(&cache).unwrap().primary(), Some(site("site-b")));
    }
}
