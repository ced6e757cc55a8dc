//! Running a command against the engine: look it up, check its arity, refuse a
//! write while the WAL cannot write (`-MISCONF`) or on a read-only cache
//! (`-READONLY`), run it with the write gate held, and queue its WAL records. The
//! engine answers in types; the replies are made here.

use super::errors::{err, refused, wal_unwritable, write_failed, wrong_arity, ERR_DB_RANGE, ERR_READONLY};
use super::{lookup, node, Ctx, Handler};
use crate::engine::{Durable, Engine};
use crate::resp::Frame;
use bytes::Bytes;
use std::sync::atomic::Ordering;

/// Runs a data command for a connection that SELECTed `db` and waits until its
/// writes are durable. `None`: unknown command.
pub async fn execute(engine: &Engine, db: usize, args: &[Bytes]) -> Option<Frame> {
    let (reply, durable) = execute_deferred(engine, db, args).await?;
    Some(match durable.wait().await {
        Ok(()) => reply,
        Err(e) => write_failed(&e),
    })
}

/// Runs a data command: applies it to the store and queues its WAL records, but
/// does not wait for them to be acknowledged. The reply must not be sent before
/// [`Durable::wait`] succeeds; a connection runs a whole pipeline this way and
/// then waits once, so the pipeline shares one group commit (as Redis does with
/// `appendfsync always`).
///
/// While the WAL cannot write, writes are refused with `-MISCONF` before they
/// change anything; reads go on.
pub async fn execute_deferred(engine: &Engine, db: usize, args: &[Bytes]) -> Option<(Frame, Durable)> {
    let spec = lookup(args.first()?)?;
    engine.counters().commands.fetch_add(1, Ordering::Relaxed);
    let now = |frame: Frame| Some((frame, Durable::default()));
    if !spec.arity_ok(args.len()) {
        return now(wrong_arity(spec.name));
    }
    if spec.write {
        if let Err(health) = engine.writable() {
            return now(wal_unwritable(&health));
        }
    }
    let _writing = if spec.write { Some(engine.begin_write().await) } else { None };
    let f = match spec.handler {
        Handler::Node(cmd) => return now(node::run(engine, db, cmd, args).await),
        Handler::Cache(f) => f,
    };
    let Some(cache) = engine.cache_by_db(db) else {
        return now(err(ERR_DB_RANGE));
    };
    if spec.write && cache.is_read_only() {
        return now(err(ERR_READONLY));
    }
    let (reply, pending, refusal) = {
        let mut ctx = Ctx::for_cache(engine, cache);
        let reply = f(&mut ctx, args);
        (reply, ctx.pending, ctx.refused)
    };
    let reply = refusal.map_or(reply, refused);
    match engine.submit(pending).await {
        Ok(durable) => Some((reply, durable)),
        Err(e) => now(write_failed(&e)),
    }
}

impl crate::connection::CommandHandler for Engine {
    fn execute<'a>(
        &'a self,
        db: usize,
        args: &'a [Bytes],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<crate::connection::Executed>> + Send + 'a>> {
        Box::pin(async move {
            let (frame, durable) = execute_deferred(self, db, args).await?;
            if durable.is_empty() {
                return Some(frame.into());
            }
            let wait = Box::pin(async move {
                durable.wait().await.map_err(|e| match write_failed(&e) {
                    Frame::Error(text) => text,
                    _ => format!("ERR {e}"),
                })
            });
            Some(crate::connection::Executed { frame, durable: Some(wait) })
        })
    }

    fn db_exists(&self, db: usize) -> bool {
        Engine::db_exists(self, db)
    }
}
