//! Write-ahead log: an append-only, checksummed, segmented log of opaque payloads.
//!
//! The WAL knows nothing of the entry format. A record is a byte payload plus the
//! [`Lsn`] the writer assigned to it; the caller embeds that LSN in its payload
//! through the builder it passes to [`Wal::append`], so LSN order is file order.
//!
//! # Log sequence numbers
//!
//! The first record ever written is LSN 1; every record takes the next one. An LSN is
//! never reused: segment names carry the first LSN they hold and the newest segment is
//! never removed, so a restart continues after the last record even when every record
//! was removed. [`Lsn::ZERO`] means "no record".
//!
//! After power loss in `everysec` or `no` mode the tail that was never fsynced is
//! gone, and its LSNs would be assigned again. That is safe only because nothing
//! outside the WAL names a record before it is durable: snapshots and the log shipper
//! go only up to [`Wal::durable_lsn`]. Against anything else (a disk that lost synced
//! data, a directory restored from a backup) the node passes the highest LSN it
//! finds named elsewhere as [`WalConfig::lsn_floor`]: if the WAL ends before it, the
//! next record gets `lsn_floor + 1` in a new segment whose header declares the skip.
//!
//! # On-disk format (version 2; version 1 is still read)
//!
//! The WAL directory holds segment files named by the LSN of their first record, in
//! 16 lowercase hex digits: `{lsn:016x}.wal` (`0000000000000001.wal`). A segment
//! starts at the LSN after the last record of the one before, or, after a declared
//! skip, later: its header then names the last LSN of the segment before it.
//!
//! ```text
//! segment   = header record*
//! header v2 = "XSWAL\0\0" | 2 u8 | prev_lsn u64 LE | crc32c(first 16 bytes) u32 LE    20 bytes
//! header v1 = "XSWAL\0\0" | 1 u8                                                         8 bytes
//! record    = len u32 LE | crc u32 LE | lsn u64 LE | payload    16 + len bytes
//! crc       = crc32c(lsn as u64 LE ++ payload)
//! ```
//!
//! This build writes version 2 and reads 1 and 2. A reader refuses a file with
//! another magic or version ([`WalError::BadMagic`], [`WalError::UnsupportedVersion`],
//! naming the file) instead of guessing: a build that reads only version 1 refuses a
//! version-2 WAL and does not start (docs/formats.md, versioning rules).
//!
//! A segment takes records until its size reaches `segment_bytes_max`; the record
//! that crosses the limit is its last, so a segment holds at most
//! `segment_bytes_max` + one record. A new segment is written as
//! `{lsn:016x}.wal.tmp` with its header, fsynced, renamed into place and the directory
//! fsynced; leftover `.tmp` files are deleted at open. Before the writer moves to a
//! new segment it fsyncs the old one (in every durability mode), so only the last
//! segment can ever have a torn tail.
//!
//! # Durability modes ([`Durability`])
//!
//! - `always`: an append resolves after the group it belongs to is written and
//!   fdatasync'ed. Nothing acknowledged is lost, even on power loss.
//! - `everysec`: an append resolves after write(2); the writer fsyncs at most once per
//!   second while there are unsynced writes. A killed process loses nothing
//!   acknowledged (the bytes are in the page cache); power loss or an OS crash loses
//!   at most about the last second.
//! - `no`: records are never fsynced explicitly (the OS decides), except at segment
//!   rollover, [`Wal::sync`] and clean shutdown.
//!
//! A failed write (a full disk) does not lose the records: the writer cuts the file
//! back to the last whole record, keeps what it could not write, refuses new appends
//! ([`WalError::Stalled`]) and retries every second; see [`Health`].
//!
//! Group commit: one writer task owns the active segment. It takes one request from
//! a bounded queue (`queue_len_max`; a full queue makes `append` wait), drains more
//! up to `group_bytes_max`, writes them with one write(2), syncs once if `always`,
//! then answers every caller.
//!
//! # Recovery rule (torn tail)
//!
//! [`Wal::open`] reads every segment in LSN order and checks every record (length
//! inside the file, crc, LSN continuity within and across segments).
//!
//! - Damage in the **last** segment is a torn tail: the file is cut at the end of the
//!   last good record and fsynced, and [`Recovery::truncated`] says what was dropped.
//! - Damage in any **other** segment (or a gap between segments that the later
//!   segment's header does not declare) refuses to start
//!   with [`WalError::Corrupt`] naming the file and offset, because closed segments
//!   were fsynced and cannot be torn. With `truncate_corrupt_middle` set, everything
//!   from the damage on is dropped instead (later segments are deleted).
//! - A bad segment header is always an error.
//!
//! # Reading
//!
//! The watermark ([`Wal::subscribe`], [`Wal::last_lsn`]) is the highest acknowledged
//! LSN: it moves after the group is written (and synced, in `always` mode) and before
//! the callers are answered. [`Wal::durable_lsn`] is the highest fsynced LSN.
//! Readers ([`Wal::read_from`], [`Wal::replay`]) open their own file descriptors and
//! never read past the watermark, so they never see a half-written record; in
//! `always` mode they never see a record that could still be lost. Segments all of
//! whose records precede a given LSN are deleted by [`Wal::remove_segments_before`].
//!
//! Snapshots of the store live in [`snapshot`].

mod error;
mod format;
mod reader;
mod recovery;
mod retention;
mod segment;
pub mod snapshot;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{Damage, WalError};
pub use format::{
    segment_file_name, RECORD_HEADER_BYTES, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES, SEGMENT_HEADER_BYTES_V1,
    SEGMENT_MAGIC, SEGMENT_MAGIC_V1,
};
pub use recovery::{Recovery, Truncation};

use reader::{ReadHint, READ_HINTS_MAX};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, oneshot, watch};
use writer::{Request, Watermarks, Writer};

/// Default `segment_bytes_max`: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default `queue_len_max`: requests waiting for the writer.
pub const QUEUE_LEN_MAX_DEFAULT: usize = 4096;
/// Default `group_bytes_max`: 4 MiB written per group commit.
pub const GROUP_BYTES_MAX_DEFAULT: usize = 4 << 20;
/// Default `record_bytes_max`: a 512 MiB value plus 1 MiB for the entry around it.
pub const RECORD_BYTES_MAX_DEFAULT: usize = (512 << 20) + (1 << 20);
/// In `everysec` mode, the least time between two fsyncs.
pub const EVERYSEC_SYNC_INTERVAL_MS: u64 = 1000;

/// A log sequence number: 1 for the first record ever, +1 per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// No record.
    pub const ZERO: Lsn = Lsn(0);
    /// The first record ever written.
    pub const FIRST: Lsn = Lsn(1);

    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    /// The LSN before this one (`ZERO` stays `ZERO`).
    pub const fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When an acknowledged append is on stable storage (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Always,
    #[default]
    Everysec,
    No,
}

impl FromStr for Durability {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "everysec" => Ok(Durability::Everysec),
            "no" => Ok(Durability::No),
            other => Err(WalError::ParseDurability(other.to_string())),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Always => "always",
            Durability::Everysec => "everysec",
            Durability::No => "no",
        })
    }
}

/// Configuration of a WAL; every limit carries its unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Directory of the segment files (created if missing).
    pub dir: PathBuf,
    #[serde(default)]
    pub durability: Durability,
    /// A segment takes no more records once its size reaches this.
    #[serde(default = "default_segment_bytes_max")]
    pub segment_bytes_max: u64,
    /// Append requests queued for the writer; a full queue makes `append` wait.
    #[serde(default = "default_queue_len_max")]
    pub queue_len_max: usize,
    /// The writer stops draining the queue into a group once it holds this much.
    #[serde(default = "default_group_bytes_max")]
    pub group_bytes_max: usize,
    /// Largest payload accepted by `append` (at most `u32::MAX`).
    #[serde(default = "default_record_bytes_max")]
    pub record_bytes_max: usize,
    /// At open, drop everything from a damaged non-last segment on instead of
    /// refusing to start. Loses acknowledged records: for an operator's last resort.
    #[serde(default)]
    pub truncate_corrupt_middle: bool,
    /// LSNs up to this one may be named outside the WAL (by a snapshot or the
    /// shipper's checkpoint): if the WAL ends before it, the next record gets
    /// `lsn_floor + 1` (the skip is declared in the new segment's header), so an LSN
    /// is never issued twice.
    #[serde(default)]
    pub lsn_floor: Lsn,
}

fn default_segment_bytes_max() -> u64 {
    SEGMENT_BYTES_MAX_DEFAULT
}

fn default_queue_len_max() -> usize {
    QUEUE_LEN_MAX_DEFAULT
}

fn default_group_bytes_max() -> usize {
    GROUP_BYTES_MAX_DEFAULT
}

fn default_record_bytes_max() -> usize {
    RECORD_BYTES_MAX_DEFAULT
}

impl WalConfig {
    /// The default limits for a WAL in `dir`.
    pub fn new(dir: impl Into<PathBuf>, durability: Durability) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            durability,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            queue_len_max: QUEUE_LEN_MAX_DEFAULT,
            group_bytes_max: GROUP_BYTES_MAX_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            truncate_corrupt_middle: false,
            lsn_floor: Lsn::ZERO,
        }
    }

    pub fn validate(&self) -> Result<(), WalError> {
        let fail = |what: &str| Err(WalError::Config(what.to_string()));
        if self.segment_bytes_max == 0 {
            return fail("segment_bytes_max must be at least 1");
        }
        if self.queue_len_max == 0 {
            return fail("queue_len_max must be at least 1");
        }
        if self.group_bytes_max == 0 {
            return fail("group_bytes_max must be at least 1");
        }
        if u32::try_from(self.record_bytes_max).is_err() {
            return fail("record_bytes_max must fit in u32 (4 GiB - 1)");
        }
        Ok(())
    }
}

/// Whether the writer can write. A failed write (a full disk) stalls it: appends are
/// refused with [`WalError::Stalled`] and the records it could not write are kept and
/// retried every second, in order, until the disk takes them; then appends are
/// accepted again. A failed fsync (or a partial write that cannot be cut off) fails it
/// for good ([`WalError::WriterFailed`]): the kernel may have dropped the unsynced
/// pages, so only a restart, which reads the files again, can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Health {
    #[default]
    Ok,
    Stalled {
        error: String,
    },
    Failed {
        error: String,
    },
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
}

/// Counters of the writer (exported as metrics).
#[derive(Debug, Default)]
pub struct WalStats {
    pub fsyncs: AtomicU64,
    /// Longest fsync so far, in microseconds.
    pub fsync_us_max: AtomicU64,
    pub fsync_us_total: AtomicU64,
    /// Writes or fsyncs that failed (each retry counts).
    pub write_failures: AtomicU64,
    /// Records refused while stalled that could not even be kept for the retry.
    pub dropped_while_stalled: AtomicU64,
}

impl WalStats {
    pub(crate) fn record_fsync(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_us_total.fetch_add(us, Ordering::Relaxed);
        self.fsync_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

/// Appends the payload of one record, from the LSN the writer assigned to it, to the
/// writer's group buffer (the writer frames it around): encoding straight into the
/// buffer spares an allocation and a copy per record.
pub type PayloadBuilder = Box<dyn FnOnce(Lsn, &mut Vec<u8>) + Send + 'static>;

/// A [`PayloadBuilder`] from a function that returns the payload.
pub fn payload_of(build: impl FnOnce(Lsn) -> Vec<u8> + Send + 'static) -> PayloadBuilder {
    Box::new(move |lsn, buf| buf.extend_from_slice(&build(lsn)))
}

/// A queued record; [`AppendTicket::wait`] resolves when it is acknowledged.
#[derive(Debug)]
pub struct AppendTicket {
    answer: oneshot::Receiver<Result<Lsn, WalError>>,
}

impl AppendTicket {
    pub async fn wait(self) -> Result<Lsn, WalError> {
        self.answer.await.map_err(|_| WalError::Closed)?
    }
}

/// A queued batch; [`BatchTicket::wait`] resolves when all of it is acknowledged.
#[derive(Debug)]
pub struct BatchTicket {
    answer: oneshot::Receiver<Result<Vec<Lsn>, WalError>>,
}

impl BatchTicket {
    pub async fn wait(self) -> Result<Vec<Lsn>, WalError> {
        self.answer.await.map_err(|_| WalError::Closed)?
    }
}

/// A retained segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub first: Lsn,
    pub path: PathBuf,
}

/// State shared by the handles, the writer task and readers.
pub(crate) struct Shared {
    pub config: WalConfig,
    /// Retained segments in LSN order; the last one is the writer's.
    segments: Mutex<Vec<SegmentMeta>>,
    /// Where recent reads stopped, so the next read need not scan its segment.
    hints: Mutex<Vec<ReadHint>>,
    /// Serializes segment removals so that files are always removed oldest first.
    remove_lock: tokio::sync::Mutex<()>,
    pub stats: WalStats,
}

impl Shared {
    pub fn segments(&self) -> MutexGuard<'_, Vec<SegmentMeta>> {
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn hints(&self) -> MutexGuard<'_, Vec<ReadHint>> {
        self.hints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// First LSN of the oldest retained segment.
    pub fn oldest_lsn(&self) -> Lsn {
        let segments = self.segments();
        segments.first().expect("the last segment is never removed").first
    }
}

/// A cheap, cloneable handle to the WAL. The writer task stops when every handle is
/// dropped (after an fsync) or on [`Wal::shutdown`].
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Request>,
    watermark: watch::Receiver<Lsn>,
    durable: watch::Receiver<Lsn>,
    health: watch::Receiver<Health>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("dir", &self.shared.config.dir).field("last_lsn", &self.last_lsn()).finish()
    }
}

impl Wal {
    /// Recovers the WAL in `config.dir` (see the recovery rule in the module docs)
    /// and starts its writer task. Must be called inside a tokio runtime.
    pub async fn open(config: WalConfig) -> Result<(Wal, Recovery), WalError> {
        config.validate()?;
        let recover_config = config.clone();
        let recovered = tokio::task::spawn_blocking(move || recovery::recover(&recover_config))
            .await
            .map_err(|e| WalError::Task(e.to_string()))??;
        let (tx, rx) = mpsc::channel(config.queue_len_max);
        let last_lsn = recovered.report.last_lsn; // recovery fsynced it: durable too
        let (acknowledged, watermark) = watch::channel(last_lsn);
        let (durable_tx, durable) = watch::channel(last_lsn);
        let (health_tx, health) = watch::channel(Health::Ok);
        let watermarks = Watermarks { acknowledged, durable: durable_tx, health: health_tx };
        let shared = Arc::new(Shared {
            config,
            segments: Mutex::new(recovered.segments),
            hints: Mutex::new(Vec::with_capacity(READ_HINTS_MAX)),
            remove_lock: tokio::sync::Mutex::new(()),
            stats: WalStats::default(),
        });
        let writer = Writer::new(Arc::clone(&shared), recovered.active, rx, watermarks);
        tokio::spawn(writer.run());
        let wal = Wal { tx, watermark, durable, health, shared };
        Ok((wal, recovered.report))
    }

    /// Appends one record: the writer assigns the LSN, calls `build(lsn)` for the
    /// payload, and the future resolves once the record is acknowledged (see
    /// [`Durability`]). Waits while the queue is full. If the future is dropped after
    /// the request was queued, the record is still written.
    pub async fn append<F>(&self, build: F) -> Result<Lsn, WalError>
    where
        F: FnOnce(Lsn) -> Vec<u8> + Send + 'static,
    {
        self.submit(build).await?.wait().await
    }

    /// Queues one record and returns once it is queued (waiting while the queue is
    /// full), not once it is acknowledged: [`AppendTicket::wait`] does that. Records
    /// are written in the order they are queued, so a caller can queue several
    /// (a pipeline of commands) and then wait for them all to share one fsync.
    pub async fn submit<F>(&self, build: F) -> Result<AppendTicket, WalError>
    where
        F: FnOnce(Lsn) -> Vec<u8> + Send + 'static,
    {
        self.submit_into(payload_of(build)).await
    }

    /// [`Wal::submit`] of a builder that appends its payload to the group's buffer.
    pub async fn submit_into(&self, build: PayloadBuilder) -> Result<AppendTicket, WalError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Append { build, reply }).await?;
        Ok(AppendTicket { answer })
    }

    /// Appends records with consecutive LSNs in one group. All or none are accepted
    /// (a crash may still keep only a prefix of the batch, as for separate appends).
    pub async fn append_batch(&self, builds: Vec<PayloadBuilder>) -> Result<Vec<Lsn>, WalError> {
        self.submit_batch(builds).await?.wait().await
    }

    /// [`Wal::append_batch`], in two steps like [`Wal::submit`].
    pub async fn submit_batch(&self, builds: Vec<PayloadBuilder>) -> Result<BatchTicket, WalError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::AppendBatch { builds, reply }).await?;
        Ok(BatchTicket { answer })
    }

    /// fsyncs everything written so far (useful in `no` and `everysec` modes).
    pub async fn sync(&self) -> Result<(), WalError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Sync { reply }).await?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// The last LSN assigned so far: every record queued before this call (by any
    /// handle, awaited or not) has an LSN at or below it. Written or not: wait for
    /// [`Wal::durable_lsn`] to pass it to know they are on disk.
    pub async fn barrier(&self) -> Result<Lsn, WalError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Barrier { reply }).await?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// Whether the writer can write now (see [`Health`]).
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Writes what is queued, fsyncs, and stops the writer. Other handles then get
    /// [`WalError::Closed`].
    pub async fn shutdown(self) -> Result<(), WalError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Shutdown { reply }).await?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    async fn request(&self, request: Request) -> Result<(), WalError> {
        self.tx.send(request).await.map_err(|_| WalError::Closed)
    }

    /// The watermark: the highest acknowledged LSN, updated as groups commit.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.watermark.clone()
    }

    /// The highest acknowledged LSN (`Lsn::ZERO` if none).
    pub fn last_lsn(&self) -> Lsn {
        *self.watermark.borrow()
    }

    /// The highest LSN known to be fsynced: equal to [`Wal::last_lsn`] in `always`
    /// mode, behind it in `everysec` and `no`. A shipper that must never send a
    /// record this site could lose on power loss reads only up to here.
    pub fn durable_lsn(&self) -> Lsn {
        *self.durable.borrow()
    }

    /// Watches [`Wal::durable_lsn`].
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.durable.clone()
    }

    /// The first LSN of the oldest retained segment: reads from an older LSN fail
    /// with [`WalError::Truncated`].
    pub fn oldest_lsn(&self) -> Lsn {
        self.shared.oldest_lsn()
    }

    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Records with LSN >= `from` (`Lsn::ZERO` means the first) up to the watermark,
    /// at most `max_records` and at most `max_bytes` of payload — but at least one
    /// record when one is available and `max_records > 0`.
    pub async fn read_from(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Lsn, Vec<u8>)>, WalError> {
        let until = self.last_lsn();
        let shared = Arc::clone(&self.shared);
        let limits = reader::ReadLimits { max_records, max_bytes };
        tokio::task::spawn_blocking(move || reader::read_from(&shared, from, until, limits))
            .await
            .map_err(|e| WalError::Task(e.to_string()))?
    }

    /// Streams every record with LSN >= `from` up to the current watermark into `f`,
    /// one at a time. Blocking file I/O: call it at start-up or from
    /// `spawn_blocking`. Returns the number of records replayed.
    pub fn replay<E, F>(&self, from: Lsn, f: F) -> Result<u64, E>
    where
        E: From<WalError>,
        F: FnMut(Lsn, &[u8]) -> Result<(), E>,
    {
        reader::replay(&self.shared, from, self.last_lsn(), f)
    }

    /// Deletes the segments all of whose records are < `lsn`, oldest first, never the
    /// writer's segment. `lsn` is the oldest record still needed: min(snapshot lsn,
    /// shipped lsn) is safe. Returns the number of segments removed.
    pub async fn remove_segments_before(&self, lsn: Lsn) -> Result<u64, WalError> {
        let _one_at_a_time = self.shared.remove_lock.lock().await;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || retention::remove_segments_before(&shared, lsn))
            .await
            .map_err(|e| WalError::Task(e.to_string()))?
    }
}
