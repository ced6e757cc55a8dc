//! Recovery on real files: torn tails at every byte, flipped bytes, damaged middle
//! segments, bad headers.

use super::{append_n, config, open, payload, read_all, segment_paths};
use crate::wal::{
    Damage, Durability, Lsn, Wal, WalConfig, WalError, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC_V1,
};
use std::fs;
use std::path::{Path, PathBuf};

/// Payload bytes of every record here: records are 36 bytes, 7 per 256-byte segment.
const PAYLOAD_BYTES: usize = 20;
const RECORD_BYTES: u64 = (RECORD_HEADER_BYTES + PAYLOAD_BYTES) as u64;

/// Where record `lsn` starts in its segment, 7 records per segment.
fn record_offset(lsn: u64) -> u64 {
    SEGMENT_HEADER_BYTES + ((lsn - 1) % 7) * RECORD_BYTES
}

/// Writes `n` records, closes the WAL, returns the config and the segment paths.
async fn written(dir: &Path, n: usize) -> (WalConfig, Vec<PathBuf>) {
    let config = config(dir, Durability::Always);
    let (wal, _) = open(&config).await;
    append_n(&wal, n, PAYLOAD_BYTES).await;
    wal.shutdown().await.unwrap();
    (config, segment_paths(dir))
}

async fn lsns(wal: &Wal) -> Vec<Lsn> {
    read_all(wal, Lsn(1)).await.into_iter().map(|r| r.0).collect()
}

fn lsn_range(first: u64, last: u64) -> Vec<Lsn> {
    (first..=last).map(Lsn).collect()
}

#[tokio::test]
async fn cutting_the_last_record_at_every_offset_keeps_the_ones_before() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 10).await; // segments [1..=7] [8..=10]
    let last = paths.last().unwrap();
    let pristine = fs::read(last).unwrap();
    let start = record_offset(10);
    assert_eq!(pristine.len() as u64, start + RECORD_BYTES);
    for cut in start..start + RECORD_BYTES {
        fs::write(last, &pristine[..cut as usize]).unwrap();
        let (wal, recovery) = open(&config).await;
        assert_eq!(recovery.last_lsn, Lsn(9), "cut at {cut}");
        match recovery.truncated {
            None => assert_eq!(cut, start),
            Some(t) => {
                assert_eq!((&t.path, t.offset, t.lsn), (last, start, Lsn(10)));
                assert_eq!(t.bytes_dropped, cut - start);
                let torn_header = cut - start < RECORD_HEADER_BYTES as u64;
                assert_eq!(matches!(t.damage, Damage::TornHeader { .. }), torn_header);
                assert_eq!(matches!(t.damage, Damage::TornPayload { .. }), !torn_header);
            }
        }
        assert_eq!(fs::metadata(last).unwrap().len(), start);
        assert_eq!(lsns(&wal).await, lsn_range(1, 9));
        assert_eq!(append_n(&wal, 1, PAYLOAD_BYTES).await, vec![Lsn(10)]);
        wal.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_last_segment_cut_to_its_header_continues_at_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 10).await;
    fs::write(&paths[1], &fs::read(&paths[1]).unwrap()[..SEGMENT_HEADER_BYTES as usize]).unwrap();
    let (wal, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(7));
    // A cut at a record boundary leaves a well-formed file: nothing to report.
    assert_eq!(recovery.truncated, None);
    assert_eq!(append_n(&wal, 1, PAYLOAD_BYTES).await, vec![Lsn(8)]);
    assert_eq!(lsns(&wal).await, lsn_range(1, 8));
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_segment_cuts_the_tail_at_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 5).await;
    let path = &paths[0];
    let pristine = fs::read(path).unwrap();
    let start = record_offset(3);
    for at in start..start + RECORD_BYTES {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = pristine.clone();
            bad[at as usize] ^= mask;
            fs::write(path, &bad).unwrap();
            let (wal, recovery) = open(&config).await;
            let t = recovery.truncated.expect("damage found");
            assert_eq!((recovery.last_lsn, t.offset, t.lsn), (Lsn(2), start, Lsn(3)), "byte {at}");
            assert_eq!(t.bytes_dropped, 3 * RECORD_BYTES);
            let field = at - start;
            let ok = match t.damage {
                Damage::TornPayload { .. } => field < 4,
                Damage::ChecksumMismatch { .. } => !(8..16).contains(&field),
                Damage::LsnMismatch { found, .. } => (8..16).contains(&field) && found != Lsn(3),
                _ => false,
            };
            assert!(ok, "byte {at} mask {mask:#x}: {}", t.damage);
            assert_eq!(lsns(&wal).await, lsn_range(1, 2));
            wal.shutdown().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 3).await;
    let mut bytes = fs::read(&paths[0]).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&paths[0], &bytes).unwrap();
    let (_, recovery) = open(&config).await;
    let t = recovery.truncated.unwrap();
    assert_eq!(recovery.last_lsn, Lsn(3));
    assert_eq!(t.bytes_dropped, 4096);
    let mismatch = Damage::LsnMismatch { expected: Lsn(4), found: Lsn(0) };
    assert_eq!(t.damage, mismatch);
}

#[tokio::test]
async fn damage_in_a_middle_segment_refuses_to_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 20).await; // [1..=7] [8..=14] [15..=20]
    let middle = &paths[1];
    let mut bytes = fs::read(middle).unwrap();
    let at = record_offset(10);
    bytes[(at + RECORD_BYTES - 1) as usize] ^= 1; // last payload byte of lsn 10
    fs::write(middle, &bytes).unwrap();
    let err = Wal::open(config.clone()).await.unwrap_err();
    match &err {
        WalError::Corrupt { path, offset, lsn, damage: Damage::ChecksumMismatch { .. } } => {
            assert_eq!((path, *offset, *lsn), (middle, at, Lsn(10)))
        }
        other => panic!("unexpected error {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("0000000000000008.wal") && message.contains(&format!("offset {at}")), "{message}");
    // Nothing was changed by the refusal.
    assert_eq!(segment_paths(dir.path()), paths);
}

#[tokio::test]
async fn truncate_corrupt_middle_drops_everything_from_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, paths) = written(dir.path(), 20).await;
    let middle = &paths[1];
    let mut bytes = fs::read(middle).unwrap();
    let at = record_offset(10);
    bytes[(at + 20) as usize] ^= 1;
    fs::write(middle, &bytes).unwrap();
    let last_len = fs::metadata(&paths[2]).unwrap().len();
    config.truncate_corrupt_middle = true;
    let (wal, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(9));
    let t = recovery.truncated.unwrap();
    assert_eq!((&t.path, t.offset, t.lsn), (middle, at, Lsn(10)));
    assert_eq!(t.segments_removed, vec![paths[2].clone()]);
    assert_eq!(t.bytes_dropped, 5 * RECORD_BYTES + last_len);
    assert_eq!(segment_paths(dir.path()), paths[..2].to_vec());
    assert_eq!(append_n(&wal, 1, PAYLOAD_BYTES).await, vec![Lsn(10)]);
    let all = read_all(&wal, Lsn(1)).await;
    assert_eq!(all.last().unwrap(), &(Lsn(10), payload(Lsn(10), PAYLOAD_BYTES)));
}

#[tokio::test]
async fn a_missing_middle_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, paths) = written(dir.path(), 20).await;
    fs::remove_file(&paths[1]).unwrap();
    let err = Wal::open(config.clone()).await.unwrap_err();
    let gap = Damage::SegmentGap { expected: Lsn(8), found: Lsn(15) };
    assert!(matches!(&err, WalError::Corrupt { path, damage, .. } if path == &paths[2] && *damage == gap), "{err}");
    config.truncate_corrupt_middle = true;
    let (_, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(7));
    assert_eq!(segment_paths(dir.path()), paths[..1].to_vec());
}

#[tokio::test]
async fn a_bad_header_is_refused_in_any_segment() {
    for victim in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let (config, paths) = written(dir.path(), 10).await;
        let pristine = fs::read(&paths[victim]).unwrap();
        let mut bad = pristine.clone();
        bad[..8].copy_from_slice(b"NOTAWAL!");
        fs::write(&paths[victim], &bad).unwrap();
        let err = Wal::open(config.clone()).await.unwrap_err();
        assert!(matches!(err, WalError::BadMagic { .. }), "{err}");
        let name = paths[victim].file_name().unwrap().to_str().unwrap();
        assert!(err.to_string().contains(name), "{err}");
        let mut newer = pristine.clone();
        newer[7] = 3;
        fs::write(&paths[victim], &newer).unwrap();
        let err = Wal::open(config.clone()).await.unwrap_err();
        assert!(matches!(err, WalError::UnsupportedVersion { found: 3, supported: 2, .. }), "{err}");
        let mut flipped = pristine.clone();
        flipped[10] ^= 1; // inside prev_lsn: the header checksum catches it
        fs::write(&paths[victim], &flipped).unwrap();
        let err = Wal::open(config.clone()).await.unwrap_err();
        assert!(matches!(err, WalError::Corrupt { damage: Damage::BadSegmentHeader, .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        fs::write(&paths[victim], &pristine[..5]).unwrap();
        let err = Wal::open(config.clone()).await.unwrap_err();
        assert!(matches!(err, WalError::BadMagic { .. }), "{err}");
    }
}

#[tokio::test]
async fn stale_temp_segments_are_removed_and_other_files_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 10).await;
    let tmp = dir.path().join("000000000000000b.wal.tmp");
    fs::write(&tmp, b"XSWAL").unwrap();
    let other = dir.path().join("snapshot-0000000000000001.snap");
    fs::write(&other, b"not a segment").unwrap();
    let (wal, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(10));
    assert!(!tmp.exists() && other.exists());
    assert_eq!(segment_paths(dir.path()), paths);
    assert_eq!(lsns(&wal).await, lsn_range(1, 10));
}

/// A version-1 segment (8-byte header) holding the same records as `v2`.
fn as_v1(v2: &[u8]) -> Vec<u8> {
    let mut v1 = SEGMENT_MAGIC_V1.to_vec();
    v1.extend_from_slice(&v2[SEGMENT_HEADER_BYTES as usize..]);
    v1
}

#[tokio::test]
async fn version_1_segments_are_still_read_and_new_ones_are_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let (config, paths) = written(dir.path(), 10).await;
    for p in &paths {
        fs::write(p, as_v1(&fs::read(p).unwrap())).unwrap();
    }
    let (wal, recovery) = open(&config).await;
    assert_eq!((recovery.last_lsn, recovery.truncated), (Lsn(10), None));
    assert_eq!(lsns(&wal).await, lsn_range(1, 10));
    assert_eq!(append_n(&wal, 10, PAYLOAD_BYTES).await.last(), Some(&Lsn(20)));
    assert_eq!(lsns(&wal).await, lsn_range(1, 20));
    wal.shutdown().await.unwrap();
    let newest = segment_paths(dir.path()).pop().unwrap();
    assert_eq!(fs::read(&newest).unwrap()[7], 2, "new segments are written in version 2");
    let (wal, _) = open(&config).await;
    assert_eq!(lsns(&wal).await, lsn_range(1, 20));
}

#[tokio::test]
async fn a_floor_above_the_last_record_skips_to_it_and_the_skip_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = written(dir.path(), 10).await;
    config.lsn_floor = Lsn(25);
    let (wal, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(25));
    assert_eq!(recovery.skipped, Some((Lsn(11), Lsn(25))));
    assert_eq!(append_n(&wal, 2, PAYLOAD_BYTES).await, vec![Lsn(26), Lsn(27)]);
    let read: Vec<Lsn> = lsns(&wal).await;
    assert_eq!(read, lsn_range(1, 10).into_iter().chain(lsn_range(26, 27)).collect::<Vec<_>>());
    assert_eq!(read_all(&wal, Lsn(15)).await.into_iter().map(|r| r.0).collect::<Vec<_>>(), lsn_range(26, 27));
    wal.shutdown().await.unwrap();
    // Reopened with no floor: the declared skip is accepted, nothing is reissued.
    config.lsn_floor = Lsn::ZERO;
    let (wal, recovery) = open(&config).await;
    assert_eq!((recovery.last_lsn, recovery.skipped, recovery.truncated), (Lsn(27), None, None));
    assert_eq!(append_n(&wal, 1, PAYLOAD_BYTES).await, vec![Lsn(28)]);
    wal.shutdown().await.unwrap();
    // A floor at or below the last record changes nothing.
    config.lsn_floor = Lsn(20);
    let (_, recovery) = open(&config).await;
    assert_eq!((recovery.last_lsn, recovery.skipped), (Lsn(28), None));
}

#[tokio::test]
async fn an_empty_directory_with_a_floor_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Durability::Always);
    config.lsn_floor = Lsn(40);
    let (wal, recovery) = open(&config).await;
    assert_eq!((recovery.last_lsn, recovery.skipped), (Lsn(40), Some((Lsn(1), Lsn(40)))));
    assert_eq!(append_n(&wal, 1, PAYLOAD_BYTES).await, vec![Lsn(41)]);
    assert_eq!(read_all(&wal, Lsn(41)).await.into_iter().map(|r| r.0).collect::<Vec<_>>(), vec![Lsn(41)]);
    assert!(matches!(wal.read_from(Lsn(1), 10, 1 << 20).await, Err(WalError::Truncated { oldest: Lsn(41), .. })));
}
