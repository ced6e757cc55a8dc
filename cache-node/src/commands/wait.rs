//! WAIT numsites timeout: a cross-site barrier. Where Redis counts replicas that
//! acknowledged the client's writes, this counts remote sites that report, in their
//! heartbeats, having applied this site's entries up to the moment of the `WAIT`.
//!
//! The point waited for is the clock's latest timestamp when `WAIT` runs: at or
//! above the client's last write, so a site counted has applied it (and possibly
//! more: every write made here before, by any client). Sites report how far they
//! applied in heartbeats, so a `WAIT` takes about a heartbeat interval and a
//! watermark interval even when the write arrived sooner.
//!
//! It replies at once when `numsites` are already there (or `numsites` is 0 or less),
//! else when they are, or at `timeout` ms. A timeout of 0 blocks, as in Redis, but
//! only up to [`WAIT_BLOCK_MS_MAX`]. Inside `MULTI` it does not block (as Redis's).

use super::{err, parse_i64};
use crate::engine::Engine;
use crate::resp::Frame;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The longest a `WAIT` with timeout 0 blocks.
pub const WAIT_BLOCK_MS_MAX: u64 = 300_000;
/// How often a blocked `WAIT` looks at the sites' reports again.
const WAIT_POLL_MS: u64 = 10;

fn parse(args: &[Bytes]) -> Result<(i64, u64), Frame> {
    let numsites = parse_i64(&args[1])?;
    let timeout =
        crate::resp::parse_integer(&args[2]).ok_or_else(|| err("ERR timeout is not an integer or out of range"))?;
    if timeout < 0 {
        return Err(err("ERR timeout is negative"));
    }
    let timeout_ms = if timeout == 0 { WAIT_BLOCK_MS_MAX } else { (timeout as u64).min(WAIT_BLOCK_MS_MAX) };
    Ok((numsites, timeout_ms))
}

/// WAIT without blocking (inside a transaction): the count now.
pub fn wait_now(engine: &Engine, args: &[Bytes]) -> Frame {
    match parse(args) {
        Ok(_) => Frame::Integer(engine.remotes_applied(engine.clock().last()) as i64),
        Err(f) => f,
    }
}

pub async fn wait(engine: &Engine, args: &[Bytes]) -> Frame {
    let (numsites, timeout_ms) = match parse(args) {
        Ok(p) => p,
        Err(f) => return f,
    };
    let target = engine.clock().last();
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let applied = engine.remotes_applied(target);
        if applied as i64 >= numsites || Instant::now() >= deadline {
            tracing::debug!(applied, numsites, target = %target, "wait replied");
            return Frame::Integer(applied as i64);
        }
        tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
    }
}
