//! How a request reaches what runs it.
//!
//! [`dispatch`] runs one request of a client session. The order of checks is Redis
//! 7.2's:
//!
//! 1. the table resolves the command and its subcommand and checks the arity: a
//!    wrong number of arguments or an unknown subcommand is reported before
//!    `NOAUTH`;
//! 2. before authentication only `AUTH`, `HELLO`, `QUIT` and `RESET` run; anything
//!    else, a command the table does not know included, gets `NOAUTH`;
//! 3. a connection command runs on the session; every other command goes to the
//!    [`CommandHandler`] (the engine), and one it does not know either gets Redis's
//!    unknown-command error.
//!
//! For the engine, [`execute_deferred`] runs a cache or node command: it refuses a
//! write while the WAL cannot write (`-MISCONF`) or on a read-only cache
//! (`-READONLY`), runs it with the write gate held and queues its WAL records.

use super::connection;
use super::errors::{
    err, refused, unknown_command, wal_unwritable, write_failed, wrong_arity, ERR_DB_RANGE, ERR_FENCED,
    ERR_FENCED_UNACKNOWLEDGED, ERR_NOAUTH, ERR_READONLY,
};
use super::handler::{CommandHandler, Executed, Reply};
use super::table::{lookup, resolve, Handler};
use super::{node, Ctx};
use crate::engine::{Durable, Engine};
use crate::resp::Frame;
use crate::session::Session;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

/// Runs one request of `session` (`args` is never empty), in the order the module
/// docs give.
pub(crate) async fn dispatch(session: &mut Session, handler: &dyn CommandHandler, args: &[Bytes]) -> Reply {
    debug_assert!(!args.is_empty(), "empty requests are skipped by the decoder");
    let spec = match resolve(args) {
        Ok(spec) => spec,
        Err(error) => return error.into(),
    };
    if !session.authenticated() && !spec.is_some_and(|s| s.before_auth) {
        return err(ERR_NOAUTH).into();
    }
    match spec.map(|s| s.handler) {
        Some(Handler::Connection(cmd)) => connection::run(session, handler, cmd, args),
        Some(Handler::Container) => unreachable!("the table resolves a container to one of its subcommands"),
        Some(Handler::Cache(_) | Handler::Node(_)) | None => match handler.execute(session.db(), args).await {
            Some(Executed { frame, durable }) => Reply { frame, close: false, durable },
            None => unknown_command(args).into(),
        },
    }
}

/// Runs a cache or node command for a connection that SELECTed `db` and waits until
/// its writes are durable. `None`: not a command the engine runs.
pub async fn execute(engine: &Engine, db: usize, args: &[Bytes]) -> Option<Frame> {
    let (reply, durable, leased) = execute_deferred(engine, db, args).await?;
    Some(match durable.wait().await {
        Ok(()) if leased.is_some_and(|c| !engine.lease_holds(c)) => err(ERR_FENCED_UNACKNOWLEDGED),
        Ok(()) => reply,
        Err(e) => write_failed(&e),
    })
}

/// Runs a cache or node command: applies it to the store and queues its WAL
/// records, but does not wait for them to be acknowledged. The reply must not be
/// sent before [`Durable::wait`] succeeds; a connection runs a whole pipeline this
/// way and then waits once, so the pipeline shares one group commit (as Redis does
/// with `appendfsync always`).
///
/// While the WAL cannot write, writes are refused with `-MISCONF` before they
/// change anything; reads go on. A write to a cache whose lease (see
/// `replication::failover`) has lapsed is refused with `-READONLY`; the third
/// element names the cache of a write made under a lease, which must still hold
/// when the write is durable for its reply to be sent.
pub async fn execute_deferred<'e>(
    engine: &'e Engine,
    db: usize,
    args: &[Bytes],
) -> Option<(Frame, Durable, Option<&'e crate::engine::CacheState>)> {
    let spec = lookup(args.first()?)?;
    if matches!(spec.handler, Handler::Connection(_) | Handler::Container) {
        return None; // the session runs these
    }
    engine.counters().commands.fetch_add(1, Ordering::Relaxed);
    let now = |frame: Frame| Some((frame, Durable::default(), None));
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
        Handler::Cache(f) => f,
        Handler::Node(cmd) => return now(node::run(engine, db, cmd, args).await),
        Handler::Connection(_) | Handler::Container => unreachable!("returned above"),
    };
    let Some(cache) = engine.cache_by_db(db) else {
        return now(err(ERR_DB_RANGE));
    };
    if spec.write && cache.is_read_only() {
        return now(err(ERR_READONLY));
    }
    if spec.write && !engine.lease_holds(cache) {
        return now(err(ERR_FENCED));
    }
    let (reply, pending, refusal) = {
        let mut ctx = Ctx::for_cache(engine, cache);
        let reply = f(&mut ctx, args);
        (reply, ctx.pending, ctx.refused)
    };
    let reply = refusal.map_or(reply, refused);
    let leased = (spec.write && !pending.is_empty() && cache.is_leased()).then_some(cache);
    match engine.submit(pending).await {
        Ok(durable) => Some((reply, durable, leased)),
        Err(e) => now(write_failed(&e)),
    }
}

impl CommandHandler for Engine {
    fn execute<'a>(
        &'a self,
        db: usize,
        args: &'a [Bytes],
    ) -> Pin<Box<dyn Future<Output = Option<Executed>> + Send + 'a>> {
        Box::pin(async move {
            let (frame, durable, leased) = execute_deferred(self, db, args).await?;
            if durable.is_empty() {
                return Some(frame.into());
            }
            let leased = leased.and_then(|c| Some((self.handle()?, c.name.clone())));
            let wait = Box::pin(async move {
                durable.wait().await.map_err(|e| match write_failed(&e) {
                    Frame::Error(text) => text,
                    _ => format!("ERR {e}"),
                })?;
                match leased {
                    Some((engine, name)) if engine.cache(&name).is_some_and(|c| !engine.lease_holds(c)) => {
                        Err(ERR_FENCED_UNACKNOWLEDGED.to_string())
                    }
                    _ => Ok(()),
                }
            });
            Some(Executed { frame, durable: Some(wait) })
        })
    }

    fn db_exists(&self, db: usize) -> bool {
        Engine::db_exists(self, db)
    }
}
