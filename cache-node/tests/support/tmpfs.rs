//! A small tmpfs mounted for one test, to fill a disk for real (ENOSPC from the
//! kernel, not from a fake). Mounting needs root (CAP_SYS_ADMIN): elsewhere the test
//! says it is skipped and why, unless `XSITE_REQUIRE_ROOT_TESTS` is set (CI sets it
//! when it runs as root), where not being able to mount fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"32m"`) at `at` (created if missing), or says
    /// why it cannot.
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("creating the mount point {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { at: at.to_path_buf() })
    }

    /// [`Tmpfs::mount`], or `None` after printing why the test is skipped (a panic
    /// where `XSITE_REQUIRE_ROOT_TESTS` is set).
    pub fn mount_or_skip(at: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(at, size) {
            Ok(t) => Some(t),
            Err(why) if std::env::var_os("XSITE_REQUIRE_ROOT_TESTS").is_some() => {
                panic!("{test}: cannot mount a tmpfs to fill: {why}")
            }
            Err(why) => {
                eprintln!("{test}: skipped: cannot mount a tmpfs to fill ({why}); run as root to include it");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Writes a file until the file system is full; returns its path (remove it to
    /// free the space again).
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("creating the filler file");
        let chunk = vec![0u8; 64 * 1024];
        // A tmpfs of a few MiB fills within a bounded number of chunks.
        for _ in 0..1_000_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // Then byte by byte, so that not even a small record fits.
        for _ in 0..chunk.len() {
            if file.write_all(&[0]).is_err() {
                return path;
            }
        }
        panic!("the tmpfs at {} did not fill up", self.path().display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
