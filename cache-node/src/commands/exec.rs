//! `EXEC` and `WATCH` on the engine: a transaction's commands run as one.
//!
//! - **Atomic at the site**: with the write gate held (if anything in it writes),
//!   `EXEC` takes the gate of every store it touches exclusively
//!   ([`CacheStore::exclude`](crate::store::CacheStore::exclude), in ascending `db`
//!   order: the databases of its commands and of its watched keys, every one for a
//!   `FLUSHALL`), checks the watched keys and runs every command, without an await
//!   in between. Every other command, and every entry applied from another site,
//!   holds a store's gate shared while it runs, so none runs in between. The
//!   commands lock their shards as they always do: a transaction that touches a key
//!   twice or many keys cannot deadlock.
//! - **One wait**: the entries of all the commands are queued in the WAL together,
//!   once the gates are released — as one record holding a transaction unit where
//!   every remote site reads units and it fits in `kafka.max_entry_bytes`
//!   ([`Engine::submit_transaction`]) — and the `EXEC` reply waits until they are
//!   durable (and, for writes under a lease, until the lease still holds), as a
//!   pipeline's replies do.
//! - **WATCH** takes how each key stands ([`CacheStore::seen`](crate::store::CacheStore::seen));
//!   `EXEC` runs nothing if any changed since
//!   ([`CacheStore::changed_since`](crate::store::CacheStore::changed_since)):
//!   written by any client, flushed, applied from another site, or expired.
//! - A write while the WAL cannot write refuses the whole transaction before
//!   anything runs (`-EXECABORT Transaction discarded because of: MISCONF …`); any
//!   other error of a command is its reply, and the others still run.
//!
//! A unit replicates as one Kafka message and is applied at every other site as
//! one (see `crate::engine` `unit.rs`); a transaction written entry by entry (a
//! remote site that does not read units, a unit too large) replicates as single
//! commands do, and another site may then briefly show part of it.

use super::dispatch::{durable_wait, error_text, run_on_cache};
use super::errors::{err, unknown_command, wal_unwritable, write_failed, wrong_arity, ERR_DB_RANGE};
use super::handler::{ExecOutcome, Queued, Watched};
use super::table::{lookup, Handler, Spec};
use super::transaction::abort_because;
use super::{command_time_ms, node, NodeCommand};
use crate::engine::{CacheState, Engine};
use crate::resp::Frame;
use crate::store::Seen;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{CacheName, LogEntry};

/// How `keys` of `db` stand now (for a database without a cache: as if absent).
pub(super) fn watch(engine: &Engine, db: usize, keys: &[Bytes]) -> Vec<Seen> {
    let Some(cache) = engine.cache_by_db(db) else {
        return vec![Seen::default(); keys.len()];
    };
    let now_ms = command_time_ms(engine.clock(), wall_clock_ms());
    let _shared = cache.store.share();
    keys.iter().map(|key| cache.store.seen(key, now_ms)).collect()
}

/// Runs a transaction (see the module docs).
pub(super) async fn exec(engine: &Engine, commands: &[Queued], watched: &[Watched]) -> ExecOutcome {
    let specs: Vec<Option<&'static Spec>> = commands.iter().map(|c| c.args.first().and_then(|n| lookup(n))).collect();
    let writes = specs.iter().flatten().any(|s| s.write);
    if writes {
        if let Err(health) = engine.writable() {
            return ExecOutcome::Refused(abort_because(wal_unwritable(&health)));
        }
    }
    let _writing = if writes { Some(engine.begin_write().await) } else { None };
    let Some(ran) = run_excluded(engine, commands, &specs, watched) else {
        return ExecOutcome::Aborted;
    };
    let durable = match engine.submit_transaction(ran.pending).await {
        Ok(durable) => durable_wait(engine, durable, ran.leased),
        Err(e) => {
            let text = error_text(write_failed(&e));
            Some(Box::pin(async move { Err(text) }) as super::DurableWait)
        }
    };
    ExecOutcome::Ran { replies: ran.replies, durable }
}

/// What the commands of a transaction did.
struct Ran {
    replies: Vec<Frame>,
    pending: Vec<LogEntry>,
    /// Caches written under a lease.
    leased: Vec<CacheName>,
}

/// Checks the watched keys and runs the commands, with the gates of the stores they
/// touch held exclusively. `None`: a watched key changed, nothing ran.
fn run_excluded(
    engine: &Engine,
    commands: &[Queued],
    specs: &[Option<&'static Spec>],
    watched: &[Watched],
) -> Option<Ran> {
    let caches = touched(engine, commands, specs, watched);
    let _excluded: Vec<_> = caches.iter().map(|c| c.store.exclude()).collect();
    let now_ms = command_time_ms(engine.clock(), wall_clock_ms());
    let changed = |w: &Watched| engine.cache_by_db(w.db).is_some_and(|c| c.store.changed_since(&w.key, w.seen, now_ms));
    if watched.iter().any(changed) {
        return None;
    }
    let mut ran = Ran { replies: Vec::with_capacity(commands.len()), pending: Vec::new(), leased: Vec::new() };
    for (command, spec) in commands.iter().zip(specs) {
        let reply = match spec {
            Some(spec) => run_one(engine, command, spec, &mut ran),
            None => unknown_command(&command.args),
        };
        ran.replies.push(reply);
    }
    Some(ran)
}

/// The caches a transaction touches, in ascending `db` order.
fn touched<'e>(
    engine: &'e Engine,
    commands: &[Queued],
    specs: &[Option<&'static Spec>],
    watched: &[Watched],
) -> Vec<&'e CacheState> {
    let flushall = specs.iter().flatten().any(|s| matches!(s.handler, Handler::Node(NodeCommand::FlushAll)));
    let mut dbs: Vec<usize> = if flushall {
        engine.caches().iter().map(|c| c.db).collect()
    } else {
        let targets = commands.iter().zip(specs).filter_map(|(c, s)| match s.map(|s| s.handler) {
            Some(Handler::Node(NodeCommand::Copy)) => super::copy::target_db(super::copy::Family::Copy, c.db, &c.args),
            Some(Handler::Node(NodeCommand::Move)) => super::copy::target_db(super::copy::Family::Move, c.db, &c.args),
            _ => None,
        });
        commands.iter().map(|c| c.db).chain(watched.iter().map(|w| w.db)).chain(targets).collect()
    };
    dbs.sort_unstable();
    dbs.dedup();
    dbs.into_iter().filter_map(|db| engine.cache_by_db(db)).collect()
}

/// One command of a transaction, its entries queued in `ran`.
fn run_one(engine: &Engine, command: &Queued, spec: &Spec, ran: &mut Ran) -> Frame {
    engine.counters().commands.fetch_add(1, Ordering::Relaxed);
    let (db, args) = (command.db, &command.args[..]);
    if !spec.arity_ok(args.len()) {
        return wrong_arity(spec.name);
    }
    match spec.handler {
        Handler::Node(cmd) => node::run_in_transaction(engine, db, cmd, args, &mut ran.pending),
        Handler::Cache(f) => {
            let Some(cache) = engine.cache_by_db(db) else {
                return err(ERR_DB_RANGE);
            };
            let (reply, leased) = run_on_cache(engine, cache, spec, f, args, &mut ran.pending);
            if leased && !ran.leased.contains(&cache.name) {
                ran.leased.push(cache.name.clone());
            }
            reply
        }
        Handler::Connection(_) | Handler::Transaction(_) | Handler::Container => unknown_command(args),
    }
}
