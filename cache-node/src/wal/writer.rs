//! The single writer: a tokio task that takes requests from the bounded queue, builds
//! payloads in LSN order, and commits them in groups. [`SegmentWriter`], which owns
//! the active segment, does the file I/O: a group that is fsynced (`always`), a sync
//! and a close on the blocking pool; a group written without an fsync (`everysec`,
//! `no`) in the writer task itself, as it only copies into the page cache.

use super::error::{IoContext, WalError};
use super::format::{
    encode_segment_header, frame_record, fsync_dir, segment_file_name, tmp_path, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::{Durability, Health, Lsn, PayloadBuilder, SegmentMeta, Shared, EVERYSEC_SYNC_INTERVAL_MS};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, MissedTickBehavior};

type Answer<T> = oneshot::Sender<Result<T, WalError>>;

/// What a handle asks the writer.
pub(crate) enum Request {
    Append {
        build: PayloadBuilder,
        reply: Answer<Lsn>,
    },
    AppendBatch {
        builds: Vec<PayloadBuilder>,
        reply: Answer<Vec<Lsn>>,
    },
    Sync {
        reply: Answer<()>,
    },
    /// Answers the last LSN assigned so far: every record queued before the barrier
    /// has an LSN at or below it.
    Barrier {
        reply: Answer<Lsn>,
    },
    Shutdown {
        reply: Answer<()>,
    },
}

/// A failed write or fsync. `fatal`: retrying cannot be trusted (an fsync failed, so
/// the kernel may have dropped the pages; or a partial write could not be cut off):
/// the writer refuses everything until the node restarts and recovery reads the
/// files again.
pub(crate) struct Failure {
    pub error: WalError,
    pub fatal: bool,
}

impl Failure {
    fn retryable(error: WalError) -> Failure {
        Failure { error, fatal: false }
    }

    fn fatal(error: WalError) -> Failure {
        Failure { error, fatal: true }
    }
}

/// The segment file the writer appends to.
pub(crate) struct ActiveSegment {
    file: File,
    path: PathBuf,
    first: Lsn,
    /// Bytes in the file, header included.
    len: u64,
    records: u64,
}

impl ActiveSegment {
    /// Creates `{first:016x}.wal` durably: temp file, header (naming `prev`, the last
    /// LSN before this segment), fsync, rename, fsync dir.
    pub fn create(dir: &Path, first: Lsn, prev: Lsn) -> Result<ActiveSegment, WalError> {
        let path = dir.join(segment_file_name(first));
        let tmp = tmp_path(&path);
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).ctx("create segment", &tmp)?;
        file.write_all(&encode_segment_header(prev)).ctx("write segment header", &tmp)?;
        file.sync_all().ctx("fsync new segment", &tmp)?;
        fs::rename(&tmp, &path).ctx("rename new segment", &path)?;
        fsync_dir(dir)?;
        tracing::debug!(path = %path.display(), first_lsn = first.0, prev_lsn = prev.0, "wal segment created");
        Ok(ActiveSegment { file, path, first, len: SEGMENT_HEADER_BYTES, records: 0 })
    }

    /// Reopens a recovered segment for appending after its last good record and
    /// fsyncs it, so that what recovery reported is durable.
    pub fn open_existing(meta: &SegmentMeta, len: u64, records: u64) -> Result<ActiveSegment, WalError> {
        let path = &meta.path;
        let mut file = OpenOptions::new().write(true).open(path).ctx("open segment for append", path)?;
        file.seek(SeekFrom::Start(len)).ctx("seek segment", path)?;
        file.sync_all().ctx("fsync segment", path)?;
        Ok(ActiveSegment { file, path: path.clone(), first: meta.first, len, records })
    }

    pub fn meta(&self) -> SegmentMeta {
        SegmentMeta { first: self.first, path: self.path.clone() }
    }

    /// Appends `bytes`; on failure cuts the file back to where it was, so a retry
    /// writes the same records at the same place.
    fn write(&mut self, bytes: &[u8], records: u64) -> Result<(), Failure> {
        if let Err(e) = self.file.write_all(bytes) {
            let error = WalError::io("write segment", &self.path, e);
            let cut = self.file.set_len(self.len).and_then(|()| self.file.seek(SeekFrom::Start(self.len)));
            return match cut {
                Ok(_) => Err(Failure::retryable(error)),
                Err(cut) => {
                    tracing::error!(path = %self.path.display(), error = %cut, "cannot cut a partial wal write off");
                    Err(Failure::fatal(error))
                }
            };
        }
        self.len += bytes.len() as u64;
        self.records += records;
        Ok(())
    }

    fn sync(&self) -> Result<(), WalError> {
        self.file.sync_data().ctx("fsync segment", &self.path)
    }
}

/// Framed records of one group, in LSN order, ready for one write.
#[derive(Default)]
pub(crate) struct GroupData {
    buf: Vec<u8>,
    /// (lsn, start of the record in `buf`).
    spans: Vec<(Lsn, usize)>,
    /// Records at the front already in the file (a failed write keeps the rest).
    written: usize,
}

impl GroupData {
    /// Empty, with its capacity.
    fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
        self.written = 0;
    }

    fn mark(&self) -> (usize, usize) {
        (self.buf.len(), self.spans.len())
    }

    fn rollback(&mut self, (buf_len, spans_len): (usize, usize)) {
        self.buf.truncate(buf_len);
        self.spans.truncate(spans_len);
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The end of record `i` in `buf` (the start of the next one).
    fn end_of(&self, i: usize) -> usize {
        self.spans.get(i + 1).map_or(self.buf.len(), |s| s.1)
    }
}

/// The blocking side of the writer.
pub(crate) struct SegmentWriter {
    active: ActiveSegment,
    shared: Arc<Shared>,
}

impl SegmentWriter {
    /// Writes the group's records not yet written, rolling to new segments where the
    /// limit says, and fdatasyncs the last segment if `sync`. After a failure,
    /// `group.written` says how far it got; calling again continues from there.
    fn write_group(&mut self, group: &mut GroupData, sync: bool) -> Result<(), Failure> {
        let segment_bytes_max = self.shared.config.segment_bytes_max;
        let mut chunk = group.written;
        for i in group.written..group.spans.len() {
            let (lsn, start) = group.spans[i];
            let in_chunk = (i - chunk) as u64;
            assert_eq!(lsn.0, self.active.first.0 + self.active.records + in_chunk, "wal records in lsn order");
            let len_before = self.active.len + (start - group.spans[chunk].1) as u64;
            if len_before >= segment_bytes_max && self.active.records + in_chunk > 0 {
                self.write_chunk(group, chunk, i)?;
                chunk = i;
                self.roll(lsn)?;
            }
        }
        self.write_chunk(group, chunk, group.spans.len())?;
        if sync {
            self.sync().map_err(Failure::fatal)?;
        }
        Ok(())
    }

    /// Writes records `from..to` of the group with one write.
    fn write_chunk(&mut self, group: &mut GroupData, from: usize, to: usize) -> Result<(), Failure> {
        if from == to {
            return Ok(());
        }
        let (start, end) = (group.spans[from].1, group.end_of(to - 1));
        self.active.write(&group.buf[start..end], (to - from) as u64)?;
        group.written = to;
        Ok(())
    }

    /// Closes the active segment (fsync: only the last segment may be torn) and opens
    /// a new one starting at `first`.
    fn roll(&mut self, first: Lsn) -> Result<(), Failure> {
        self.sync().map_err(Failure::fatal)?;
        let next = ActiveSegment::create(&self.shared.config.dir, first, first.prev()).map_err(Failure::retryable)?;
        self.shared.segments().push(next.meta());
        self.active = next;
        Ok(())
    }

    /// fdatasync of the active segment, timed.
    fn sync(&mut self) -> Result<(), WalError> {
        let started = Instant::now();
        let result = self.active.sync();
        self.shared.stats.record_fsync(started.elapsed());
        result
    }
}

/// An answer owed to a caller once its group commits.
enum Reply {
    One(Answer<Lsn>, Lsn),
    Many(Answer<Vec<Lsn>>, Vec<Lsn>),
}

impl Reply {
    /// A caller that stopped waiting is not an error: its record is written anyway.
    fn ok(self) {
        match self {
            Reply::One(tx, lsn) => drop(tx.send(Ok(lsn))),
            Reply::Many(tx, lsns) => drop(tx.send(Ok(lsns))),
        }
    }

    fn err(self, e: WalError) {
        match self {
            Reply::One(tx, _) => drop(tx.send(Err(e))),
            Reply::Many(tx, _) => drop(tx.send(Err(e))),
        }
    }
}

#[derive(Default)]
struct Group {
    data: GroupData,
    replies: Vec<Reply>,
}

/// The two watermarks the writer publishes, and its health.
pub(crate) struct Watermarks {
    /// Highest acknowledged LSN (readers stop here).
    pub acknowledged: watch::Sender<Lsn>,
    /// Highest fsynced LSN.
    pub durable: watch::Sender<Lsn>,
    pub health: watch::Sender<Health>,
}

/// Records the writer could not write yet, kept in LSN order to be written first
/// when the disk accepts them again: they may already be visible in the store.
struct Stall {
    error: WalError,
    fatal: bool,
    pending: GroupData,
    retries: u64,
}

/// Records accepted into a stall after the failure (appends that raced with it),
/// beyond the failed group itself.
const STALL_BYTES_MAX: usize = 16 << 20;

/// The async side of the writer: queue, LSN assignment, group commit, watermarks.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    watermarks: Watermarks,
    /// `None` while a blocking job holds it, or after a failure lost it.
    io: Option<SegmentWriter>,
    next_lsn: Lsn,
    durability: Durability,
    group_bytes_max: usize,
    record_bytes_max: usize,
    /// Written but not fsynced (`everysec`, `no`).
    dirty: bool,
    /// Set while a write failed: appends are refused (see [`Stall`]).
    stall: Option<Stall>,
    /// The last group's buffers, emptied, for the next group to fill without growing
    /// them again (kept up to [`SPARE_BYTES_MAX`]).
    spare: GroupData,
}

/// Capacity of a written group's buffer kept for the next group at most.
const SPARE_BYTES_MAX: usize = 1 << 20;

/// Assigns the next LSN, builds the payload into `data` and frames it there.
fn push(
    next_lsn: &mut Lsn,
    record_bytes_max: usize,
    data: &mut GroupData,
    build: PayloadBuilder,
) -> Result<Lsn, WalError> {
    let lsn = *next_lsn;
    let start = data.buf.len();
    data.buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    if catch_unwind(AssertUnwindSafe(|| build(lsn, &mut data.buf))).is_err() {
        data.buf.truncate(start);
        tracing::warn!(lsn = lsn.0, "wal payload builder panicked");
        return Err(WalError::BuildPanicked { lsn });
    }
    let bytes = data.buf.len() - start - RECORD_HEADER_BYTES;
    if bytes > record_bytes_max {
        data.buf.truncate(start);
        return Err(WalError::RecordTooLarge { bytes, record_bytes_max });
    }
    frame_record(&mut data.buf[start..], lsn);
    data.spans.push((lsn, start));
    *next_lsn = lsn.next();
    Ok(lsn)
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        active: ActiveSegment,
        rx: mpsc::Receiver<Request>,
        watermarks: Watermarks,
    ) -> Writer {
        let next_lsn = watermarks.acknowledged.borrow().next();
        let config = &shared.config;
        Writer {
            durability: config.durability,
            group_bytes_max: config.group_bytes_max,
            record_bytes_max: config.record_bytes_max,
            rx,
            watermarks,
            io: Some(SegmentWriter { active, shared: Arc::clone(&shared) }),
            shared,
            next_lsn,
            dirty: false,
            stall: None,
            spare: GroupData::default(),
        }
    }

    /// Serves requests until shutdown or until every handle is dropped.
    pub async fn run(mut self) {
        let mut tick = time::interval(Duration::from_millis(EVERYSEC_SYNC_INTERVAL_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let sync_due = self.durability == Durability::Everysec && self.dirty && self.stall.is_none();
            let retry_due = self.stall.as_ref().is_some_and(|s| !s.fatal);
            let request = tokio::select! {
                biased;
                _ = tick.tick(), if sync_due || retry_due => {
                    if retry_due {
                        self.retry_stalled().await;
                    } else {
                        self.sync_if_dirty().await;
                    }
                    continue;
                }
                request = self.rx.recv() => request,
            };
            let Some(request) = request else { break };
            let Some(control) = self.commit_group(request).await else {
                continue;
            };
            if self.control(control).await {
                return;
            }
        }
        let _ = self.close().await;
    }

    /// Commits `first` and whatever else is queued, up to `group_bytes_max`. Returns a
    /// control request met while draining, to serve after the group.
    async fn commit_group(&mut self, first: Request) -> Option<Request> {
        let mut group = Group { data: std::mem::take(&mut self.spare), replies: Vec::new() };
        let mut control = self.add(&mut group, first);
        while control.is_none() && group.data.bytes() < self.group_bytes_max {
            match self.rx.try_recv() {
                Ok(request) => control = self.add(&mut group, request),
                Err(_) => break,
            }
        }
        self.flush(group).await;
        control
    }

    /// Adds an append to the group, or returns a control request.
    fn add(&mut self, group: &mut Group, request: Request) -> Option<Request> {
        match request {
            Request::Append { build, reply } => {
                if let Some(refusal) = self.stall.as_ref().map(stall_error) {
                    self.keep_in_stall(vec![build]);
                    Reply::One(reply, Lsn::ZERO).err(refusal);
                    return None;
                }
                match push(&mut self.next_lsn, self.record_bytes_max, &mut group.data, build) {
                    Ok(lsn) => group.replies.push(Reply::One(reply, lsn)),
                    Err(e) => Reply::One(reply, Lsn::ZERO).err(e),
                }
            }
            Request::AppendBatch { builds, reply } => {
                if let Some(refusal) = self.stall.as_ref().map(stall_error) {
                    self.keep_in_stall(builds);
                    Reply::Many(reply, Vec::new()).err(refusal);
                    return None;
                }
                self.add_batch(group, builds, reply)
            }
            control => return Some(control),
        }
        None
    }

    /// While stalled, an append is refused, but its record is kept behind the stalled
    /// ones (it may already be visible in the store, so it must reach the file when
    /// they do), up to [`STALL_BYTES_MAX`]; beyond that it is dropped and counted.
    fn keep_in_stall(&mut self, builds: Vec<PayloadBuilder>) {
        let Some(stall) = self.stall.as_mut() else { return };
        for build in builds {
            if stall.fatal || stall.pending.bytes() >= STALL_BYTES_MAX {
                self.shared.stats.dropped_while_stalled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Err(e) = push(&mut self.next_lsn, self.record_bytes_max, &mut stall.pending, build) {
                tracing::warn!(error = %e, "record refused while the wal is stalled");
            }
        }
    }

    /// All or nothing: a failing builder takes back the batch's records and LSNs.
    fn add_batch(&mut self, group: &mut Group, builds: Vec<PayloadBuilder>, reply: Answer<Vec<Lsn>>) {
        let (mark, next_lsn) = (group.data.mark(), self.next_lsn);
        let mut lsns = Vec::with_capacity(builds.len());
        for build in builds {
            match push(&mut self.next_lsn, self.record_bytes_max, &mut group.data, build) {
                Ok(lsn) => lsns.push(lsn),
                Err(e) => {
                    group.data.rollback(mark);
                    self.next_lsn = next_lsn;
                    return Reply::Many(reply, lsns).err(e);
                }
            }
        }
        group.replies.push(Reply::Many(reply, lsns));
    }

    /// Writes (and in `always` mode syncs) the group, moves the watermark, answers.
    /// On failure every caller gets the error and the records not yet in the file
    /// are kept for a retry (see [`Stall`]).
    async fn flush(&mut self, group: Group) {
        if group.data.is_empty() {
            group.replies.into_iter().for_each(Reply::ok);
            return;
        }
        let sync = self.durability == Durability::Always;
        match self.write(group.data, sync).await {
            Ok(()) => group.replies.into_iter().for_each(Reply::ok),
            Err((failure, pending)) => {
                let e = self.stall_with(failure, pending, 0);
                group.replies.into_iter().for_each(|r| r.err(e.clone()));
            }
        }
    }

    /// Writes `data` (continuing where an earlier attempt stopped) and moves the
    /// watermarks; on failure returns what is left to write.
    async fn write(&mut self, mut data: GroupData, sync: bool) -> Result<(), (Failure, GroupData)> {
        let last = self.next_lsn.prev();
        let outcome = if sync {
            self.with_io(move |w| {
                let result = w.write_group(&mut data, sync);
                (data, result)
            })
            .await
        } else {
            // Without an fsync the write lands in the page cache in microseconds: it
            // is done here rather than handed to the blocking pool and back, two
            // thread wake-ups per group. (A roll to a new segment inside it fsyncs the
            // old one: once per segment.)
            match self.io.as_mut() {
                Some(w) => {
                    let result = w.write_group(&mut data, false);
                    Ok((data, result))
                }
                None => Err(WalError::Closed),
            }
        };
        match outcome {
            Ok((mut data, Ok(()))) => {
                if data.buf.capacity() <= SPARE_BYTES_MAX {
                    data.clear();
                    self.spare = data;
                }
                self.dirty |= !sync;
                self.watermarks.acknowledged.send_replace(last);
                if sync {
                    self.watermarks.durable.send_replace(last);
                }
                Ok(())
            }
            Ok((data, Err(failure))) => Err((failure, data)),
            Err(e) => Err((Failure::fatal(e), GroupData::default())),
        }
    }

    /// Enters (or stays in) the stalled state; returns what callers get meanwhile.
    fn stall_with(&mut self, failure: Failure, pending: GroupData, retries: u64) -> WalError {
        self.shared.stats.write_failures.fetch_add(1, Ordering::Relaxed);
        let unwritten = pending.spans.len() - pending.written;
        if retries == 0 {
            tracing::error!(error = %failure.error, fatal = failure.fatal, unwritten_records = unwritten, "wal write failed; appends are refused until it succeeds");
        } else if retries.is_multiple_of(10) {
            tracing::warn!(error = %failure.error, retries, unwritten_records = unwritten, "wal still cannot write");
        }
        let error = failure.error.to_string();
        let health = if failure.fatal { Health::Failed { error } } else { Health::Stalled { error } };
        self.watermarks.health.send_replace(health);
        let stall = Stall { error: failure.error, fatal: failure.fatal, pending, retries };
        let refusal = stall_error(&stall);
        self.stall = Some(stall);
        refusal
    }

    /// The retry tick: write the stalled records again.
    async fn retry_stalled(&mut self) {
        let Some(stall) = self.stall.take() else { return };
        let retries = stall.retries + 1;
        let sync = self.durability == Durability::Always;
        match self.write(stall.pending, sync).await {
            Ok(()) => {
                tracing::info!(retries, last_lsn = self.next_lsn.prev().0, "wal writable again; appends accepted");
                self.watermarks.health.send_replace(Health::Ok);
            }
            Err((failure, pending)) => {
                self.stall_with(failure, pending, retries);
            }
        }
    }

    /// Serves a sync, barrier or shutdown request; true when the writer must stop.
    async fn control(&mut self, request: Request) -> bool {
        match request {
            Request::Sync { reply } => {
                let result = self.sync_now().await;
                let _ = reply.send(result);
                false
            }
            Request::Barrier { reply } => {
                let _ = reply.send(Ok(self.next_lsn.prev()));
                false
            }
            Request::Shutdown { reply } => {
                let result = self.close().await;
                let _ = reply.send(result);
                true
            }
            Request::Append { .. } | Request::AppendBatch { .. } => {
                unreachable!("appends are added to groups")
            }
        }
    }

    async fn sync_now(&mut self) -> Result<(), WalError> {
        if let Some(stall) = &self.stall {
            return Err(stall_error(stall));
        }
        if !self.dirty {
            return Ok(());
        }
        let failure = match self.with_io(SegmentWriter::sync).await {
            Ok(Ok(())) => {
                self.dirty = false;
                self.watermarks.durable.send_replace(self.next_lsn.prev());
                return Ok(());
            }
            Ok(Err(e)) | Err(e) => Failure::fatal(e),
        };
        Err(self.stall_with(failure, GroupData::default(), 0))
    }

    /// The `everysec` tick.
    async fn sync_if_dirty(&mut self) {
        let _ = self.sync_now().await;
    }

    /// Final write of stalled records (if the disk took them back) and fsync; drops
    /// the segment file.
    async fn close(&mut self) -> Result<(), WalError> {
        if self.stall.as_ref().is_some_and(|s| !s.fatal) {
            self.retry_stalled().await;
        }
        let result = self.sync_now().await;
        self.io = None;
        self.rx.close();
        tracing::info!(last_lsn = self.next_lsn.prev().0, ok = result.is_ok(), "wal closed");
        result
    }

    /// Runs `job` on the blocking pool with the segment writer.
    async fn with_io<T, F>(&mut self, job: F) -> Result<T, WalError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SegmentWriter) -> T + Send + 'static,
    {
        let Some(mut io) = self.io.take() else {
            return Err(WalError::Closed);
        };
        let joined = tokio::task::spawn_blocking(move || {
            let result = job(&mut io);
            (io, result)
        })
        .await;
        match joined {
            Ok((io, result)) => {
                self.io = Some(io);
                Ok(result)
            }
            Err(e) => Err(WalError::Task(e.to_string())),
        }
    }
}

/// What callers get while the writer is stalled.
fn stall_error(stall: &Stall) -> WalError {
    if stall.fatal {
        WalError::WriterFailed(Box::new(stall.error.clone()))
    } else {
        WalError::Stalled(Box::new(stall.error.clone()))
    }
}
