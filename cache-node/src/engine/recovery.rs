//! Start-up: the WAL is opened and checked against the newest snapshot and the
//! shipper's checkpoint (no LSN either names is issued again), the newest valid
//! snapshot is loaded into the stores, the WAL records after it are replayed
//! through the same join (a transaction unit, one record, member by member), and the clock's floor is found above every timestamp seen.

use super::{create_dir, CacheState, Engine, EngineError};
use crate::config::Config;
use crate::store::codec::{self, RecordDecoder};
use crate::wal::snapshot::{latest_snapshot, list_snapshots, read_snapshot};
use crate::wal::{Lsn, Wal, WalConfig};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use xsite_consumer::merge::{Record, Value};
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{decode, CacheName, Hlc, Op, SiteId, Version};

/// What recovery found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    pub(super) snapshot_lsn: Lsn,
    snapshot_records: u64,
    wal_records: u64,
    unknown_cache_entries: u64,
    /// Highest timestamp of a version this site wrote.
    max_local_hlc: Hlc,
    /// Highest timestamp of a version another site wrote.
    max_remote_hlc: Hlc,
    /// Highest epoch seen per cache.
    pub(super) epochs: HashMap<CacheName, u64>,
    /// The clock's high-water mark stored in the snapshot.
    hlc_high: Hlc,
}

impl Recovered {
    fn see(&mut self, site: &SiteId, version: &Version) {
        self.see_hlc(version.site == *site, version.hlc);
    }

    fn see_hlc(&mut self, local: bool, hlc: Hlc) {
        let max = if local { &mut self.max_local_hlc } else { &mut self.max_remote_hlc };
        *max = (*max).max(hlc);
    }

    /// Every timestamp a record holds: both registers' and each counter total's.
    fn see_record(&mut self, site: &SiteId, rec: &Record) {
        self.see(site, &rec.version);
        self.see(site, &rec.ttl_version);
        if let Value::Counter(c) = &rec.value {
            for (s, t) in &c.totals {
                self.see_hlc(s == site, t.hlc);
            }
        }
        if let Some(h) = rec.hash() {
            self.see(site, &h.top);
            for (s, hlc) in &h.cleared {
                self.see_hlc(s == site, *hlc);
            }
            for f in h.fields.values() {
                self.see(site, &f.version);
                for (s, _, hlc) in f.totals() {
                    self.see_hlc(s == site, hlc);
                }
            }
        }
        if let Some(z) = rec.zset() {
            for f in z.scores.fields.values() {
                self.see(site, &f.version);
                for (s, _, hlc) in f.totals() {
                    self.see_hlc(s == site, hlc);
                }
            }
        }
        if let Some(l) = rec.list() {
            self.see(site, &l.top);
            for (s, hlc) in &l.cleared {
                self.see_hlc(s == site, *hlc);
            }
            for place in l.items.keys().chain(l.removed.iter()) {
                for ident in &place.0 {
                    self.see(site, &ident.version());
                }
            }
            for v in l.items.values().filter_map(|i| i.set.as_ref()) {
                self.see(site, v);
            }
        }
        for set in rec.set().into_iter().chain(rec.zset().map(|z| &z.members)) {
            self.see(site, &set.top);
            let removed = set.members.values().flat_map(|e| e.removed().iter());
            for (s, hlc) in set.cleared.iter().chain(removed.map(|(s, h)| (s, h))) {
                self.see_hlc(s == site, *hlc);
            }
            for v in set.members.values().flat_map(|e| e.adds().iter()) {
                self.see(site, v);
            }
        }
    }

    /// The clock's floor: above every timestamp this site issued, above every
    /// remote one up to the skew bound (as observing them live would have done), and
    /// above the high-water mark the snapshot kept (timestamps of records gone since).
    pub(super) fn clock_floor(&self, max_skew_ms: u64) -> Hlc {
        let bound = Hlc::new(wall_clock_ms().saturating_add(max_skew_ms), u16::MAX);
        if self.max_remote_hlc > bound {
            tracing::warn!(remote_hlc = %self.max_remote_hlc, bound = %bound, "stored remote timestamps are beyond the skew bound; the clock starts at the bound");
        }
        self.max_local_hlc.max(self.max_remote_hlc.min(bound)).max(self.hlc_high)
    }

    /// Logs what the engine opened with.
    pub(super) fn report(&self, engine: &Engine, hlc_floor: Hlc, started: Instant) {
        let keys: u64 = engine.caches.iter().map(|c| c.store.dbsize()).sum();
        tracing::info!(
            site = %engine.site,
            snapshot_lsn = self.snapshot_lsn.0,
            snapshot_records = self.snapshot_records,
            wal_records = self.wal_records,
            unknown_cache_entries = self.unknown_cache_entries,
            keys,
            memory_bytes = engine.gauge.used_bytes(),
            hlc_floor = %hlc_floor,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store recovered"
        );
    }
}

/// Opens the WAL with a floor no LSN of the newest snapshot or of the shipper's
/// checkpoint (`named_elsewhere`) falls under, and says how they relate.
pub(super) async fn open_wal(config: &Config, snapshot_dir: &Path, named_elsewhere: Lsn) -> Result<Wal, EngineError> {
    create_dir(snapshot_dir)?;
    crate::wal::snapshot::remove_temp_files(snapshot_dir)?;
    let newest_snapshot = list_snapshots(snapshot_dir)?.first().map_or(Lsn::ZERO, |(l, _)| *l);
    let mut wal_config = WalConfig::new(config.wal_dir(), config.durability);
    wal_config.segment_bytes_max = config.wal.segment_bytes_max;
    wal_config.queue_len_max = config.wal.queue_len_max;
    wal_config.group_bytes_max = config.wal.group_bytes_max;
    wal_config.lsn_floor = newest_snapshot.max(named_elsewhere);
    let (wal, wal_recovery) = Wal::open(wal_config).await?;
    if let Some(t) = &wal_recovery.truncated {
        tracing::warn!(path = %t.path.display(), offset = t.offset, lsn = t.lsn.0, bytes = t.bytes_dropped, "wal tail was cut at open");
    }
    report_positions(&wal_recovery, newest_snapshot, named_elsewhere);
    Ok(wal)
}

/// Says how the WAL, the newest snapshot and the shipper's checkpoint relate after
/// recovery, and what was done when they disagreed.
fn report_positions(wal: &crate::wal::Recovery, snapshot: Lsn, checkpoint: Lsn) {
    match wal.skipped {
        None => tracing::info!(
            wal_oldest_lsn = wal.oldest_lsn.0,
            wal_last_lsn = wal.last_lsn.0,
            snapshot_lsn = snapshot.0,
            shipped_lsn = checkpoint.0,
            "recovery: wal, snapshot and shipper checkpoint agree"
        ),
        Some((from, to)) => {
            tracing::error!(
                wal_ended_at = from.prev().0,
                snapshot_lsn = snapshot.0,
                shipped_lsn = checkpoint.0,
                skipped_from = from.0,
                skipped_to = to.0,
                "recovery: the wal ends before lsns the snapshot or the shipper checkpoint name; new records continue after them so no lsn is reused"
            );
            if checkpoint >= from {
                tracing::error!(
                    lost_from = from.0,
                    lost_to = checkpoint.0,
                    "recovery: this site lost records of its own that it had already shipped; other sites have them. Rebuild this site from its topic (xsite replay) to get them back"
                );
            }
        }
    }
}

/// Fills `caches` from the newest valid snapshot and the WAL after it, on a
/// blocking thread.
pub(super) async fn recover(
    wal: &Wal,
    snapshot_dir: &Path,
    site: &SiteId,
    caches: Vec<CacheState>,
) -> Result<(Vec<CacheState>, Recovered), EngineError> {
    let (wal, dir, site) = (wal.clone(), snapshot_dir.to_path_buf(), site.clone());
    tokio::task::spawn_blocking(move || {
        let r = recover_blocking(&wal, &dir, &site, &caches);
        r.map(|r| (caches, r))
    })
    .await
    .map_err(|e| EngineError::Task(e.to_string()))?
}

/// Loads the newest valid snapshot into the stores, then replays the WAL after it.
fn recover_blocking(
    wal: &Wal,
    snapshot_dir: &Path,
    site: &SiteId,
    caches: &[CacheState],
) -> Result<Recovered, EngineError> {
    let by_name: HashMap<&CacheName, &CacheState> = caches.iter().map(|c| (&c.name, c)).collect();
    let mut r = Recovered::default();
    if let Some((lsn, path)) = latest_snapshot(snapshot_dir)? {
        load_snapshot(&path, site, &by_name, &mut r)?;
        r.snapshot_lsn = lsn;
    }
    r.wal_records = wal.replay(r.snapshot_lsn.next(), |lsn, payload| {
        let record = decode(payload).map_err(|source| EngineError::Decode { lsn, source })?;
        // A transaction unit is one record: all of its members, or none if torn.
        for entry in record.members() {
            r.see(site, &entry.version());
            if let Op::Incr { base, .. } = &entry.op {
                r.see(site, &base.version());
            }
            if let Op::HIncr { base, .. } = &entry.op {
                r.see(site, &base.version());
            }
            if let Op::HIncrFloat { base, .. } = &entry.op {
                r.see(site, &base.version());
            }
            let Some(cache) = by_name.get(&entry.cache) else {
                r.unknown_cache_entries += 1;
                continue;
            };
            let epoch = r.epochs.entry(entry.cache.clone()).or_default();
            *epoch = (*epoch).max(entry.epoch);
            cache.store.apply(&entry.version(), &entry.op);
        }
        Ok::<(), EngineError>(())
    })?;
    if r.unknown_cache_entries > 0 {
        tracing::warn!(
            entries = r.unknown_cache_entries,
            "wal holds entries of caches this node no longer has; skipped"
        );
    }
    Ok(r)
}

fn load_snapshot(
    path: &Path,
    site: &SiteId,
    by_name: &HashMap<&CacheName, &CacheState>,
    r: &mut Recovered,
) -> Result<(), EngineError> {
    let bad = |message: String| EngineError::Snapshot { path: path.to_path_buf(), message };
    let mut header: Option<Vec<Option<&CacheState>>> = None;
    let mut decoder = RecordDecoder::default();
    let mut skipped = 0u64;
    read_snapshot(path, |payload| {
        let Some(caches) = &header else {
            let h = codec::decode_header(payload).map_err(|e| bad(e.to_string()))?;
            r.hlc_high = r.hlc_high.max(h.hlc_high.unwrap_or(Hlc::ZERO));
            let mut slots = Vec::new();
            for c in &h.caches {
                let epoch = r.epochs.entry(c.name.clone()).or_default();
                *epoch = (*epoch).max(c.epoch);
                slots.push(by_name.get(&c.name).copied());
            }
            header = Some(slots);
            return Ok(());
        };
        let (ci, key, rec) = decoder.decode(payload).map_err(|e| bad(e.to_string()))?;
        let slot =
            caches.get(usize::from(ci)).ok_or_else(|| bad(codec::CodecError::UnknownCacheIndex(ci).to_string()))?;
        r.see_record(site, &rec);
        r.snapshot_records += 1;
        match slot {
            Some(cache) => cache.store.load(&key, rec),
            None => skipped += 1,
        }
        Ok::<(), EngineError>(())
    })?;
    if skipped > 0 {
        tracing::warn!(path = %path.display(), records = skipped, "snapshot holds records of caches this node no longer has; skipped");
    }
    Ok(())
}
