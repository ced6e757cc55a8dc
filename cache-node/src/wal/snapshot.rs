//! Snapshot files: the store's records as of an LSN, so the WAL before it can go.
//!
//! A snapshot at LSN `L` holds the effect of every WAL record <= `L`; start-up loads
//! it and replays the WAL from `L + 1`. File name `snapshot-{lsn:016x}.snap`.
//!
//! ```text
//! file    = header record* trailer
//! header  = "XSSNAP\0" | version u8 = 1 | lsn u64 LE | record_count u64 LE
//!           | crc32c(previous 24 bytes) u32 LE                    28 bytes
//! record  = len u32 LE | crc32c(payload) u32 LE | payload         8 + len bytes
//! trailer = crc32c(every record byte, from offset 28) u32 LE       4 bytes
//! ```
//!
//! The file ends right after the trailer. It is written as `….snap.tmp`, fsynced,
//! renamed and the directory fsynced, so a snapshot file is whole or absent; a
//! damaged one is refused ([`WalError::SnapshotCorrupt`], [`WalError::BadMagic`],
//! [`WalError::UnsupportedVersion`]) and [`latest_snapshot`] falls back to an older
//! one. Falling back only helps if the WAL still holds the records after the older
//! snapshot: keep two snapshots and remove WAL segments before the older one.
//!
//! These functions do blocking file I/O: call them from `spawn_blocking`.

use super::error::{IoContext, WalError};
use super::format::{fsync_dir, list_dir, read_full};
use super::Lsn;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Snapshot header magic: `b"XSSNAP\0"` then the format version byte.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"XSSNAP\0\x01";
/// The only snapshot format version this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;
/// Bytes of the snapshot header.
pub const SNAPSHOT_HEADER_BYTES: usize = 28;
const RECORD_HEADER_BYTES: usize = 8;
const TRAILER_BYTES: u64 = 4;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";
const IO_BUFFER_BYTES: usize = 256 * 1024;

/// `snapshot-{lsn:016x}.snap`.
pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("{PREFIX}{:016x}{SUFFIX}", lsn.0)
}

fn parse_snapshot_file_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let is_lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if hex.len() != 16 || !hex.chars().all(is_lower_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

fn encode_header(lsn: Lsn, records: u64) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    header[16..24].copy_from_slice(&records.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Writes `snapshot-{lsn:016x}.snap` in `dir` durably (temp file, fsync, rename,
/// fsync dir) and returns its path.
pub fn write_snapshot<I, B>(dir: &Path, lsn: Lsn, records: I) -> Result<PathBuf, WalError>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    prepare_snapshot(dir, lsn, records)?.commit()
}

/// A snapshot written and fsynced under its temporary name, not yet in place: the
/// caller makes sure what it holds is durable elsewhere (the WAL) before
/// [`PendingSnapshot::commit`]. Dropped uncommitted, its file is removed.
#[derive(Debug)]
pub struct PendingSnapshot {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    lsn: Lsn,
    records: u64,
    committed: bool,
}

/// Writes the snapshot under its temporary name (see [`PendingSnapshot`]).
pub fn prepare_snapshot<I, B>(dir: &Path, lsn: Lsn, records: I) -> Result<PendingSnapshot, WalError>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let path = dir.join(snapshot_file_name(lsn));
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let records = match write_tmp(&tmp, lsn, records) {
        Ok(records) => records,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    Ok(PendingSnapshot { dir: dir.to_path_buf(), tmp, path, lsn, records, committed: false })
}

impl PendingSnapshot {
    /// Renames the file into place and fsyncs the directory.
    pub fn commit(mut self) -> Result<PathBuf, WalError> {
        fs::rename(&self.tmp, &self.path).ctx("rename snapshot", &self.path)?;
        self.committed = true;
        fsync_dir(&self.dir)?;
        tracing::info!(path = %self.path.display(), lsn = self.lsn.0, records = self.records, "snapshot written");
        Ok(self.path.clone())
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes and fsyncs the whole temp file; returns the record count.
fn write_tmp<I, B>(tmp: &Path, lsn: Lsn, records: I) -> Result<u64, WalError>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp).ctx("create snapshot", tmp)?;
    let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
    out.write_all(&encode_header(lsn, 0)).ctx("write snapshot", tmp)?;
    let (mut count, mut crc) = (0u64, 0u32);
    for record in records {
        let payload = record.as_ref();
        let len = u32::try_from(payload.len())
            .map_err(|_| WalError::RecordTooLarge { bytes: payload.len(), record_bytes_max: u32::MAX as usize })?;
        let mut frame = [0u8; RECORD_HEADER_BYTES];
        frame[..4].copy_from_slice(&len.to_le_bytes());
        frame[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        out.write_all(&frame).ctx("write snapshot", tmp)?;
        out.write_all(payload).ctx("write snapshot", tmp)?;
        crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, &frame), payload);
        count += 1;
    }
    out.write_all(&crc.to_le_bytes()).ctx("write snapshot", tmp)?;
    let mut file = out.into_inner().map_err(|e| WalError::io("write snapshot", tmp, e.into_error()))?;
    file.seek(SeekFrom::Start(0)).ctx("seek snapshot", tmp)?;
    file.write_all(&encode_header(lsn, count)).ctx("write snapshot header", tmp)?;
    file.sync_all().ctx("fsync snapshot", tmp)?;
    Ok(count)
}

/// What a valid snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub lsn: Lsn,
    pub records: u64,
}

/// Streams the records of a snapshot into `f`, checking every checksum, and returns
/// the snapshot's LSN. A damaged file is an error — possibly after `f` has seen some
/// records: use [`latest_snapshot`] (which checks the whole file first) to choose.
pub fn read_snapshot<E, F>(path: &Path, mut f: F) -> Result<Lsn, E>
where
    E: From<WalError>,
    F: FnMut(&[u8]) -> Result<(), E>,
{
    let mut reader = SnapshotReader::open(path)?;
    let mut payload = Vec::new();
    for _ in 0..reader.records {
        reader.next_record(&mut payload)?;
        f(&payload)?;
    }
    reader.finish()?;
    Ok(reader.lsn)
}

/// Reads a whole snapshot and checks it.
pub fn verify_snapshot(path: &Path) -> Result<SnapshotInfo, WalError> {
    let mut records = 0;
    let lsn = read_snapshot(path, |_| {
        records += 1;
        Ok::<(), WalError>(())
    })?;
    Ok(SnapshotInfo { lsn, records })
}

/// The snapshot files of `dir` by name, newest first (not checked).
pub fn list_snapshots(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, WalError> {
    let mut found: Vec<(Lsn, PathBuf)> = list_dir(dir)?
        .into_iter()
        .filter_map(|name| Some((parse_snapshot_file_name(&name)?, dir.join(name))))
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(found)
}

/// The newest snapshot that checks out whole; damaged newer ones are skipped with a
/// warning. Reads each candidate completely.
pub fn latest_snapshot(dir: &Path) -> Result<Option<(Lsn, PathBuf)>, WalError> {
    for (lsn, path) in list_snapshots(dir)? {
        match verify_snapshot(&path) {
            Ok(_) => return Ok(Some((lsn, path))),
            Err(e) if e.is_corruption() => {
                tracing::warn!(path = %path.display(), error = %e, "skipping damaged snapshot");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Deletes the snapshots older than `lsn`, always keeping the newest one. Returns
/// the number removed.
pub fn remove_snapshots_before(dir: &Path, lsn: Lsn) -> Result<u64, WalError> {
    let mut removed = 0;
    for (snap_lsn, path) in list_snapshots(dir)?.into_iter().skip(1) {
        if snap_lsn < lsn {
            fs::remove_file(&path).ctx("remove snapshot", &path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
        tracing::info!(dir = %dir.display(), removed, before_lsn = lsn.0, "snapshots removed");
    }
    Ok(removed)
}

/// Removes `*.snap.tmp` files left by a snapshot that a crash interrupted (the
/// finished file is only ever made by renaming one). Returns how many went.
pub fn remove_temp_files(dir: &Path) -> Result<u64, WalError> {
    let mut removed = 0;
    for name in crate::wal::format::list_dir(dir)? {
        if name.ends_with(".snap.tmp") {
            let path = dir.join(&name);
            fs::remove_file(&path).ctx("remove snapshot temp file", &path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed temp files of interrupted snapshots");
    }
    Ok(removed)
}

/// Sequential, checking reader of one snapshot file.
struct SnapshotReader {
    reader: BufReader<File>,
    path: PathBuf,
    offset: u64,
    file_len: u64,
    lsn: Lsn,
    records: u64,
    crc: u32,
}

impl SnapshotReader {
    fn open(path: &Path) -> Result<SnapshotReader, WalError> {
        let file = File::open(path).ctx("open snapshot", path)?;
        let file_len = file.metadata().ctx("stat snapshot", path)?.len();
        let mut reader = BufReader::with_capacity(IO_BUFFER_BYTES, file);
        let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
        let n = read_full(&mut reader, &mut header).ctx("read snapshot", path)?;
        check_magic(path, &header[..n.min(8)])?;
        let mut this = SnapshotReader {
            reader,
            path: path.to_path_buf(),
            offset: SNAPSHOT_HEADER_BYTES as u64,
            file_len,
            lsn: Lsn::ZERO,
            records: 0,
            crc: 0,
        };
        this.check_header(&header[..n])?;
        Ok(this)
    }

    fn check_header(&mut self, header: &[u8]) -> Result<(), WalError> {
        if header.len() < SNAPSHOT_HEADER_BYTES {
            return Err(self.corrupt(0, "file shorter than its header"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().expect("8 bytes"));
        let stored = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
        if crc32c::crc32c(&header[..24]) != stored {
            return Err(self.corrupt(0, "header checksum mismatch"));
        }
        (self.lsn, self.records) = (Lsn(u64_at(8)), u64_at(16));
        let name = self.path.file_name().and_then(|n| n.to_str());
        match name.and_then(parse_snapshot_file_name) {
            Some(named) if named != self.lsn => {
                Err(self.corrupt(0, &format!("header lsn {} but file named for {named}", self.lsn)))
            }
            _ => Ok(()),
        }
    }

    fn next_record(&mut self, payload: &mut Vec<u8>) -> Result<(), WalError> {
        let left = self.file_len.saturating_sub(self.offset + TRAILER_BYTES);
        if left < RECORD_HEADER_BYTES as u64 {
            return Err(self.corrupt(self.offset, "file ends before the announced records"));
        }
        let mut frame = [0u8; RECORD_HEADER_BYTES];
        self.read_exact(&mut frame)?;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let stored = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if u64::from(len) > left - RECORD_HEADER_BYTES as u64 {
            return Err(self.corrupt(self.offset, &format!("record length {len} past the end")));
        }
        payload.clear();
        payload.resize(len as usize, 0);
        self.read_exact(payload)?;
        if crc32c::crc32c(payload) != stored {
            return Err(self.corrupt(self.offset, "record checksum mismatch"));
        }
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &frame), payload);
        self.offset += RECORD_HEADER_BYTES as u64 + u64::from(len);
        Ok(())
    }

    /// Checks the trailer and that nothing follows it.
    fn finish(&mut self) -> Result<(), WalError> {
        if self.file_len != self.offset + TRAILER_BYTES {
            let reason = format!("{} bytes after the last record", self.file_len - self.offset);
            return Err(self.corrupt(self.offset, &reason));
        }
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        self.read_exact(&mut trailer)?;
        if u32::from_le_bytes(trailer) != self.crc {
            return Err(self.corrupt(self.offset, "trailer checksum mismatch"));
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WalError> {
        let n = read_full(&mut self.reader, buf).ctx("read snapshot", &self.path)?;
        if n < buf.len() {
            return Err(self.corrupt(self.offset, "file shrank while reading"));
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, reason: &str) -> WalError {
        WalError::SnapshotCorrupt { path: self.path.clone(), offset, reason: reason.to_string() }
    }
}

fn check_magic(path: &Path, magic: &[u8]) -> Result<(), WalError> {
    let magic_len = SNAPSHOT_MAGIC.len() - 1;
    if magic.len() < SNAPSHOT_MAGIC.len() || magic[..magic_len] != SNAPSHOT_MAGIC[..magic_len] {
        return Err(WalError::BadMagic { kind: "snapshot", path: path.to_path_buf(), found: magic.to_vec() });
    }
    if magic[magic_len] != SNAPSHOT_FORMAT_VERSION {
        return Err(WalError::UnsupportedVersion {
            kind: "snapshot",
            path: path.to_path_buf(),
            found: magic[magic_len],
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("record-{i}").into_bytes()).collect()
    }

    #[test]
    fn temp_files_of_interrupted_snapshots_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let done = write_snapshot(dir.path(), Lsn(7), records(3)).unwrap();
        std::fs::write(dir.path().join("snapshot-0000000000000009.snap.tmp"), b"half").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 0);
        assert!(done.exists());
        assert_eq!(latest_snapshot(dir.path()).unwrap().map(|(l, _)| l), Some(Lsn(7)));
    }

    fn read_all(path: &Path) -> Result<(Lsn, Vec<Vec<u8>>), WalError> {
        let mut out = Vec::new();
        let lsn = read_snapshot(path, |r| {
            out.push(r.to_vec());
            Ok::<(), WalError>(())
        })?;
        Ok((lsn, out))
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), Lsn(42), records(100)).unwrap();
        assert_eq!(path.file_name().unwrap(), "snapshot-000000000000002a.snap");
        let (lsn, got) = read_all(&path).unwrap();
        assert_eq!(lsn, Lsn(42));
        assert_eq!(got, records(100));
        let info = verify_snapshot(&path).unwrap();
        assert_eq!(info, SnapshotInfo { lsn: Lsn(42), records: 100 });
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), Lsn(0), Vec::<Vec<u8>>::new()).unwrap();
        assert_eq!(read_all(&path).unwrap(), (Lsn(0), vec![]));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), Lsn(7), records(3)).unwrap();
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let err = read_all(&path).unwrap_err();
            assert!(err.is_corruption(), "byte {i}: {err}");
            assert!(err.to_string().contains("snapshot-0000000000000007.snap"), "{err}");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), Lsn(7), records(3)).unwrap();
        let good = fs::read(&path).unwrap();
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            let err = read_all(&path).unwrap_err();
            assert!(err.is_corruption(), "length {len}: {err}");
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(read_all(&path).unwrap_err().is_corruption());
    }

    #[test]
    fn unknown_version_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), Lsn(7), records(1)).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[7] = 2;
        fs::write(&path, &bytes).unwrap();
        let err = read_all(&path).unwrap_err();
        assert!(matches!(err, WalError::UnsupportedVersion { found: 2, .. }), "{err}");
    }

    #[test]
    fn latest_valid_snapshot_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(latest_snapshot(dir.path()).unwrap(), None);
        let old = write_snapshot(dir.path(), Lsn(10), records(2)).unwrap();
        let new = write_snapshot(dir.path(), Lsn(20), records(2)).unwrap();
        assert_eq!(latest_snapshot(dir.path()).unwrap(), Some((Lsn(20), new.clone())));
        let mut bytes = fs::read(&new).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        fs::write(&new, &bytes).unwrap();
        assert_eq!(latest_snapshot(dir.path()).unwrap(), Some((Lsn(10), old)));
        let listed: Vec<Lsn> = list_snapshots(dir.path()).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(listed, vec![Lsn(20), Lsn(10)]);
    }

    #[test]
    fn stray_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("snapshot-0000000000000009.snap.tmp"), b"junk").unwrap();
        fs::write(dir.path().join("0000000000000001.wal"), b"junk").unwrap();
        assert_eq!(list_snapshots(dir.path()).unwrap(), vec![]);
    }

    #[test]
    fn remove_before_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for lsn in [5, 10, 15] {
            write_snapshot(dir.path(), Lsn(lsn), records(1)).unwrap();
        }
        assert_eq!(remove_snapshots_before(dir.path(), Lsn(10)).unwrap(), 1);
        let left: Vec<Lsn> = list_snapshots(dir.path()).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(left, vec![Lsn(15), Lsn(10)]);
        assert_eq!(remove_snapshots_before(dir.path(), Lsn(100)).unwrap(), 1);
        let left: Vec<Lsn> = list_snapshots(dir.path()).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(left, vec![Lsn(15)]);
    }
}
