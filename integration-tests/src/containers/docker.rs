//! The few Docker operations testcontainers does not offer, through the `docker` CLI:
//! networks, `network connect/disconnect`, `kill`, volumes, logs.
//!
//! Every call is bounded by [`DOCKER_CALL_TIMEOUT`]. The guards ([`NetworkGuard`],
//! [`VolumeGuard`]) remove what they name when dropped, with the blocking CLI so they
//! also work while a failed test unwinds.

use anyhow::{bail, Context, Result};
use std::process::Stdio;
use std::time::Duration;

/// Longest a single `docker` CLI call may take.
pub const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of each container's log printed when a scenario fails.
pub const LOG_TAIL_LINES: usize = 150;

/// Label put on every container, network and volume the harness creates, with the
/// run id as value: `docker ps -a --filter label=org.xsite.test-run` finds leftovers.
pub const RUN_LABEL: &str = "org.xsite.test-run";

/// Run `docker ARGS`, return its stdout; an error carries stderr.
pub async fn docker(args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(DOCKER_CALL_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("docker {} timed out after {DOCKER_CALL_TIMEOUT:?}", args.join(" ")))?
        .context("running the docker CLI")?;
    if !out.status.success() {
        bail!("docker {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The blocking form, for `Drop` and log dumps. Errors are returned as text.
pub fn docker_blocking(args: &[&str]) -> std::result::Result<String, String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running docker: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Fail with the command to run when a local image is missing (nothing can be pulled).
pub async fn require_images(images: &[&str]) -> Result<()> {
    for image in images {
        if docker(&["image", "inspect", "--format", "{{.Id}}", image]).await.is_err() {
            bail!("image {image} is missing: build it with `bash scripts/build-images.sh` (there is no registry to pull from)");
        }
    }
    Ok(())
}

/// A user-defined bridge network, removed on drop.
#[derive(Debug)]
pub struct NetworkGuard {
    pub name: String,
}

impl NetworkGuard {
    pub async fn create(name: &str, run: &str) -> Result<NetworkGuard> {
        let label = format!("{RUN_LABEL}={run}");
        docker(&["network", "create", "--driver", "bridge", "--label", &label, name]).await?;
        Ok(NetworkGuard { name: name.to_string() })
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        if let Err(e) = docker_blocking(&["network", "rm", &self.name]) {
            eprintln!("removing network {}: {}", self.name, e.trim());
        }
    }
}

/// A named volume, removed on drop (after the containers using it are gone).
#[derive(Debug)]
pub struct VolumeGuard {
    pub name: String,
}

impl VolumeGuard {
    pub async fn create(name: &str, run: &str) -> Result<VolumeGuard> {
        let label = format!("{RUN_LABEL}={run}");
        docker(&["volume", "create", "--label", &label, name]).await?;
        Ok(VolumeGuard { name: name.to_string() })
    }

    /// Remove it now (its containers must be removed first).
    pub async fn remove(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        docker(&["volume", "rm", "--force", &name]).await.map(drop)
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // removed already
        }
        if let Err(e) = docker_blocking(&["volume", "rm", "--force", &self.name]) {
            eprintln!("removing volume {}: {}", self.name, e.trim());
        }
    }
}

/// Attach a container (running or not) to a network, or detach it: a detached
/// container can no longer reach anything on the network, nor be reached through it.
pub async fn network_link(network: &str, container: &str, attach: bool) -> Result<()> {
    let args: &[&str] = if attach {
        &["network", "connect", network, container]
    } else {
        &["network", "disconnect", "--force", network, container]
    };
    docker(args).await.map(drop)
}

/// SIGKILL a container's main process; the container and its file system stay.
pub async fn kill(container: &str) -> Result<()> {
    signal(container, "KILL").await
}

/// Send a signal (`STOP`, `CONT`, …) to a container's main process.
pub async fn signal(container: &str, signal: &str) -> Result<()> {
    docker(&["kill", "--signal", signal, container]).await.map(drop)
}

/// The last lines of a container's stdout and stderr (blocking; for failure reports).
pub fn log_tail(container: &str) -> String {
    let tail = LOG_TAIL_LINES.to_string();
    match docker_blocking(&["logs", "--tail", &tail, container]) {
        Ok(text) | Err(text) => text,
    }
}

/// A container's state in a few words: status, exit code, OOM kill (blocking).
pub fn state(container: &str) -> String {
    let format = "{{.State.Status}} (exit code {{.State.ExitCode}}, oom killed: {{.State.OOMKilled}})";
    match docker_blocking(&["inspect", "--format", format, container]) {
        Ok(text) | Err(text) => text.trim().to_string(),
    }
}

/// Free TCP ports on 127.0.0.1, all distinct, to publish container ports on. Fixed
/// host ports stay the same when a container restarts, so clients just reconnect.
pub fn free_loopback_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
