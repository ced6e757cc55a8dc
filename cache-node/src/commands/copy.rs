//! COPY MOVE SWAPDB: keys between databases, where a database is a cache
//! (`SELECT n` is the cache configured with `db = n`).
//!
//! - `COPY src dst [DB n] [REPLACE]` writes a put of the source's value, with its
//!   expiry, to the destination cache (a counter's value is copied as its decimal
//!   text: the copy is a plain string); a hash is set whole there, replacing what
//!   the destination held ([`Held::write_ops`]);
//! - `MOVE key n` is a delete in this cache and that put in cache `n`, queued as one
//!   transaction unit, so every site that reads units applies both or neither;
//! - both refuse, with an `ERR` saying why, to cross between caches whose topology or
//!   merge policy differ: a key would change how it replicates and resolves
//!   conflicts on the way;
//! - `SWAPDB` is refused: a database's name is its cache's, the same at every site,
//!   and swapping two at one site would swap what the other sites hold under those
//!   names.
//!
//! Out of a transaction a command takes the gate of each cache it touches shared, in
//! ascending `db` order, and waits until its entries are durable before replying; in
//! one, `EXEC` holds them exclusively ([`target_db`] names the second one).

use super::errors::{err, refused, write_failed, ERR_DB_RANGE, ERR_FENCED, ERR_FENCED_UNACKNOWLEDGED};
use super::{delete_op, Ctx, Held, ERR_NOT_INTEGER, ERR_READONLY, ERR_SYNTAX};
use crate::engine::{CacheState, Engine};
use crate::notify::Event;
use crate::resp::Frame;
use bytes::Bytes;
use xsite_schemas::LogEntry;

const ERR_NOT_INT32: &str = "ERR value is out of range, value must between -2147483648 and 2147483647";
const ERR_SAME_OBJECT: &str = "ERR source and destination objects are the same";
pub const ERR_SWAPDB: &str = "ERR SWAPDB is not supported: each database is a replicated cache whose name every site shares, and swapping two at one site would swap what the other sites hold under those names";

/// Which command of this family runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Copy,
    Move,
}

/// A database index as Redis's `getIntFromObjectOrReply` reads one.
fn parse_db(arg: &[u8]) -> Result<i64, Frame> {
    let n = crate::resp::parse_integer(arg).ok_or_else(|| err(ERR_NOT_INTEGER))?;
    if i32::try_from(n).is_err() {
        return Err(err(ERR_NOT_INT32));
    }
    Ok(n)
}

/// What a COPY or MOVE asks for: the destination database, REPLACE, the keys.
struct Request<'a> {
    target: usize,
    replace: bool,
    src: &'a Bytes,
    dst: &'a Bytes,
}

fn parse(family: Family, db: usize, args: &[Bytes]) -> Result<Request<'_>, Frame> {
    let db_range = |n: i64| usize::try_from(n).map_err(|_| err(ERR_DB_RANGE));
    if family == Family::Move {
        let target = db_range(parse_db(&args[2])?)?;
        return Ok(Request { target, replace: false, src: &args[1], dst: &args[1] });
    }
    let mut r = Request { target: db, replace: false, src: &args[1], dst: &args[2] };
    let mut j = 3;
    while j < args.len() {
        if args[j].eq_ignore_ascii_case(b"replace") {
            r.replace = true;
        } else if args[j].eq_ignore_ascii_case(b"db") && j + 1 < args.len() {
            r.target = db_range(parse_db(&args[j + 1])?)?;
            j += 1;
        } else {
            return Err(err(ERR_SYNTAX));
        }
        j += 1;
    }
    Ok(r)
}

/// The other database a COPY or MOVE of a transaction touches, for `EXEC` to hold
/// its gate too (`None`: none, or arguments it will refuse).
pub fn target_db(family: Family, db: usize, args: &[Bytes]) -> Option<usize> {
    parse(family, db, args).ok().map(|r| r.target)
}

/// Why a key may not cross from `from` to `to`, if it may not.
fn cross_refusal(from: &CacheState, to: &CacheState) -> Option<Frame> {
    let (p_from, p_to) = (from.store.policy().name(), to.store.policy().name());
    if from.topology == to.topology && p_from == p_to {
        return None;
    }
    Some(Frame::Error(format!(
        "ERR cannot cross from db {} (cache {}: {:?}, {p_from}) to db {} (cache {}: {:?}, {p_to}): keys move only between caches of the same topology and merge policy",
        from.db, from.name, from.topology, to.db, to.name, to.topology
    )))
}

/// A write to `cache` may be made now (not read-only, not fenced).
fn writable(engine: &Engine, cache: &CacheState) -> Result<(), Frame> {
    if cache.is_read_only() {
        return Err(err(ERR_READONLY));
    }
    if !engine.lease_holds(cache) {
        return Err(err(ERR_FENCED));
    }
    Ok(())
}

/// Runs COPY or MOVE with the gates of both caches held (by the caller), queuing
/// its entries in `pending`.
pub fn run_into(engine: &Engine, db: usize, family: Family, args: &[Bytes], pending: &mut Vec<LogEntry>) -> Frame {
    match copy_or_move(engine, db, family, args, pending) {
        Ok(frame) | Err(frame) => frame,
    }
}

fn copy_or_move(
    engine: &Engine,
    db: usize,
    family: Family,
    args: &[Bytes],
    pending: &mut Vec<LogEntry>,
) -> Result<Frame, Frame> {
    let r = parse(family, db, args)?;
    let from = engine.cache_by_db(db).ok_or_else(|| err(ERR_DB_RANGE))?;
    let to = engine.cache_by_db(r.target).ok_or_else(|| err(ERR_DB_RANGE))?;
    let same_cache = from.db == to.db;
    if same_cache && (family == Family::Move || r.src == r.dst) {
        return Err(err(ERR_SAME_OBJECT));
    }
    if let Some(refusal) = cross_refusal(from, to) {
        return Err(refusal);
    }
    writable(engine, to)?;
    if family == Family::Move {
        writable(engine, from)?;
    }
    let mut src_ctx = Ctx::for_cache(engine, from);
    let mut dst_ctx = Ctx::for_cache(engine, to);
    let now_ms = src_ctx.now_ms.max(dst_ctx.now_ms);
    // Shards of both caches, in ascending db order (one lock call in one cache).
    let (mut src_locked, mut dst_locked) = if same_cache {
        (src_ctx.store.lock(&[r.src, r.dst]), None)
    } else if from.db < to.db {
        let s = src_ctx.store.lock(&[r.src]);
        (s, Some(dst_ctx.store.lock(&[r.dst])))
    } else {
        let d = dst_ctx.store.lock(&[r.dst]);
        (src_ctx.store.lock(&[r.src]), Some(d))
    };
    let Some(rec) = src_locked.live(r.src, now_ms) else {
        return Ok(Frame::Integer(0));
    };
    let held = Held::of(rec).expect("live records hold something");
    let expire_at_ms = rec.expire_at_ms();
    let delete = delete_op(Some(rec), r.src);
    let dst_view = dst_locked.as_ref().unwrap_or(&src_locked);
    if dst_view.live(r.dst, now_ms).is_some() && !r.replace {
        return Ok(Frame::Integer(0));
    }
    let ops = held.write_ops(r.dst, dst_view.get(r.dst), expire_at_ms);
    src_ctx.needs_format_of(&ops)?;
    dst_locked.as_mut().unwrap_or(&mut src_locked).admit(&ops).map_err(refused)?;
    if family == Family::Move {
        src_ctx.write(&mut src_locked, delete);
    }
    for op in ops {
        match dst_locked.as_mut() {
            Some(locked) => dst_ctx.write(locked, op),
            None => src_ctx.write(&mut src_locked, op),
        };
    }
    if let Some(refusal) = src_ctx.refused.or(dst_ctx.refused) {
        return Err(refused(refusal));
    }
    pending.append(&mut src_ctx.pending);
    pending.append(&mut dst_ctx.pending);
    if family == Family::Move {
        src_ctx.notify(Event::MoveFrom, r.src);
        dst_ctx.notify(Event::MoveTo, r.dst);
    } else {
        dst_ctx.notify(Event::CopyTo, r.dst);
    }
    Ok(Frame::Integer(1))
}

/// COPY or MOVE out of a transaction: the gates of both caches shared, then one wait
/// until the entries (a MOVE's as one unit) are durable.
pub async fn run(engine: &Engine, db: usize, family: Family, args: &[Bytes]) -> Frame {
    let target = target_db(family, db, args);
    let mut dbs: Vec<usize> = std::iter::once(db).chain(target).collect();
    dbs.sort_unstable();
    dbs.dedup();
    let caches: Vec<&CacheState> = dbs.iter().filter_map(|d| engine.cache_by_db(*d)).collect();
    let mut pending = Vec::new();
    let reply = {
        let _shared: Vec<_> = caches.iter().map(|c| c.store.share()).collect();
        run_into(engine, db, family, args, &mut pending)
    };
    if pending.is_empty() {
        return reply;
    }
    let durable = match engine.submit_transaction(pending).await {
        Ok(durable) => durable,
        Err(e) => return write_failed(&e),
    };
    match durable.wait().await {
        Ok(()) if caches.iter().any(|c| c.is_leased() && !engine.lease_holds(c)) => err(ERR_FENCED_UNACKNOWLEDGED),
        Ok(()) => reply,
        Err(e) => write_failed(&e),
    }
}

/// SWAPDB index1 index2: the indexes read as Redis reads them, then the refusal.
pub fn swapdb(args: &[Bytes]) -> Frame {
    if parse_db(&args[1]).is_err() {
        return err("ERR invalid first DB index");
    }
    if parse_db(&args[2]).is_err() {
        return err("ERR invalid second DB index");
    }
    err(ERR_SWAPDB)
}
