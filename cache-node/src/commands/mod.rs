//! Every command this node serves, one file per family, mini-redis style: a command
//! parses its arguments and applies itself.
//!
//! | file | what it holds |
//! |---|---|
//! | `table.rs` | the one command table: name, arity, write or not, what runs it; [`lookup`] and [`resolve`] |
//! | `dispatch.rs` | how a request reaches what runs it: the order of checks, and [`execute`], the engine's side |
//! | `handler.rs` | the [`CommandHandler`] a server hands requests to (the engine implements it) and the replies commands give back |
//! | `errors.rs` | Redis's error replies, and the replies the engine's typed errors become (`-MISCONF`, `-READONLY`…) |
//! | `connection.rs` | PING ECHO QUIT HELLO AUTH SELECT CLIENT COMMAND RESET, on the client's session |
//! | `transaction.rs` | MULTI EXEC DISCARD WATCH UNWATCH on the client's session: queueing, and what EXEC hands the engine |
//! | `exec.rs` | EXEC and WATCH on the engine: a transaction's commands run as one, the watched keys checked |
//! | `strings.rs`, `counters.rs`, `keys.rs` | the cache commands, by Redis family |
//! | `bits.rs` | SETBIT GETBIT BITCOUNT BITPOS BITOP BITFIELD BITFIELD_RO LCS: bit edits replicate as a put of the whole value |
//! | `hashes.rs`, `sets.rs`, `zsets.rs` | the hash, set and sorted set commands: fields and members that replicate one by one (see `xsite_consumer::{hash, set, zset}`) |
//! | `lists.rs` | the list commands and the blocking pops: elements at places chosen where they are put (see `xsite_consumer::list`); the blocking runs are `dispatch.rs`'s |
//! | `copy.rs` | COPY MOVE SWAPDB: keys between databases (caches), on the engine |
//! | `dump.rs` | DUMP RESTORE, in xsite's own payload format (`xsite_schemas::dump`) |
//! | `object.rs` | OBJECT ENCODING REFCOUNT IDLETIME FREQ HELP |
//! | `script.rs` | EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT: Lua 5.1 scripts, atomic at the site, their effects replicated as one unit |
//! | `script_libs.rs` | the `cjson`, `cmsgpack` and `bit` libraries scripts get, as Redis 7.0's give bytes and errors |
//! | `wait.rs` | WAIT: how many remote sites applied this site's writes so far |
//! | `sort.rs` | SORT SORT_RO of a list's, set's or sorted set's elements (BY, GET, LIMIT, ALPHA, DESC, STORE as a list) |
//! | `node.rs` | INFO TIME CONFIG FLUSHALL SAVE BGSAVE LASTSAVE, on the whole engine |
//! | `pubsub.rs` | (P\|S)SUBSCRIBE (P\|S)UNSUBSCRIBE on the session; PUBLISH SPUBLISH PUBSUB on the engine's hub |
//!
//! A cache command runs against a [`Ctx`]: one cache's store, the node's clock and
//! site, and the wall-clock time of the request. A write locks its keys' shards,
//! reads the current records, computes the new value, takes an HLC timestamp while
//! still holding the lock (so per-key order is HLC order), joins the [`Op`] into the
//! store and queues a [`LogEntry`] in [`Ctx::pending`]. [`execute_deferred`] appends
//! the queued entries to the WAL, and the reply waits for them. A command runs with
//! its store's gate shared; `EXEC` holds it exclusively for all of its commands.
//!
//! Replies and errors are Redis 7's, word for word.

pub mod bits;
pub mod connection;
pub mod copy;
pub mod counters;
mod dispatch;
pub mod dump;
mod errors;
mod exec;
mod handler;
pub mod hashes;
pub mod keys;
pub mod lists;
pub mod node;
pub mod object;
pub mod pubsub;
pub mod script;
mod script_libs;
pub mod sets;
pub mod sort;
pub mod strings;
mod table;
pub mod transaction;
pub mod wait;
pub mod zsets;

pub use connection::{ClientSub, CommandSub, ConnectionCommand};
pub(crate) use dispatch::dispatch;
pub use dispatch::{execute, execute_deferred};
pub use errors::{
    err, invalid_expire, refused, unknown_command, wal_unwritable, write_failed, wrong_arity, ERR_DB_RANGE, ERR_FENCED,
    ERR_FENCED_UNACKNOWLEDGED, ERR_NAN_OR_INFINITY, ERR_NOAUTH, ERR_NOT_FLOAT, ERR_NOT_INTEGER, ERR_NO_SUCH_KEY,
    ERR_OFFSET_RANGE, ERR_OVERFLOW, ERR_READONLY, ERR_STRING_TOO_LONG, ERR_SYNTAX, ERR_WRONGTYPE,
};
pub(crate) use handler::Reply;
pub use handler::{wait_all, CommandHandler, DurableWait, ExecOutcome, Executed, Queued, Watched};
pub use node::NodeCommand;
pub use table::{lookup, resolve, CacheFn, Handler, InMulti, Spec, StringKeys};
pub use transaction::{TransactionCommand, TransactionState};

use crate::engine::{CacheState, Engine};
use crate::notify::{Event, Notifier};
use crate::resp::Frame;
use crate::store::{value_bytes, CacheStore, Locked, Refusal};
use bytes::Bytes;
use std::collections::BTreeMap;
use xsite_consumer::merge::{Kind, Record};
use xsite_schemas::hlc::wall_clock_ms;
use xsite_schemas::{Hlc, HlcClock, LogEntry, Op, SiteId, Version};

/// Largest string value, in bytes (Redis `proto-max-bulk-len`).
pub const STRING_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// A decimal integer as Redis reads one (`string2ll`).
pub fn parse_i64(arg: &[u8]) -> Result<i64, Frame> {
    crate::resp::parse_integer(arg).ok_or_else(|| err(ERR_NOT_INTEGER))
}

/// The reply for a key's value (a counter as decimal text).
pub fn value_reply(rec: &Record) -> Frame {
    match value_bytes(rec) {
        Some(v) => Frame::Bulk(Bytes::from(v.into_owned())),
        None => Frame::Null,
    }
}

/// The time a command judges expiry at: the wall clock, or the clock's timestamps
/// when they run ahead of it (a wall clock that jumped back, remote timestamps
/// observed ahead). A write's own timestamp is never below this, so a key that is
/// expired for entries ordered before the write is expired for the write too: a
/// lagging wall clock cannot make a `PERSIST` or `KEEPTTL` see, and revive, a key
/// every other site already shows as expired.
pub fn command_time_ms(clock: &HlcClock, wall_ms: u64) -> u64 {
    wall_ms.max(clock.last().wall_ms())
}

/// The delete of a key as it stands: observed-remove of its elements for a hash
/// or a set ([`Op::HClear`], [`Op::SClear`] with what this site held), a tombstone
/// otherwise.
pub fn delete_op(rec: Option<&Record>, key: &[u8]) -> Op {
    let key = key.to_vec();
    match rec.map(|r| (r, r.kind())) {
        Some((r, kind @ Kind::Hash)) => Op::HClear { key, seen: r.part_seen(kind) },
        Some((r, kind @ Kind::Set)) => Op::SClear { key, seen: r.part_seen(kind) },
        Some((r, kind @ Kind::ZSet)) => Op::ZClear { key, seen: r.part_seen(kind) },
        Some((r, kind @ Kind::List)) => Op::LClear { key, seen: r.part_seen(kind) },
        _ => Op::Delete { key },
    }
}

/// The key's record if it is a live key of `kind`; WRONGTYPE if it is a live key
/// of another type.
pub(crate) fn live_of(rec: Option<&Record>, now_ms: u64, kind: Kind) -> Result<Option<&Record>, Frame> {
    match rec.filter(|r| r.is_live(now_ms)) {
        Some(r) if r.kind() == kind => Ok(Some(r)),
        Some(_) => Err(err(ERR_WRONGTYPE)),
        None => Ok(None),
    }
}

/// Reads `key` as a `kind` ([`live_of`]) under its shard's lock.
pub(crate) fn read_of<R>(
    ctx: &Ctx<'_>,
    key: &[u8],
    kind: Kind,
    f: impl FnOnce(Option<&Record>) -> R,
) -> Result<R, Frame> {
    ctx.store.read(key, |r| live_of(r, ctx.now_ms, kind).map(f))
}

/// What a write of a `kind` to a key that is not a live `kind` where it runs
/// (absent, expired, or of another type) carries: what this site held of that
/// part, which dies at every site, and the key's expiry is reset, as a new key in
/// Redis has none. `None` when the key is live.
pub(crate) fn new_key_seen(rec: Option<&Record>, live: bool, kind: Kind) -> Option<BTreeMap<SiteId, Hlc>> {
    (!live).then(|| rec.map(|r| r.part_seen(kind)).unwrap_or_default())
}

/// What a live key holds, as a copy of it (RENAME, COPY, MOVE, DUMP): a string's
/// bytes (a counter as decimal text), a hash's visible fields in name order, or a
/// set's members in byte order.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    String(Vec<u8>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    Set(Vec<Vec<u8>>),
    /// A sorted set's members and scores, by score then member.
    ZSet(Vec<(Vec<u8>, f64)>),
    /// A list's values, in order.
    List(Vec<Vec<u8>>),
}

impl Held {
    /// What `rec` holds (`None` for a tombstone).
    pub fn of(rec: &Record) -> Option<Held> {
        if let Some(items) = rec.list_items() {
            let values: Vec<Vec<u8>> = items.map(|(_, i)| i.value.clone()).collect();
            return (!values.is_empty()).then_some(Held::List(values));
        }
        if let Some(ranked) = rec.zset_ranked() {
            let members: Vec<(Vec<u8>, f64)> = ranked.into_iter().map(|(m, s)| (m.to_vec(), s)).collect();
            return (!members.is_empty()).then_some(Held::ZSet(members));
        }
        if let Some(members) = rec.set_members() {
            let members: Vec<Vec<u8>> = members.map(<[u8]>::to_vec).collect();
            return (!members.is_empty()).then_some(Held::Set(members));
        }
        match rec.hash_fields() {
            Some(fields) => {
                let fields: Vec<(Vec<u8>, Vec<u8>)> =
                    fields.map(|(k, f)| (k.to_vec(), f.value().unwrap_or_default().into_owned())).collect();
                (!fields.is_empty()).then_some(Held::Hash(fields))
            }
            None => value_bytes(rec).map(|v| Held::String(v.into_owned())),
        }
    }

    /// The ops that make `key` hold this, with `expire_at_ms`, replacing whatever
    /// it holds (`rec`, its record, live or not): a put for a string; for a hash, a
    /// set of every field that removes what the key held (its expiry reset), then
    /// the expiry.
    pub fn write_ops(self, key: &[u8], rec: Option<&Record>, expire_at_ms: Option<u64>) -> Vec<Op> {
        match self {
            Held::String(value) => vec![strings::put(key, value, expire_at_ms)],
            Held::Hash(fields) => {
                let seen = rec.map(|r| r.part_seen(Kind::Hash)).unwrap_or_default();
                let fields =
                    fields.into_iter().map(|(field, value)| xsite_schemas::FieldValue { field, value }).collect();
                let mut ops = vec![Op::HSet { key: key.to_vec(), fields, seen: Some(seen) }];
                if let Some(at) = expire_at_ms {
                    ops.push(Op::Expire { key: key.to_vec(), expire_at_ms: Some(at) });
                }
                ops
            }
            Held::ZSet(members) => {
                let seen = rec.map(|r| r.part_seen(Kind::ZSet)).unwrap_or_default();
                let members = members
                    .into_iter()
                    .map(|(member, score)| xsite_schemas::ScoredMember { member, score: xsite_schemas::Score(score) })
                    .collect();
                let mut ops = vec![Op::ZAdd { key: key.to_vec(), members, seen: Some(seen) }];
                if let Some(at) = expire_at_ms {
                    ops.push(Op::Expire { key: key.to_vec(), expire_at_ms: Some(at) });
                }
                ops
            }
            Held::Set(members) => {
                let seen = rec.map(|r| r.part_seen(Kind::Set)).unwrap_or_default();
                let mut ops = vec![Op::SAdd { key: key.to_vec(), members, seen: Some(seen) }];
                if let Some(at) = expire_at_ms {
                    ops.push(Op::Expire { key: key.to_vec(), expire_at_ms: Some(at) });
                }
                ops
            }
            Held::List(values) => {
                let seen = rec.map(|r| r.part_seen(Kind::List)).unwrap_or_default();
                let mut ops = vec![lists::fresh_list(key, values, seen)];
                if let Some(at) = expire_at_ms {
                    ops.push(Op::Expire { key: key.to_vec(), expire_at_ms: Some(at) });
                }
                ops
            }
        }
    }
}

/// Random indexes into `len` elements for a random pick of `count`, as Redis 7.0
/// picks (SRANDMEMBER, HRANDFIELD, SPOP): a positive count gives distinct ones (all
/// of them when it is larger), a negative one `|count|` that may repeat.
pub(crate) fn random_picks(len: usize, count: i64, seed: u64) -> Vec<usize> {
    let mut rng = seed | 1;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    if len == 0 || count == 0 {
        return Vec::new();
    }
    if count < 0 {
        return (0..count.unsigned_abs()).map(|_| next(len)).collect();
    }
    // Distinct: a partial shuffle of the indexes.
    let mut idx: Vec<usize> = (0..len).collect();
    let take = (count as usize).min(len);
    for i in 0..take {
        let j = i + next(len - i);
        idx.swap(i, j);
    }
    idx.truncate(take);
    idx
}

/// `Err(WRONGTYPE)` when the live record is not a string.
pub fn string_or_wrongtype(rec: Option<&Record>) -> Result<Option<&Record>, Frame> {
    match rec {
        Some(r) if r.kind() != Kind::String => Err(err(ERR_WRONGTYPE)),
        other => Ok(other),
    }
}

/// One cache, as a command sees it.
pub struct Ctx<'a> {
    pub site: &'a SiteId,
    pub clock: &'a HlcClock,
    pub store: &'a CacheStore,
    /// The cache's epoch, carried by every entry.
    pub epoch: u64,
    /// The request's wall-clock time: expiry is judged against it.
    pub now_ms: u64,
    /// Entries of the writes made so far, to append to the WAL before replying.
    pub pending: Vec<LogEntry>,
    /// The collection floor this site knows ([`Hlc::ZERO`]: none yet), and the skew
    /// collection allows for: an INCR on a record collectable below it counts from
    /// nothing after it (see `commands::counters`).
    pub floor: Hlc,
    pub collect_skew_ms: u64,
    /// A write the command attempted that was refused without changing anything
    /// (its entry would not fit in a Kafka message): the reply becomes this error.
    pub refused: Option<Refusal>,
    /// Where the command's keyspace notifications go, and its database (none in
    /// tests that run commands on a bare store).
    pub notifier: Option<(&'a Notifier, usize)>,
    /// The engine, to ask which remote sites read which log formats (none on a
    /// bare store: no remote site).
    pub engine: Option<&'a Engine>,
}

impl<'a> Ctx<'a> {
    pub fn new(site: &'a SiteId, clock: &'a HlcClock, store: &'a CacheStore, epoch: u64, now_ms: u64) -> Self {
        Ctx {
            site,
            clock,
            store,
            epoch,
            now_ms,
            pending: Vec::new(),
            floor: Hlc::ZERO,
            collect_skew_ms: 0,
            refused: None,
            notifier: None,
            engine: None,
        }
    }

    /// `Err` with the reply when a remote site's heartbeats say it does not read
    /// log format `version` (an older build, during a rolling upgrade): a write that
    /// needs it is refused before it changes anything, rather than sent to a site
    /// that would dead-letter it. A site not heard from since this node started is
    /// taken to read it, so that a site down does not stop these writes at the
    /// others: upgrade every site before using what `version` adds.
    pub fn needs_format(&self, version: u32, what: &str) -> Result<(), Frame> {
        let Some(engine) = self.engine else { return Ok(()) };
        let old: Vec<String> = engine
            .sites_not_reading(version)
            .into_iter()
            .filter_map(|(site, reads)| reads.map(|v| format!("{site} (reads {v})")))
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        Err(Frame::Error(format!(
            "ERR {what} need every site to read log format {version}, and {} does not yet: upgrade it first",
            old.join(", ")
        )))
    }

    /// [`Ctx::needs_format`] for every op of `ops` that needs a newer format than
    /// the first ones (a hash's 4, a set's 5).
    pub fn needs_format_of<'o>(&self, ops: impl IntoIterator<Item = &'o Op>) -> Result<(), Frame> {
        for op in ops {
            if op.is_list() {
                self.needs_format(xsite_schemas::FORMAT_VERSION_LISTS, "lists")?;
            } else if op.is_zset() {
                self.needs_format(xsite_schemas::FORMAT_VERSION_ZSETS, "sorted sets")?;
            } else if op.is_set() {
                self.needs_format(xsite_schemas::FORMAT_VERSION_SETS, "sets")?;
            } else if op.is_hash() {
                self.needs_format(xsite_schemas::FORMAT_VERSION_HASHES, "hashes")?;
            }
        }
        Ok(())
    }

    /// The context of `cache` of `engine` at the current time (see [`command_time_ms`]).
    pub fn for_cache(engine: &'a Engine, cache: &'a CacheState) -> Self {
        let now_ms = command_time_ms(engine.clock(), wall_clock_ms());
        let mut ctx = Ctx::new(engine.site(), engine.clock(), &cache.store, cache.epoch(), now_ms)
            .with_floor(engine.collection_floor(), engine.collect_skew_ms());
        ctx.notifier = Some((engine.notifier(), cache.db));
        ctx.engine = Some(engine);
        ctx
    }

    /// A keyspace notification of the command: `event` happened to `key` (nothing
    /// once a write of the command was refused: it changed nothing).
    pub fn notify(&self, event: Event, key: &[u8]) {
        if let (Some((notifier, db)), None) = (self.notifier, &self.refused) {
            notifier.notify(db, key, event);
        }
    }

    /// The collection floor (and its skew allowance) INCR decisions use.
    pub fn with_floor(mut self, floor: Hlc, collect_skew_ms: u64) -> Self {
        self.floor = floor;
        self.collect_skew_ms = collect_skew_ms;
        self
    }

    /// A local write, with its key's shard locked: timestamp it, join it, queue its
    /// entry. Returns the timestamp.
    pub fn write(&mut self, locked: &mut Locked<'_>, op: Op) -> Hlc {
        let hlc = self.clock.now();
        self.write_at(locked, hlc, op);
        hlc
    }

    /// [`Ctx::write`] with a timestamp already taken under the same lock (an
    /// increment's fresh counter base names its own timestamp).
    ///
    /// The last guard of the rule that no entry too large to replicate is ever
    /// written: commands check with [`Locked::admit`] before they change anything, so
    /// this refuses only ops no admission saw (a huge key in DEL, RENAME…).
    pub fn write_at(&mut self, locked: &mut Locked<'_>, hlc: Hlc, mut op: Op) {
        if let Err(refusal) = self.store.check_entry_size(&op) {
            tracing::debug!(cache = %self.store.name(), op = op.name(), error = %refusal, "write refused");
            self.refused.get_or_insert(refusal);
            return;
        }
        let version = Version::with_epoch(self.epoch, hlc, self.site.clone());
        op.stamp_list_ids(&version);
        let created = matches!(
            op,
            Op::Put { .. }
                | Op::Incr { .. }
                | Op::HSet { .. }
                | Op::HIncr { .. }
                | Op::HIncrFloat { .. }
                | Op::SAdd { .. }
                | Op::ZAdd { .. }
                | Op::ZIncr { .. }
                | Op::LPut { .. }
        ) && self.notifier.is_some_and(|(n, _)| n.wants(crate::notify::class::NEW))
            && op.key().is_some_and(|k| locked.live(k, self.now_ms).is_none());
        locked.apply(&version, &op);
        if created {
            self.notify(Event::New, op.key().expect("a put has a key"));
        }
        self.pending.push(LogEntry::new(self.site.clone(), hlc, self.epoch, self.store.name().clone(), op));
    }
}

/// Runs a cache command against `ctx` (no read-only check: that is
/// [`execute_deferred`]'s). `None` for an unknown command or one that is not a cache
/// command.
pub fn run(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Option<Frame> {
    let spec = lookup(args.first()?)?;
    let Handler::Cache(f) = spec.handler else {
        return None;
    };
    if !spec.arity_ok(args.len()) {
        return Some(wrong_arity(spec.name));
    }
    if let Some(wrong) = wrong_type(ctx, spec, args) {
        return Some(wrong);
    }
    Some(f(ctx, args))
}

/// WRONGTYPE when a key the command reads as a string holds a live hash or set.
pub(crate) fn wrong_type(ctx: &Ctx<'_>, spec: &Spec, args: &[Bytes]) -> Option<Frame> {
    if spec.strings == table::StringKeys::None {
        return None;
    }
    any_live_collection(ctx, spec.strings.of(args)).then(|| err(ERR_WRONGTYPE))
}

/// Whether any of `keys` holds a live hash or set (never, before the cache held
/// one).
pub(crate) fn any_live_collection(ctx: &Ctx<'_>, keys: &[Bytes]) -> bool {
    ctx.store.may_hold_collections()
        && keys
            .iter()
            .any(|key| ctx.store.read(key, |r| r.is_some_and(|r| r.is_live(ctx.now_ms) && r.kind() != Kind::String)))
}

#[cfg(test)]
mod connection_tests;
#[cfg(test)]
mod tests;
