//! LazyFS, a FUSE file system that keeps written data in its own page cache until
//! `fsync`/`fdatasync`, mounted for a power-loss test: [`LazyFs::clear_cache`] drops
//! every byte not yet synced, which is what a power cut does to a disk (a `kill -9`
//! keeps the kernel's page cache, so it never tests an fsync).
//!
//! [`LazyFs::mount`] mounts it over a fresh backing directory at a fresh mount point,
//! both in the fixture's temp directory with its config file, FIFOs and logs. File
//! names and directories go to the backing directory at once; file contents only on
//! sync. Dropping the fixture unmounts (`fusermount3 -u`; the LazyFS process is
//! killed if that fails). Drop every process using the mount first: a busy mount does
//! not unmount.
//!
//! To cut the power under a running node, stop it first, then clear the cache, then
//! kill it ([`crate::procs::NodeProc::power_cut`]): clearing the cache under a process
//! that keeps writing tests a machine that does not exist.
//!
//! Binary: `$XSITE_LAZYFS_BIN`, else `~/.cache/xsite/bin/lazyfs/lazyfs` (copied there by
//! `scripts/setup.sh` from the ready build in `../shared/bin/lazyfs`). It needs Debian's
//! `fuse3` (libfuse3, `fusermount3`) and `/dev/fuse`. [`LazyFs::unavailable_reason`] says
//! why it cannot run on this machine; [`LazyFs::skip`] turns that into a skipped test,
//! or a failure when `XSITE_REQUIRE_POWERLOSS=1` (set by `scripts/test-all.sh` where the
//! binary is installed, so CI never passes a tier that did not run).

use crate::procs::{keep_test_dirs, log_tail, open_log};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// How long LazyFS may take from spawn to a mounted file system with its fault FIFO
/// (it pre-allocates its whole cache first: about 0.6 s for 512 MiB here).
const MOUNT_TIMEOUT_MS: u64 = 20_000;
/// How long `lazyfs::clear-cache` may take to answer `finished::clear-cache`.
const CLEAR_CACHE_TIMEOUT_MS: u64 = 10_000;
/// How long unmounting may take (retried while the mount is busy) and how long the
/// LazyFS process may take to exit afterwards.
const UNMOUNT_TIMEOUT_MS: u64 = 10_000;
/// Pause between two polls of a condition.
const POLL_INTERVAL_MS: u64 = 20;
/// LazyFS's cache. Every byte written and not yet synced (and the synced pages it
/// keeps) must fit: a write that finds the cache full goes straight to the backing
/// directory, as if synced. The 2 GiB of the upstream example takes 3.6 s to
/// pre-allocate on a 2-core machine.
const CACHE_SIZE: &str = "512mb";
/// Log lines shown when something fails.
const LOG_TAIL_LINES: usize = 40;
/// The command that drops unsynced data, and LazyFS's answer once it is done.
const CLEAR_CACHE_COMMAND: &str = "lazyfs::clear-cache";
const CLEAR_CACHE_DONE: &str = "finished::clear-cache";
/// Environment variable that turns a missing LazyFS into a failure instead of a skip.
pub const REQUIRE_ENV: &str = "XSITE_REQUIRE_POWERLOSS";

/// The LazyFS entry point: `$XSITE_LAZYFS_BIN`, else `~/.cache/xsite/bin/lazyfs/lazyfs`.
pub fn lazyfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XSITE_LAZYFS_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/xsite/bin/lazyfs/lazyfs")
}

/// A mounted LazyFS and the process serving it.
pub struct LazyFs {
    dir: tempfile::TempDir,
    mount: PathBuf,
    backing: PathBuf,
    faults_fifo: PathBuf,
    done_fifo: PathBuf,
    child: Option<Child>,
}

impl LazyFs {
    /// Why the power-loss tier cannot run here (no LazyFS binary, no `/dev/fuse`, no
    /// `fusermount3` or `mountpoint`), or None when it can.
    pub fn unavailable_reason() -> Option<String> {
        let bin = lazyfs_bin();
        if !bin.is_file() {
            return Some(format!(
                "no LazyFS at {} (set XSITE_LAZYFS_BIN, or run scripts/setup.sh where ../shared/bin/lazyfs exists)",
                bin.display()
            ));
        }
        if !Path::new("/dev/fuse").exists() {
            return Some("no /dev/fuse: FUSE is not available on this machine".into());
        }
        for (tool, arg, package) in [("fusermount3", "-V", "fuse3"), ("mountpoint", "--version", "util-linux")] {
            let runs = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
            if !runs {
                return Some(format!("no {tool} on PATH (Debian package {package})"));
            }
        }
        None
    }

    /// Whether `test` must be skipped: prints `skipped: <reason>` and returns true when
    /// LazyFS cannot run here; panics instead when `XSITE_REQUIRE_POWERLOSS=1`.
    pub fn skip(test: &str) -> bool {
        let Some(reason) = LazyFs::unavailable_reason() else { return false };
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{test}: {REQUIRE_ENV}=1 but the power-loss tier cannot run: {reason}");
        }
        eprintln!("{test}: skipped: {reason}");
        true
    }

    /// Mount LazyFS over a fresh backing directory and wait (bounded) until the mount
    /// point is a mount and the fault FIFO exists.
    pub async fn mount() -> LazyFs {
        // No '-' in the prefix: LazyFS ignores a `--config-path` argument that contains
        // "-o" (in any case), and the random part of the name may start with an o.
        let dir = tempfile::Builder::new().prefix("xsite_lazyfs_").tempdir().expect("creating LazyFS's temp dir");
        let mount = dir.path().join("mnt");
        let backing = dir.path().join("backing");
        for d in [&mount, &backing] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        let mut fs = LazyFs {
            faults_fifo: dir.path().join("faults.fifo"),
            done_fifo: dir.path().join("done.fifo"),
            mount,
            backing,
            dir,
            child: None,
        };
        fs.spawn();
        fs.wait_mounted().await;
        fs
    }

    /// The mount point: files here live in LazyFS's cache until synced.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The backing directory (what survives a power cut, once synced).
    pub fn backing_dir(&self) -> &Path {
        &self.backing
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("lazyfs.toml")
    }

    /// LazyFS's own log (config `logfile`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("lazyfs.log")
    }

    /// The process's stdout and stderr.
    fn output_path(&self) -> PathBuf {
        self.dir.path().join("lazyfs.out")
    }

    pub fn log_tail(&self) -> String {
        format!("{}\n{}", log_tail(&self.output_path(), LOG_TAIL_LINES), log_tail(&self.log_path(), LOG_TAIL_LINES))
    }

    /// Panic with `what`, the mount point and the logs.
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("LazyFS at {}: {what}\n{}", self.mount.display(), self.log_tail())
    }

    fn config_text(&self) -> String {
        let quoted = |p: &Path| format!("\"{}\"", p.display().to_string().replace('\\', "\\\\").replace('"', "\\\""));
        format!(
            "[faults]\nfifo_path={}\nfifo_path_completed={}\n\n[cache]\napply_eviction=false\n\n\
             [cache.simple]\ncustom_size=\"{CACHE_SIZE}\"\nblocks_per_page=1\n\n\
             [filesystem]\nlog_all_operations=false\nlogfile={}\n",
            quoted(&self.faults_fifo),
            quoted(&self.done_fifo),
            quoted(&self.log_path())
        )
    }

    fn spawn(&mut self) {
        let config = self.config_path();
        if config.to_string_lossy().to_lowercase().contains("-o") {
            self.fail(format!(
                "LazyFS would ignore --config-path {}: it takes any argument containing \"-o\" for an option (set TMPDIR to a path without \"-o\")",
                config.display()
            ));
        }
        std::fs::write(&config, self.config_text()).expect("writing LazyFS's config file");
        let bin = lazyfs_bin();
        let (out, err) = open_log(&self.output_path(), &format!("lazyfs mount {}", self.mount.display()));
        // Foreground (-f), so this fixture owns the process. No `allow_other`: the node
        // runs as the same user, and other users would need `user_allow_other`.
        let child = Command::new(&bin)
            .arg(&self.mount)
            .arg("--config-path")
            .arg(self.config_path())
            .args(["-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.backing.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting LazyFS {}: {e}", bin.display()));
        self.child = Some(child);
    }

    fn is_mounted(&self) -> bool {
        Command::new("mountpoint").arg("-q").arg(&self.mount).status().map(|s| s.success()).unwrap_or(false)
    }

    fn fifo_exists(&self) -> bool {
        std::fs::metadata(&self.faults_fifo).map(|m| m.file_type().is_fifo()).unwrap_or(false)
    }

    async fn wait_mounted(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                self.fail(format!("LazyFS exited while mounting ({status})"));
            }
            if self.is_mounted() && self.fifo_exists() {
                tracing::info!(mount = %self.mount.display(), ms = started.elapsed().as_millis() as u64, "lazyfs mounted");
                return;
            }
            if started.elapsed() > Duration::from_millis(MOUNT_TIMEOUT_MS) {
                self.fail(format!(
                    "waited {MOUNT_TIMEOUT_MS} ms for `mountpoint -q` to hold and the fault FIFO {} to exist",
                    self.faults_fifo.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Drop every byte not yet synced (`lazyfs::clear-cache`), and wait (bounded) for
    /// LazyFS to answer `finished::clear-cache`. A reader is open on the completion
    /// FIFO before the command is sent: LazyFS's answer is lost when nobody reads.
    pub async fn clear_cache(&self) {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(CLEAR_CACHE_TIMEOUT_MS);
        // Read-write, so the reader never sees end-of-file between LazyFS's writes.
        let mut done = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&self.done_fifo)
            .unwrap_or_else(|e| self.fail(format!("opening the completion FIFO {}: {e}", self.done_fifo.display())));
        self.send_command(CLEAR_CACHE_COMMAND, deadline).await;
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&answer).contains(CLEAR_CACHE_DONE) {
            match tokio::time::timeout_at(deadline.into(), done.read(&mut buf)).await {
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => self.fail(format!("reading the completion FIFO {}: {e}", self.done_fifo.display())),
                Err(_) => self.fail(format!(
                    "waited {CLEAR_CACHE_TIMEOUT_MS} ms for {CLEAR_CACHE_DONE:?} on {} after {CLEAR_CACHE_COMMAND:?}; read {:?}",
                    self.done_fifo.display(),
                    String::from_utf8_lossy(&answer)
                )),
            }
        }
        tracing::info!(mount = %self.mount.display(), ms = started.elapsed().as_millis() as u64, "lazyfs cache cleared");
    }

    /// Write one command line to the fault FIFO. Opening it fails while LazyFS has no
    /// reader on it (between two commands): retried until `deadline`.
    async fn send_command(&self, command: &str, deadline: Instant) {
        let mut sender = loop {
            match pipe::OpenOptions::new().open_sender(&self.faults_fifo) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "fault FIFO has no reader yet");
                    tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
                }
                Err(e) => self.fail(format!(
                    "could not open the fault FIFO {} for writing until the deadline: {e}",
                    self.faults_fifo.display()
                )),
            }
        };
        let line = format!("{command}\n");
        match tokio::time::timeout_at(deadline.into(), sender.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(format!("writing {command:?} to {}: {e}", self.faults_fifo.display())),
            Err(_) => self.fail(format!("timed out writing {command:?} to {}", self.faults_fifo.display())),
        }
    }

    /// `fusermount3 -u`, retried while the mount is busy; whether it unmounted.
    fn unmount(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(UNMOUNT_TIMEOUT_MS);
        loop {
            let out = Command::new("fusermount3").arg("-u").arg(&self.mount).output();
            let problem = match out {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => {
                    format!("fusermount3 -u exited with {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())
                }
                Err(e) => format!("running fusermount3: {e}"),
            };
            if !self.is_mounted() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(problem);
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5));
        }
    }

    /// Wait (bounded) for the LazyFS process to exit; kill it if it does not.
    fn reap(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let deadline = Instant::now() + Duration::from_millis(UNMOUNT_TIMEOUT_MS);
        loop {
            match child.try_wait() {
                // LazyFS aborts on its way out after an unmount ("terminate called
                // without an active exception"): its exit status says nothing.
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
                _ => {
                    eprintln!(
                        "LazyFS at {} did not exit within {UNMOUNT_TIMEOUT_MS} ms of its unmount: killed it",
                        self.mount.display()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(problem) = self.unmount() {
            eprintln!("LazyFS at {}: unmount failed ({problem}); killing LazyFS", self.mount.display());
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
            }
            // A mount whose server died stays until detached.
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mount).status();
        }
        self.reap();
        if keep_test_dirs() {
            self.dir.disable_cleanup(true);
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "LazyFS (test failed; kept {}, synced data in {}):\n{}",
                self.dir.path().display(),
                self.backing.display(),
                self.log_tail()
            );
        }
    }
}
