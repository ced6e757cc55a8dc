//! Brokers and nodes as processes on loopback ports, for the real-broker test tier.
//!
//! - [`Tansu`]: one tansu broker process per site, in its own temp directory (sqlite
//!   storage), on a free port; it can be killed with SIGKILL and restarted on the same
//!   port and data.
//! - [`NodeProc`]: one `xsite node` process, configured by a [`NodeSpec`] (or raw TOML
//!   text), on free RESP and admin ports; kill -9, SIGTERM, restart on the same data
//!   directory, a RESP connection, the admin API's status, metrics and digests; with
//!   its data directory on a [`crate::lazyfs::LazyFs`] mount, a power cut.
//! - [`wait_converged`]: wait until several nodes hold the same contents of a cache,
//!   comparing admin digests and the full contents read through RESP (values and
//!   absolute expiry times, [`crate::contents`]).
//!
//! These are test fixtures: every method panics on failure with a message that says
//! what was awaited, for how long, and the tail of the process's log. Every wait is
//! bounded. A process still running when its fixture is dropped is killed, and when
//! the test is failing (the thread is panicking) its log tail is printed and its temp
//! directory kept (set `XSITE_KEEP_TEST_DIRS=1` to keep them after passing tests too).
//!
//! Binaries: the broker is `$XSITE_TANSU_BIN`, else `~/.cache/xsite/bin/tansu`, else
//! `tansu` on `PATH`; the node is `$XSITE_BIN`, else `<workspace>/target/debug/xsite`
//! (build it first: `cargo build -p xsite-node --bin xsite`).
//!
//! Topics are `xsite.<site>` and the dead-letter topic `xsite.dlq.<site>`. tansu does
//! not auto-create topics, and deleting one deletes every topic: use a fresh broker per
//! test and never delete.

mod node;
mod tansu;

pub use crate::contents::Snapshot;
pub use node::{prometheus_value, wait_converged, Digest, NodeProc, NodeSpec};
pub use tansu::Tansu;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// Topic prefix used by nodes (the config default).
pub const TOPIC_PREFIX: &str = "xsite.";

/// A site's own topic.
pub fn site_topic(site: &str) -> String {
    format!("{TOPIC_PREFIX}{site}")
}

/// A site's dead-letter topic.
pub fn dlq_topic(site: &str) -> String {
    format!("{TOPIC_PREFIX}dlq.{site}")
}

/// Whether `XSITE_KEEP_TEST_DIRS` asks to keep every temp directory (logs, data) of
/// brokers and nodes after a test; they are always kept when the test fails.
pub fn keep_test_dirs() -> bool {
    std::env::var_os("XSITE_KEEP_TEST_DIRS").is_some()
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// The last `lines_max` lines of a log file (at most the last 64 KiB of it).
pub fn log_tail(path: &Path, lines_max: usize) -> String {
    const TAIL_BYTES_MAX: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES_MAX)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(lines_max);
    format!("--- last {} lines of {} ---\n{}\n---", lines.len() - start, path.display(), lines[start..].join("\n"))
}

/// Whether something accepts TCP connections on the loopback port now.
async fn port_accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(("127.0.0.1", port))).await,
        Ok(Ok(_))
    )
}

/// Send SIGTERM to a process (through `kill(1)`: this workspace forbids unsafe code).
fn send_sigterm(pid: u32) -> std::io::Result<()> {
    send_signal(pid, "TERM")
}

/// Send a signal (`TERM`, `STOP`, `CONT`, …) to one process through `kill(1)`.
pub(crate) fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -{signal} {pid} exited with {status}")))
    }
}

/// Open (append) a log file for a child's stdout and stderr, writing a marker line first.
pub(crate) fn open_log(path: &Path, marker: &str) -> (std::fs::File, std::fs::File) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening log file {}: {e}", path.display()));
    let _ = writeln!(file, "===== {marker} =====");
    let err = file.try_clone().unwrap_or_else(|e| panic!("duplicating log file handle {}: {e}", path.display()));
    (file, err)
}
