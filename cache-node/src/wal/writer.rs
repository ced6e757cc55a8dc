//! The single writer: a tokio task that takes requests from the bounded queue, builds
//! payloads in LSN order, and commits them in groups. File I/O runs on the blocking
//! pool through [`SegmentWriter`], which owns the active segment.

use super::error::{IoContext, WalError};
use super::format::{encode_record, fsync_dir, segment_file_name, tmp_path, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC};
use super::{Durability, Lsn, PayloadBuilder, SegmentMeta, Shared, EVERYSEC_SYNC_INTERVAL_MS};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, MissedTickBehavior};

type Answer<T> = oneshot::Sender<Result<T, WalError>>;

/// What a handle asks the writer.
pub(crate) enum Request {
    Append { build: PayloadBuilder, reply: Answer<Lsn> },
    AppendBatch { builds: Vec<PayloadBuilder>, reply: Answer<Vec<Lsn>> },
    Sync { reply: Answer<()> },
    Shutdown { reply: Answer<()> },
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
    /// Creates `{first:016x}.wal` durably: temp file, header, fsync, rename, fsync dir.
    pub fn create(dir: &Path, first: Lsn) -> Result<ActiveSegment, WalError> {
        let path = dir.join(segment_file_name(first));
        let tmp = tmp_path(&path);
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).ctx("create segment", &tmp)?;
        file.write_all(&SEGMENT_MAGIC).ctx("write segment header", &tmp)?;
        file.sync_all().ctx("fsync new segment", &tmp)?;
        fs::rename(&tmp, &path).ctx("rename new segment", &path)?;
        fsync_dir(dir)?;
        tracing::debug!(path = %path.display(), first_lsn = first.0, "wal segment created");
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

    fn write(&mut self, bytes: &[u8], records: u64) -> Result<(), WalError> {
        self.file.write_all(bytes).ctx("write segment", &self.path)?;
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
struct GroupData {
    buf: Vec<u8>,
    /// (lsn, start of the record in `buf`).
    spans: Vec<(Lsn, usize)>,
}

impl GroupData {
    fn push(&mut self, lsn: Lsn, payload: &[u8]) {
        self.spans.push((lsn, self.buf.len()));
        encode_record(&mut self.buf, lsn, payload);
    }

    fn mark(&self) -> (usize, usize) {
        (self.buf.len(), self.spans.len())
    }

    fn rollback(&mut self, (buf_len, spans_len): (usize, usize)) {
        self.buf.truncate(buf_len);
        self.spans.truncate(spans_len);
    }
}

/// The blocking side of the writer.
pub(crate) struct SegmentWriter {
    active: ActiveSegment,
    shared: Arc<Shared>,
}

impl SegmentWriter {
    /// Writes the group, rolling to new segments where the limit says, and fdatasyncs
    /// the last segment if `sync`.
    fn write_group(&mut self, group: &GroupData, sync: bool) -> Result<(), WalError> {
        let segment_bytes_max = self.shared.config.segment_bytes_max;
        let (mut chunk_start, mut chunk_records) = (0, 0);
        for &(lsn, start) in &group.spans {
            let expected = self.active.first.0 + self.active.records + chunk_records;
            assert_eq!(lsn.0, expected, "wal records must be written in lsn order");
            let len_before = self.active.len + (start - chunk_start) as u64;
            let has_records = self.active.records + chunk_records > 0;
            if len_before >= segment_bytes_max && has_records {
                self.active.write(&group.buf[chunk_start..start], chunk_records)?;
                (chunk_start, chunk_records) = (start, 0);
                self.roll(lsn)?;
            }
            chunk_records += 1;
        }
        self.active.write(&group.buf[chunk_start..], chunk_records)?;
        if sync {
            self.active.sync()?;
        }
        Ok(())
    }

    /// Closes the active segment (fsync: only the last segment may be torn) and opens
    /// a new one starting at `first`.
    fn roll(&mut self, first: Lsn) -> Result<(), WalError> {
        self.active.sync()?;
        let next = ActiveSegment::create(&self.shared.config.dir, first)?;
        self.shared.segments().push(next.meta());
        self.active = next;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.active.sync()
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

/// The two watermarks the writer publishes.
pub(crate) struct Watermarks {
    /// Highest acknowledged LSN (readers stop here).
    pub acknowledged: watch::Sender<Lsn>,
    /// Highest fsynced LSN.
    pub durable: watch::Sender<Lsn>,
}

/// The async side of the writer: queue, LSN assignment, group commit, watermarks.
pub(crate) struct Writer {
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
    /// The first write or fsync failure; the writer accepts nothing after it.
    failed: Option<WalError>,
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
            io: Some(SegmentWriter { active, shared }),
            next_lsn,
            dirty: false,
            failed: None,
        }
    }

    /// Serves requests until shutdown or until every handle is dropped.
    pub async fn run(mut self) {
        let mut tick = time::interval(Duration::from_millis(EVERYSEC_SYNC_INTERVAL_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let sync_due = self.durability == Durability::Everysec && self.dirty;
            let request = tokio::select! {
                biased;
                _ = tick.tick(), if sync_due => {
                    self.sync_if_dirty().await;
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
    /// sync/shutdown request met while draining, to serve after the group.
    async fn commit_group(&mut self, first: Request) -> Option<Request> {
        let mut group = Group::default();
        let mut control = self.add(&mut group, first);
        while control.is_none() && group.data.buf.len() < self.group_bytes_max {
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
            Request::Append { build, reply } => match self.push(&mut group.data, build) {
                Ok(lsn) => group.replies.push(Reply::One(reply, lsn)),
                Err(e) => Reply::One(reply, Lsn::ZERO).err(e),
            },
            Request::AppendBatch { builds, reply } => self.add_batch(group, builds, reply),
            control => return Some(control),
        }
        None
    }

    /// All or nothing: a failing builder takes back the batch's records and LSNs.
    fn add_batch(&mut self, group: &mut Group, builds: Vec<PayloadBuilder>, reply: Answer<Vec<Lsn>>) {
        let (mark, next_lsn) = (group.data.mark(), self.next_lsn);
        let mut lsns = Vec::with_capacity(builds.len());
        for build in builds {
            match self.push(&mut group.data, build) {
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

    /// Assigns the next LSN, builds and frames the payload.
    fn push(&mut self, data: &mut GroupData, build: PayloadBuilder) -> Result<Lsn, WalError> {
        if let Some(failed) = &self.failed {
            return Err(WalError::WriterFailed(Box::new(failed.clone())));
        }
        let lsn = self.next_lsn;
        let payload = catch_unwind(AssertUnwindSafe(|| build(lsn))).map_err(|_| {
            tracing::warn!(lsn = lsn.0, "wal payload builder panicked");
            WalError::BuildPanicked { lsn }
        })?;
        if payload.len() > self.record_bytes_max {
            let (bytes, record_bytes_max) = (payload.len(), self.record_bytes_max);
            return Err(WalError::RecordTooLarge { bytes, record_bytes_max });
        }
        data.push(lsn, &payload);
        self.next_lsn = lsn.next();
        Ok(lsn)
    }

    /// Writes (and in `always` mode syncs) the group, moves the watermark, answers.
    async fn flush(&mut self, group: Group) {
        if group.replies.is_empty() {
            return;
        }
        let last = self.next_lsn.prev();
        let sync = self.durability == Durability::Always;
        let data = group.data;
        match self.with_io(move |w| w.write_group(&data, sync)).await {
            Ok(()) => {
                self.dirty |= !sync;
                self.watermarks.acknowledged.send_replace(last);
                if sync {
                    self.watermarks.durable.send_replace(last);
                }
                group.replies.into_iter().for_each(Reply::ok);
            }
            Err(e) => {
                self.fail(&e);
                group.replies.into_iter().for_each(|r| r.err(e.clone()));
            }
        }
    }

    /// Serves a sync or shutdown request; true when the writer must stop.
    async fn control(&mut self, request: Request) -> bool {
        match request {
            Request::Sync { reply } => {
                let result = self.sync_now().await;
                let _ = reply.send(result);
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
        if let Some(failed) = &self.failed {
            return Err(WalError::WriterFailed(Box::new(failed.clone())));
        }
        if !self.dirty {
            return Ok(());
        }
        match self.with_io(SegmentWriter::sync).await {
            Ok(()) => {
                self.dirty = false;
                self.watermarks.durable.send_replace(self.next_lsn.prev());
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// The `everysec` tick.
    async fn sync_if_dirty(&mut self) {
        let _ = self.sync_now().await;
    }

    /// Final fsync; drops the segment file.
    async fn close(&mut self) -> Result<(), WalError> {
        let result = self.sync_now().await;
        self.io = None;
        self.rx.close();
        tracing::info!(last_lsn = self.next_lsn.prev().0, ok = result.is_ok(), "wal closed");
        result
    }

    fn fail(&mut self, e: &WalError) {
        tracing::error!(error = %e, "wal write failed; the wal accepts no more appends");
        self.failed = Some(e.clone());
    }

    /// Runs `job` on the blocking pool with the segment writer.
    async fn with_io<T, F>(&mut self, job: F) -> Result<T, WalError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SegmentWriter) -> Result<T, WalError> + Send + 'static,
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
                result
            }
            Err(e) => Err(WalError::Task(e.to_string())),
        }
    }
}
