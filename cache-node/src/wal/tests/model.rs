//! Model-based property test: random operations run against the real WAL (real files)
//! and against a model (segments as `Vec`s of records); after every step the WAL must
//! agree with the model.
//!
//! A crash is simulated the way power loss looks on disk: the writer stops, then the
//! last segment is cut to a random length no shorter than what was durable (in
//! `always` mode everything acknowledged; in `no` mode what was there at the last
//! open), or a random byte of that non-durable tail is flipped. The model predicts
//! exactly which records survive.
//!
//! Cases: `PROPTEST_CASES` (default 64).

use super::payload;
use crate::wal::{segment_file_name, Durability, Lsn, Wal, WalConfig, WalError};
use crate::wal::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use std::fs;
use std::path::Path;

const CASES_DEFAULT: u32 = 64;
const OPS_MAX: usize = 60;
const PAYLOAD_BYTES_MAX: usize = 120;

#[derive(Debug, Clone)]
enum Op {
    Append { bytes: usize },
    Reopen,
    Crash { cut: u64 },
    CorruptTail { at: u64, mask: u8 },
    RemoveBefore { lsn: u64 },
    Read { from: u64, max_records: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PAYLOAD_BYTES_MAX).prop_map(|bytes| Op::Append { bytes }),
        1 => Just(Op::Reopen),
        1 => any::<u64>().prop_map(|cut| Op::Crash { cut }),
        1 => (any::<u64>(), 1..=255u8).prop_map(|(at, mask)| Op::CorruptTail { at, mask }),
        1 => (0..80u64).prop_map(|lsn| Op::RemoveBefore { lsn }),
        3 => (0..80u64, 1..20usize).prop_map(|(from, max_records)| Op::Read { from, max_records }),
    ]
}

type Records = Vec<(Lsn, Vec<u8>)>;

#[derive(Debug, Clone)]
struct ModelSegment {
    first: Lsn,
    records: Records,
    bytes: u64,
}

fn record_bytes(payload: &[u8]) -> u64 {
    (RECORD_HEADER_BYTES + payload.len()) as u64
}

#[derive(Debug)]
struct Model {
    segments: Vec<ModelSegment>,
    next: Lsn,
    /// Every record <= `durable` survives a crash.
    durable: Lsn,
    durability: Durability,
    segment_bytes_max: u64,
}

impl Model {
    fn new(durability: Durability, segment_bytes_max: u64) -> Model {
        let first = ModelSegment { first: Lsn::FIRST, records: Vec::new(), bytes: SEGMENT_HEADER_BYTES };
        Model { segments: vec![first], next: Lsn::FIRST, durable: Lsn::ZERO, durability, segment_bytes_max }
    }

    fn last(&mut self) -> &mut ModelSegment {
        self.segments.last_mut().expect("one segment")
    }

    fn append(&mut self, bytes: usize) -> Lsn {
        let (lsn, max) = (self.next, self.segment_bytes_max);
        let last = self.last();
        if last.bytes >= max && !last.records.is_empty() {
            let bytes = SEGMENT_HEADER_BYTES;
            let records = Vec::new();
            self.segments.push(ModelSegment { first: lsn, records, bytes });
        }
        let record = payload(lsn, bytes);
        let last = self.last();
        last.bytes += record_bytes(&record);
        last.records.push((lsn, record));
        self.next = lsn.next();
        if self.durability == Durability::Always {
            self.durable = lsn;
        }
        lsn
    }

    /// Bytes of the last segment that a crash cannot lose.
    fn durable_bytes(&self) -> u64 {
        let last = self.segments.last().expect("one segment");
        let durable = last.records.iter().take_while(|r| r.0 <= self.durable);
        SEGMENT_HEADER_BYTES + durable.map(|r| record_bytes(&r.1)).sum::<u64>()
    }

    /// Keeps the records of the last segment that end within `len` bytes.
    fn cut_last(&mut self, len: u64) {
        let last = self.last();
        let mut end = SEGMENT_HEADER_BYTES;
        let kept = last
            .records
            .iter()
            .take_while(|r| {
                end += record_bytes(&r.1);
                end <= len
            })
            .count();
        if let Some(dropped) = last.records.get(kept) {
            let first_dropped = dropped.0;
            last.records.truncate(kept);
            last.bytes = SEGMENT_HEADER_BYTES + last.records.iter().map(|r| record_bytes(&r.1)).sum::<u64>();
            self.next = first_dropped;
        }
    }

    /// Start of the record of the last segment that holds byte `at`.
    fn record_start_at(&self, at: u64) -> u64 {
        let last = self.segments.last().expect("one segment");
        let mut start = SEGMENT_HEADER_BYTES;
        for (_, record) in &last.records {
            if at < start + record_bytes(record) {
                break;
            }
            start += record_bytes(record);
        }
        start
    }

    fn remove_before(&mut self, lsn: Lsn) -> u64 {
        let removable = self.segments.windows(2).take_while(|p| p[1].first <= lsn).count();
        self.segments.drain(..removable);
        removable as u64
    }

    fn oldest(&self) -> Lsn {
        self.segments[0].first
    }

    /// The records a read returns, or the (requested, oldest) of `Truncated`.
    fn read(&self, from: Lsn, max_records: usize) -> Result<Records, (Lsn, Lsn)> {
        let from = from.max(Lsn::FIRST);
        if from < self.oldest() {
            return Err((from, self.oldest()));
        }
        let records = self.segments.iter().flat_map(|s| s.records.iter());
        Ok(records.filter(|r| r.0 >= from).take(max_records).cloned().collect())
    }
}

/// The WAL under test and its model.
struct Harness {
    config: WalConfig,
    wal: Option<Wal>,
    model: Model,
}

impl Harness {
    fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("wal open")
    }

    fn last_path(&self) -> std::path::PathBuf {
        let first = self.model.segments.last().expect("one segment").first;
        self.config.dir.join(segment_file_name(first))
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Append { bytes } => {
                let got = self.wal().append(move |lsn| payload(lsn, bytes)).await;
                prop_assert_eq!(got.map_err(|e| e.to_string()), Ok(self.model.append(bytes)));
            }
            Op::Reopen => self.reopen(false).await?,
            Op::Crash { cut } => self.crash(cut).await?,
            Op::CorruptTail { at, mask } => self.corrupt_tail(at, mask).await?,
            Op::RemoveBefore { lsn } => {
                let removed = self.wal().remove_segments_before(Lsn(lsn)).await;
                prop_assert_eq!(removed.map_err(|e| e.to_string()), Ok(self.model.remove_before(Lsn(lsn))));
            }
            Op::Read { from, max_records } => self.check_read(Lsn(from), max_records).await?,
        }
        self.check_state().await
    }

    async fn check_read(&self, from: Lsn, max_records: usize) -> Result<(), TestCaseError> {
        let got = self.wal().read_from(from, max_records, usize::MAX).await;
        match (got, self.model.read(from, max_records)) {
            (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
            (Err(WalError::Truncated { requested, oldest }), Err(want)) => {
                prop_assert_eq!((requested, oldest), want)
            }
            (got, want) => prop_assert!(false, "read {from}: got {got:?}, want {want:?}"),
        }
        Ok(())
    }

    async fn check_state(&self) -> Result<(), TestCaseError> {
        let wal = self.wal();
        prop_assert_eq!(wal.last_lsn(), self.model.next.prev());
        prop_assert_eq!(wal.oldest_lsn(), self.model.oldest());
        let len = fs::metadata(self.last_path()).map(|m| m.len()).unwrap_or(0);
        prop_assert_eq!(len, self.model.segments.last().expect("one segment").bytes);
        self.check_read(Lsn::ZERO, usize::MAX).await
    }

    async fn close(&mut self) -> Result<(), TestCaseError> {
        let wal = self.wal.take().expect("wal open");
        prop_assert!(wal.shutdown().await.is_ok());
        Ok(())
    }

    /// Opens the WAL; `damaged` says whether recovery must report a truncation.
    async fn reopen(&mut self, damaged: bool) -> Result<(), TestCaseError> {
        if self.wal.is_some() {
            self.close().await?;
        }
        let (wal, recovery) = Wal::open(self.config.clone()).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(recovery.truncated.is_some(), damaged, "{:?}", recovery);
        prop_assert_eq!(recovery.last_lsn, self.model.next.prev());
        self.wal = Some(wal);
        self.model.durable = self.model.next.prev(); // open fsyncs what it recovered
        Ok(())
    }

    /// Power loss: the last segment keeps its durable bytes and a random part of the rest.
    async fn crash(&mut self, cut: u64) -> Result<(), TestCaseError> {
        self.close().await?;
        let path = self.last_path();
        let len = fs::metadata(&path).expect("last segment").len();
        let durable = self.model.durable_bytes();
        let keep = durable + cut % (len - durable + 1);
        let file = fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(keep).expect("truncate");
        let boundary = self.model.record_start_at(keep) == keep;
        self.model.cut_last(keep);
        self.reopen(!boundary).await
    }

    /// Power loss that leaves garbage: one byte of the non-durable tail is flipped.
    async fn corrupt_tail(&mut self, at: u64, mask: u8) -> Result<(), TestCaseError> {
        self.close().await?;
        let path = self.last_path();
        let mut bytes = fs::read(&path).expect("read segment");
        let durable = self.model.durable_bytes();
        let unsynced = bytes.len() as u64 - durable;
        if unsynced == 0 {
            return self.reopen(false).await;
        }
        let at = durable + at % unsynced;
        bytes[at as usize] ^= mask;
        fs::write(&path, &bytes).expect("write segment");
        let start = self.model.record_start_at(at);
        self.model.cut_last(start);
        self.reopen(true).await
    }
}

async fn run_case(ops: Vec<Op>, durability: Durability, segment_bytes_max: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = WalConfig::new(dir.path(), durability);
    config.segment_bytes_max = segment_bytes_max;
    config.group_bytes_max = 512;
    let mut harness = Harness { config, wal: None, model: Model::new(durability, segment_bytes_max) };
    harness.reopen(false).await?;
    for op in &ops {
        harness.step(op).await?;
    }
    harness.close().await?;
    check_dir_matches_model(dir.path(), &harness.model)
}

fn check_dir_matches_model(dir: &Path, model: &Model) -> Result<(), TestCaseError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = model.segments.iter().map(|s| segment_file_name(s.first)).collect();
    prop_assert_eq!(names, want);
    Ok(())
}

fn cases() -> u32 {
    let env = std::env::var("PROPTEST_CASES").ok();
    env.and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn wal_agrees_with_model(
        ops in proptest::collection::vec(op(), 1..OPS_MAX),
        always in any::<bool>(),
        segment_bytes_max in 40..400u64,
    ) {
        let durability = if always { Durability::Always } else { Durability::No };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run_case(ops, durability, segment_bytes_max))?;
    }
}
