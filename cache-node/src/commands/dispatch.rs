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
//! 3. a RESP2 client subscribed to a channel runs only the pub/sub commands,
//!    `PING`, `QUIT` and `RESET` (see [`super::pubsub`]);
//! 4. inside `MULTI`, a command that does not run at once is queued (see
//!    [`super::transaction`]); a request refused by the checks above fails the
//!    transaction;
//! 5. a connection or transaction command runs on the session; every other command
//!    goes to the [`CommandHandler`] (the engine), and one it does not know either
//!    gets Redis's unknown-command error.
//!
//! For the engine, [`execute_deferred`] runs a cache or node command: it refuses a
//! write while the WAL cannot write (`-MISCONF`) or on a read-only cache
//! (`-READONLY`), runs it with the write gate and its store's gate held and queues
//! its WAL records. `EXEC` runs a transaction's commands the same way, as one (see
//! [`super::exec`]).

use super::connection;
use super::errors::{
    err, refused, unknown_command, wal_unwritable, write_failed, wrong_arity, ERR_DB_RANGE, ERR_FENCED,
    ERR_FENCED_UNACKNOWLEDGED, ERR_NOAUTH, ERR_READONLY,
};
use super::handler::{CommandHandler, DurableWait, ExecOutcome, Executed, Queued, Reply, Watched};
use super::pubsub::{allowed_when_subscribed as allowed, not_allowed_when_subscribed};
use super::table::{lookup, resolve, CacheFn, Handler, InMulti, Spec};
use super::{exec, node, transaction, Ctx};
use crate::engine::{CacheState, Durable, Engine};
use crate::resp::Frame;
use crate::resp::RESP2;
use crate::session::Session;
use crate::store::Seen;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use xsite_schemas::{CacheName, LogEntry};

/// Runs one request of `session` (`args` is never empty), in the order the module
/// docs give.
pub(crate) async fn dispatch(session: &mut Session, handler: &dyn CommandHandler, args: &[Bytes]) -> Reply {
    debug_assert!(!args.is_empty(), "empty requests are skipped by the decoder");
    let spec = match resolve(args) {
        Ok(spec) => spec,
        Err(error) => return transaction::refused(session, args, error),
    };
    if !session.authenticated() && !spec.is_some_and(|s| s.before_auth) {
        return transaction::refused(session, args, err(ERR_NOAUTH));
    }
    if let Some(spec) = spec.filter(|s| session.subscribed() && session.proto() == RESP2 && !allowed(s.name)) {
        return transaction::refused(session, args, not_allowed_when_subscribed(spec.name));
    }
    if session.transaction().in_multi() && spec.is_none_or(|s| s.in_multi != InMulti::Run) {
        return transaction::queue(session, spec, args);
    }
    match spec.map(|s| s.handler) {
        Some(Handler::Connection(cmd)) => connection::run(session, handler, cmd, args),
        Some(Handler::Transaction(cmd)) => transaction::run(session, handler, cmd, args).await,
        Some(Handler::Container) => unreachable!("the table resolves a container to one of its subcommands"),
        Some(Handler::Cache(_) | Handler::Node(_)) | None => match handler.execute(session.db(), args).await {
            Some(Executed { frame, durable }) => Reply { frame, close: false, durable, more: Vec::new() },
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
    if matches!(spec.handler, Handler::Connection(_) | Handler::Transaction(_) | Handler::Container) {
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
    if spec.blocks {
        return execute_blocking(engine, db, spec, args).await;
    }
    execute_once(engine, db, spec, args).await
}

/// A blocking command (BLPOP…): run until it finds something (a reply other than
/// a null), its timeout passes (a null array, as Redis replies then), or it
/// fails; each run with the gates taken and released as for any command, and
/// between runs a wait for the next list put joined into the cache (local, or
/// applied from another site). Clients blocked on the same keys are served in no
/// set order (Redis serves them first come, first served).
async fn execute_blocking<'e>(
    engine: &'e Engine,
    db: usize,
    spec: &'static Spec,
    args: &[Bytes],
) -> Option<(Frame, Durable, Option<&'e crate::engine::CacheState>)> {
    let Some(cache) = engine.cache_by_db(db) else {
        return Some((err(ERR_DB_RANGE), Durable::default(), None));
    };
    let timeout = match super::lists::block_timeout(&args[super::lists::timeout_arg(spec.name, args)]) {
        Ok(t) => t,
        Err(f) => return Some((f, Durable::default(), None)),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = cache.store.list_puts().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ran = execute_once(engine, db, spec, args).await;
        let nothing = matches!(ran, Some((Frame::NullArray | Frame::Null, _, _)));
        if !nothing {
            return ran;
        }
        if tokio::time::Instant::now() >= deadline {
            return Some((Frame::NullArray, Durable::default(), None));
        }
        // The put's notification is the wake-up; the poll only a safety net.
        let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + BLOCK_POLL), notified).await;
    }
}

/// How often a blocked command looks again without a notification.
const BLOCK_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// [`execute_deferred`] once the table and the WAL's health have admitted it.
async fn execute_once<'e>(
    engine: &'e Engine,
    db: usize,
    spec: &'static Spec,
    args: &[Bytes],
) -> Option<(Frame, Durable, Option<&'e crate::engine::CacheState>)> {
    let now = |frame: Frame| Some((frame, Durable::default(), None));
    let _writing = if spec.write { Some(engine.begin_write().await) } else { None };
    let f = match spec.handler {
        Handler::Cache(f) => f,
        Handler::Node(cmd) => return now(node::run(engine, db, cmd, args).await),
        Handler::Connection(_) | Handler::Transaction(_) | Handler::Container => unreachable!("returned above"),
    };
    let Some(cache) = engine.cache_by_db(db) else {
        return now(err(ERR_DB_RANGE));
    };
    let mut pending = Vec::new();
    let (reply, leased) = {
        let _shared = cache.store.share();
        run_on_cache(engine, cache, spec, f, args, &mut pending)
    };
    // A command that wrote several entries (MSET, RENAME, SMOVE, LMOVE, a
    // …STORE over a key…) replicates them as one unit, as a transaction's, so no
    // other site shows half of it; past a size, entry by entry (a FLUSHDB).
    let submitted = match pending.len() {
        2..=COMMAND_UNIT_ENTRIES_MAX => engine.submit_transaction(pending).await,
        _ => engine.submit(pending).await,
    };
    match submitted {
        Ok(durable) => Some((reply, durable, leased.then_some(cache))),
        Err(e) => now(write_failed(&e)),
    }
}

/// Entries of one command written as one unit at most.
const COMMAND_UNIT_ENTRIES_MAX: usize = 1024;

/// Runs cache command `f` against `cache` (the caller holds the write gate if it
/// writes, and the store's gate), queuing its entries in `pending`. Refuses a write
/// to a read-only or fenced cache. The flag: it wrote under a lease, which must
/// still hold when the write is durable for the reply to be sent.
pub(super) fn run_on_cache(
    engine: &Engine,
    cache: &CacheState,
    spec: &Spec,
    f: CacheFn,
    args: &[Bytes],
    pending: &mut Vec<LogEntry>,
) -> (Frame, bool) {
    if spec.write && cache.is_read_only() {
        return (err(ERR_READONLY), false);
    }
    if spec.write && !engine.lease_holds(cache) {
        return (err(ERR_FENCED), false);
    }
    let mut ctx = Ctx::for_cache(engine, cache);
    if let Some(wrong) = super::wrong_type(&ctx, spec, args) {
        return (wrong, false);
    }
    let reply = f(&mut ctx, args);
    let reply = ctx.refused.map_or(reply, refused);
    let leased = spec.write && !ctx.pending.is_empty() && cache.is_leased();
    pending.append(&mut ctx.pending);
    (reply, leased)
}

/// What a reply waits for: `durable`, then the lease of each cache in `leased`
/// (written under a lease) still holding. `None` when nothing was written.
pub(super) fn durable_wait(engine: &Engine, durable: Durable, leased: Vec<CacheName>) -> Option<DurableWait> {
    if durable.is_empty() {
        return None;
    }
    let leased = if leased.is_empty() { None } else { engine.handle().map(|engine| (engine, leased)) };
    Some(Box::pin(async move {
        durable.wait().await.map_err(|e| error_text(write_failed(&e)))?;
        match leased {
            Some((engine, names)) if names.iter().any(|n| engine.cache(n).is_some_and(|c| !engine.lease_holds(c))) => {
                Err(ERR_FENCED_UNACKNOWLEDGED.to_string())
            }
            _ => Ok(()),
        }
    }))
}

/// The text of an error reply (without the `-`).
pub(super) fn error_text(frame: Frame) -> String {
    match frame {
        Frame::Error(text) => text,
        other => format!("ERR {other:?}"),
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
            let leased = leased.map(|c| c.name.clone()).into_iter().collect();
            Some(Executed { frame, durable: durable_wait(self, durable, leased) })
        })
    }

    fn db_exists(&self, db: usize) -> bool {
        Engine::db_exists(self, db)
    }

    fn watch(&self, db: usize, keys: &[Bytes]) -> Vec<Seen> {
        exec::watch(self, db, keys)
    }

    fn exec<'a>(
        &'a self,
        commands: &'a [Queued],
        watched: &'a [Watched],
    ) -> Pin<Box<dyn Future<Output = ExecOutcome> + Send + 'a>> {
        Box::pin(exec::exec(self, commands, watched))
    }
}
