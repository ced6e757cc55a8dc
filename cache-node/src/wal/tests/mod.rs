//! WAL tests: unit behaviour, recovery on real damaged files, and a model-based
//! property test (random operations against a `Vec` of records).

mod model;
mod recovery;
mod unit;

use super::recovery::list_segments;
use super::{Durability, Lsn, Recovery, Wal, WalConfig};
use std::path::{Path, PathBuf};

/// A small-limit config so tests roll segments quickly.
fn config(dir: &Path, durability: Durability) -> WalConfig {
    let mut config = WalConfig::new(dir, durability);
    config.segment_bytes_max = 256;
    config
}

async fn open(config: &WalConfig) -> (Wal, Recovery) {
    Wal::open(config.clone()).await.expect("open wal")
}

/// A payload that embeds its LSN, as the node's entries do.
fn payload(lsn: Lsn, bytes: usize) -> Vec<u8> {
    let mut payload = format!("lsn={};", lsn.0).into_bytes();
    payload.resize(bytes.max(payload.len()), b'x');
    payload
}

async fn append_n(wal: &Wal, n: usize, bytes: usize) -> Vec<Lsn> {
    let mut lsns = Vec::with_capacity(n);
    for _ in 0..n {
        lsns.push(wal.append(move |lsn| payload(lsn, bytes)).await.expect("append"));
    }
    lsns
}

async fn read_all(wal: &Wal, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    wal.read_from(from, usize::MAX, usize::MAX).await.expect("read")
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let segments = list_segments(dir).expect("list segments");
    segments.into_iter().map(|s| s.path).collect()
}
