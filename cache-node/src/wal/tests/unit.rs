//! Unit tests of the WAL API on real files.

use super::{append_n, config, open, payload, read_all, segment_paths};
use crate::wal::{segment_file_name, Durability, Lsn, PayloadBuilder, Wal, WalConfig, WalError};

#[tokio::test]
async fn append_then_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, recovery) = open(&config(dir.path(), Durability::Always)).await;
    assert_eq!(recovery.last_lsn, Lsn::ZERO);
    assert_eq!(append_n(&wal, 10, 20).await, (1..=10).map(Lsn).collect::<Vec<_>>());
    let all = read_all(&wal, Lsn::ZERO).await;
    assert_eq!(all.len(), 10);
    for (lsn, bytes) in &all {
        assert_eq!(bytes, &payload(*lsn, 20));
    }
    let some = wal.read_from(Lsn(5), 2, usize::MAX).await.unwrap();
    assert_eq!(some.iter().map(|r| r.0).collect::<Vec<_>>(), vec![Lsn(5), Lsn(6)]);
    assert!(read_all(&wal, Lsn(11)).await.is_empty());
    assert!(wal.read_from(Lsn(1), 0, usize::MAX).await.unwrap().is_empty());
    wal.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_bytes_limits_a_read_but_returns_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::No)).await;
    append_n(&wal, 5, 100).await;
    let one = wal.read_from(Lsn(1), 10, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    let two = wal.read_from(Lsn(1), 10, 250).await.unwrap();
    assert_eq!(two.len(), 2);
}

#[tokio::test]
async fn lsns_continue_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), Durability::Everysec);
    let (wal, _) = open(&config).await;
    append_n(&wal, 3, 10).await;
    wal.shutdown().await.unwrap();
    let (wal, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(3));
    assert_eq!(recovery.records, 3);
    assert_eq!(recovery.truncated, None);
    assert_eq!(wal.last_lsn(), Lsn(3));
    assert_eq!(append_n(&wal, 1, 10).await, vec![Lsn(4)]);
    assert_eq!(read_all(&wal, Lsn(1)).await.len(), 4);
}

#[tokio::test]
async fn dropping_every_handle_closes_the_wal_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), Durability::No);
    let (wal, _) = open(&config).await;
    let watermark = wal.subscribe();
    append_n(&wal, 3, 10).await;
    drop(wal);
    let mut watermark = watermark;
    // The writer drops its watch sender when it has synced and stopped.
    while watermark.changed().await.is_ok() {}
    let (_, recovery) = open(&config).await;
    assert_eq!(recovery.last_lsn, Lsn(3));
}

#[tokio::test]
async fn segments_roll_over_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::Always)).await;
    // 8 header + 3 * (16 + 100) = 356 >= 256: three records per segment.
    append_n(&wal, 10, 100).await;
    let names: Vec<String> =
        segment_paths(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let expected: Vec<String> = [1, 4, 7, 10].map(|l| segment_file_name(Lsn(l))).to_vec();
    assert_eq!(names, expected);
    let from_middle = read_all(&wal, Lsn(3)).await;
    assert_eq!(from_middle.iter().map(|r| r.0).collect::<Vec<_>>(), (3..=10).map(Lsn).collect::<Vec<_>>());
    // Small sequential reads (using the remembered positions) see the same records.
    let mut next = Lsn(1);
    let mut pieces = Vec::new();
    while next <= Lsn(10) {
        let batch = wal.read_from(next, 2, usize::MAX).await.unwrap();
        next = batch.last().unwrap().0.next();
        pieces.extend(batch);
    }
    assert_eq!(pieces, read_all(&wal, Lsn(1)).await);
}

#[tokio::test]
async fn remove_segments_before_keeps_what_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::Always)).await;
    append_n(&wal, 10, 100).await; // segments start at 1, 4, 7, 10
    assert_eq!(wal.remove_segments_before(Lsn(3)).await.unwrap(), 0);
    assert_eq!(wal.remove_segments_before(Lsn(5)).await.unwrap(), 1);
    assert_eq!(wal.oldest_lsn(), Lsn(4));
    assert_eq!(segment_paths(dir.path()).len(), 3);
    let err = wal.read_from(Lsn(2), 10, usize::MAX).await.unwrap_err();
    assert!(matches!(err, WalError::Truncated { requested: Lsn(2), oldest: Lsn(4) }), "{err}");
    assert_eq!(read_all(&wal, Lsn(4)).await.len(), 7);
    // Never the writer's segment, even when everything is older.
    assert_eq!(wal.remove_segments_before(Lsn(1000)).await.unwrap(), 2);
    assert_eq!(wal.oldest_lsn(), Lsn(10));
    assert_eq!(read_all(&wal, Lsn(10)).await.len(), 1);
}

#[tokio::test]
async fn lsns_are_not_reused_after_every_old_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Durability::Always);
    config.segment_bytes_max = 1; // one record per segment
    let (wal, _) = open(&config).await;
    append_n(&wal, 5, 10).await;
    assert_eq!(wal.remove_segments_before(Lsn(100)).await.unwrap(), 4);
    wal.shutdown().await.unwrap();
    let (wal, recovery) = open(&config).await;
    assert_eq!((recovery.oldest_lsn, recovery.last_lsn), (Lsn(5), Lsn(5)));
    assert_eq!(append_n(&wal, 1, 10).await, vec![Lsn(6)]);
}

#[tokio::test]
async fn too_large_payload_is_refused_without_using_an_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Durability::Always);
    config.record_bytes_max = 32;
    let (wal, _) = open(&config).await;
    let err = wal.append(|_| vec![0; 33]).await.unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { bytes: 33, record_bytes_max: 32 }));
    assert_eq!(wal.append(|_| vec![0; 32]).await.unwrap(), Lsn(1));
}

#[tokio::test]
async fn panicking_builder_fails_only_its_own_append() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::Always)).await;
    let err = wal.append(|_| panic!("builder bug")).await.unwrap_err();
    assert!(matches!(err, WalError::BuildPanicked { lsn: Lsn(1) }));
    assert_eq!(append_n(&wal, 1, 10).await, vec![Lsn(1)]);
}

fn builders(sizes: &[usize]) -> Vec<PayloadBuilder> {
    sizes.iter().map(|&n| crate::wal::payload_of(move |lsn| payload(lsn, n))).collect()
}

#[tokio::test]
async fn batches_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Durability::Always);
    config.record_bytes_max = 64;
    let (wal, _) = open(&config).await;
    let lsns = wal.append_batch(builders(&[10, 10, 10])).await.unwrap();
    assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3)]);
    let err = wal.append_batch(builders(&[10, 100, 10])).await.unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { .. }));
    assert_eq!(wal.append_batch(builders(&[10])).await.unwrap(), vec![Lsn(4)]);
    assert!(wal.append_batch(Vec::new()).await.unwrap().is_empty());
    assert_eq!(read_all(&wal, Lsn(1)).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_lsns_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Durability::Always);
    config.queue_len_max = 2; // callers wait for room: backpressure, not errors
    config.segment_bytes_max = 4096;
    let (wal, _) = open(&config).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let wal = wal.clone();
            tokio::spawn(async move { append_n(&wal, 25, 30).await })
        })
        .collect();
    let mut lsns = Vec::new();
    for task in tasks {
        lsns.extend(task.await.unwrap());
    }
    lsns.sort();
    assert_eq!(lsns, (1..=400).map(Lsn).collect::<Vec<_>>());
    for (lsn, bytes) in read_all(&wal, Lsn(1)).await {
        assert_eq!(bytes, payload(lsn, 30), "the payload built for {lsn} is at {lsn}");
    }
}

#[tokio::test]
async fn watermark_follows_acknowledged_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::Always)).await;
    let mut watermark = wal.subscribe();
    assert_eq!(*watermark.borrow_and_update(), Lsn::ZERO);
    append_n(&wal, 2, 10).await;
    assert!(watermark.has_changed().unwrap());
    assert_eq!(*watermark.borrow_and_update(), Lsn(2));
    assert_eq!(wal.last_lsn(), Lsn(2));
}

#[tokio::test]
async fn handles_report_closed_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::No)).await;
    let other = wal.clone();
    wal.shutdown().await.unwrap();
    let err = other.append(|_| vec![1]).await.unwrap_err();
    assert!(matches!(err, WalError::Closed), "{err}");
    // Reading needs no writer.
    assert!(read_all(&other, Lsn(1)).await.is_empty());
}

#[tokio::test]
async fn sync_in_no_mode_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::No)).await;
    wal.sync().await.unwrap();
    append_n(&wal, 2, 10).await;
    wal.sync().await.unwrap();
}

#[tokio::test]
async fn replay_streams_from_an_lsn_and_passes_errors_through() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::No)).await;
    append_n(&wal, 10, 100).await;
    let mut seen = Vec::new();
    let replayed = wal.replay(Lsn(4), |lsn, bytes| {
        assert_eq!(bytes, payload(lsn, 100).as_slice());
        seen.push(lsn);
        Ok::<(), WalError>(())
    });
    assert_eq!(replayed.unwrap(), 7);
    assert_eq!(seen, (4..=10).map(Lsn).collect::<Vec<_>>());
    #[derive(Debug)]
    enum ApplyError {
        Wal(WalError),
        Bad(Lsn),
    }
    impl From<WalError> for ApplyError {
        fn from(e: WalError) -> Self {
            ApplyError::Wal(e)
        }
    }
    let err = wal.replay(Lsn(1), |lsn, _| if lsn == Lsn(3) { Err(ApplyError::Bad(lsn)) } else { Ok(()) });
    assert!(matches!(err, Err(ApplyError::Bad(Lsn(3)))));
    wal.remove_segments_before(Lsn(5)).await.unwrap();
    let err = wal.replay(Lsn(1), |_, _| Ok::<(), ApplyError>(()));
    assert!(matches!(err, Err(ApplyError::Wal(WalError::Truncated { .. }))));
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path(), Durability::Always);
    config.queue_len_max = 0;
    let err = Wal::open(config).await.unwrap_err();
    assert!(err.to_string().contains("queue_len_max"), "{err}");
}

#[test]
fn durability_parses_and_prints() {
    for (text, mode) in [("always", Durability::Always), ("everysec", Durability::Everysec), ("no", Durability::No)] {
        assert_eq!(text.parse::<Durability>().unwrap(), mode);
        assert_eq!(mode.to_string(), text);
        assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{text}\""));
        let parsed: Durability = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(parsed, mode);
    }
    let err = "Always".parse::<Durability>().unwrap_err();
    assert!(err.to_string().contains("always, everysec or no"), "{err}");
}

#[test]
fn config_deserializes_with_defaults() {
    let config: WalConfig = serde_json::from_str(r#"{"dir":"/d","durability":"always"}"#).unwrap();
    assert_eq!(config, WalConfig::new("/d", Durability::Always));
    assert!(serde_json::from_str::<WalConfig>(r#"{"dir":"/d","nope":1}"#).is_err());
}

#[test]
fn lsn_basics() {
    assert_eq!(Lsn::ZERO.next(), Lsn::FIRST);
    assert_eq!(Lsn(5).prev(), Lsn(4));
    assert_eq!(Lsn::ZERO.prev(), Lsn::ZERO);
    assert_eq!(Lsn(42).to_string(), "42");
    assert_eq!(serde_json::to_string(&Lsn(42)).unwrap(), "42");
}

#[tokio::test]
async fn durable_watermark_trails_in_no_mode_and_not_in_always_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::No)).await;
    append_n(&wal, 3, 10).await;
    assert_eq!((wal.last_lsn(), wal.durable_lsn()), (Lsn(3), Lsn::ZERO));
    let mut durable = wal.subscribe_durable();
    wal.sync().await.unwrap();
    assert_eq!(*durable.borrow_and_update(), Lsn(3));
    wal.shutdown().await.unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::Always)).await;
    assert_eq!(wal.durable_lsn(), Lsn(3)); // open fsyncs what it recovered
    append_n(&wal, 2, 10).await;
    assert_eq!((wal.last_lsn(), wal.durable_lsn()), (Lsn(5), Lsn(5)));
}

#[tokio::test]
async fn everysec_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(&config(dir.path(), Durability::Everysec)).await;
    append_n(&wal, 2, 10).await;
    let mut durable = wal.subscribe_durable();
    // Real time: the first tick is due at once, later ones 1 s apart.
    let synced = durable.wait_for(|lsn| *lsn == Lsn(2));
    tokio::time::timeout(std::time::Duration::from_secs(3), synced)
        .await
        .expect("background fsync within the interval")
        .unwrap();
}
