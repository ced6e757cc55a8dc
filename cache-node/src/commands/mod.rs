//! The data commands, one file per family, mini-redis style: a command parses its
//! arguments and applies itself to the store.
//!
//! A cache command runs against a [`Ctx`]: one cache's store, the node's clock and
//! site, and the wall-clock time of the request. A write locks its keys' shards,
//! reads the current records, computes the new value, takes an HLC timestamp while
//! still holding the lock (so per-key order is HLC order), joins the [`Op`] into the
//! store and queues a [`LogEntry`] in [`Ctx::pending`]. The engine appends the queued
//! entries to the WAL and waits for them before the reply leaves.
//!
//! Replies and errors are Redis 7's, word for word.

pub mod counters;
mod dispatch;
mod errors;
pub mod keys;
pub mod node;
pub mod strings;

pub use dispatch::{execute, execute_deferred};
pub use errors::{
    err, invalid_expire, refused, wal_unwritable, write_failed, wrong_arity, ERR_DB_RANGE, ERR_NAN_OR_INFINITY,
    ERR_NOT_FLOAT, ERR_NOT_INTEGER, ERR_NO_SUCH_KEY, ERR_OFFSET_RANGE, ERR_OVERFLOW, ERR_READONLY, ERR_STRING_TOO_LONG,
    ERR_SYNTAX,
};

use crate::engine::{CacheState, Engine};
use crate::resp::Frame;
use crate::store::{value_bytes, CacheStore, Locked, Refusal};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::OnceLock;
use xsite_consumer::merge::Record;
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
    /// A write the command attempted that was refused without changing anything
    /// (its entry would not fit in a Kafka message): the reply becomes this error.
    pub refused: Option<Refusal>,
}

impl<'a> Ctx<'a> {
    pub fn new(site: &'a SiteId, clock: &'a HlcClock, store: &'a CacheStore, epoch: u64, now_ms: u64) -> Self {
        Ctx { site, clock, store, epoch, now_ms, pending: Vec::new(), refused: None }
    }

    /// The context of `cache` of `engine` at the current wall-clock time.
    pub fn for_cache(engine: &'a Engine, cache: &'a CacheState) -> Self {
        Ctx::new(engine.site(), engine.clock(), &cache.store, cache.epoch(), wall_clock_ms())
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
    pub fn write_at(&mut self, locked: &mut Locked<'_>, hlc: Hlc, op: Op) {
        if let Err(refusal) = self.store.check_entry_size(&op) {
            tracing::debug!(cache = %self.store.name(), op = op.name(), error = %refusal, "write refused");
            self.refused.get_or_insert(refusal);
            return;
        }
        let version = Version::with_epoch(self.epoch, hlc, self.site.clone());
        locked.apply(&version, &op);
        self.pending.push(LogEntry {
            id: LogEntry::new_id(),
            origin: self.site.clone(),
            seq: 0,
            hlc,
            epoch: self.epoch,
            cache: self.store.name().clone(),
            op,
        });
    }
}

/// Commands the engine runs itself because they span caches or the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCommand {
    Info,
    Time,
    Config,
    FlushAll,
    Save,
    BgSave,
    LastSave,
}

pub type CacheFn = fn(&mut Ctx<'_>, &[Bytes]) -> Frame;

#[derive(Clone, Copy)]
pub enum Handler {
    Cache(CacheFn),
    Node(NodeCommand),
}

/// A command's name, arity (Redis's: `n` exactly, `-n` at least, counting the name)
/// and whether it writes (refused on a read-only cache).
pub struct Spec {
    pub name: &'static str,
    pub arity: i32,
    pub write: bool,
    pub handler: Handler,
}

impl Spec {
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}

const fn cache(name: &'static str, arity: i32, write: bool, f: CacheFn) -> Spec {
    Spec { name, arity, write, handler: Handler::Cache(f) }
}

const fn node(name: &'static str, arity: i32, write: bool, c: NodeCommand) -> Spec {
    Spec { name, arity, write, handler: Handler::Node(c) }
}

static COMMANDS: &[Spec] = &[
    cache("get", 2, false, strings::get),
    cache("set", -3, true, strings::set),
    cache("setnx", 3, true, strings::setnx),
    cache("setex", 4, true, strings::setex),
    cache("psetex", 4, true, strings::psetex),
    cache("mget", -2, false, strings::mget),
    cache("mset", -3, true, strings::mset),
    cache("msetnx", -3, true, strings::msetnx),
    cache("getset", 3, true, strings::getset),
    cache("getdel", 2, true, strings::getdel),
    cache("getex", -2, true, strings::getex),
    cache("append", 3, true, strings::append),
    cache("strlen", 2, false, strings::strlen),
    cache("getrange", 4, false, strings::getrange),
    cache("substr", 4, false, strings::getrange),
    cache("setrange", 4, true, strings::setrange),
    cache("incr", 2, true, counters::incr),
    cache("decr", 2, true, counters::decr),
    cache("incrby", 3, true, counters::incrby),
    cache("decrby", 3, true, counters::decrby),
    cache("incrbyfloat", 3, true, counters::incrbyfloat),
    cache("del", -2, true, keys::del),
    cache("unlink", -2, true, keys::del),
    cache("exists", -2, false, keys::exists),
    cache("touch", -2, false, keys::exists),
    cache("type", 2, false, keys::type_),
    cache("expire", -3, true, keys::expire),
    cache("pexpire", -3, true, keys::pexpire),
    cache("expireat", -3, true, keys::expireat),
    cache("pexpireat", -3, true, keys::pexpireat),
    cache("ttl", 2, false, keys::ttl),
    cache("pttl", 2, false, keys::pttl),
    cache("expiretime", 2, false, keys::expiretime),
    cache("pexpiretime", 2, false, keys::pexpiretime),
    cache("persist", 2, true, keys::persist),
    cache("keys", 2, false, keys::keys),
    cache("scan", -2, false, keys::scan),
    cache("dbsize", 1, false, keys::dbsize),
    cache("flushdb", -1, true, keys::flushdb),
    cache("rename", 3, true, keys::rename),
    cache("renamenx", 3, true, keys::renamenx),
    cache("randomkey", 1, false, keys::randomkey),
    node("flushall", -1, true, NodeCommand::FlushAll),
    node("info", -1, false, NodeCommand::Info),
    node("time", 1, false, NodeCommand::Time),
    node("config", -2, false, NodeCommand::Config),
    node("save", 1, false, NodeCommand::Save),
    node("bgsave", -1, false, NodeCommand::BgSave),
    node("lastsave", 1, false, NodeCommand::LastSave),
];

/// Longest command name in the table, in bytes.
const NAME_BYTES_MAX: usize = 16;

/// The command named `name` (any case), if this node serves it.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    static BY_NAME: OnceLock<HashMap<&'static str, &'static Spec>> = OnceLock::new();
    if name.len() > NAME_BYTES_MAX {
        return None;
    }
    let lower = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
    BY_NAME.get_or_init(|| COMMANDS.iter().map(|s| (s.name, s)).collect()).get(lower.as_str()).copied()
}

/// Runs a cache command against `ctx` (no read-only check: that is the engine's).
/// `None` for an unknown command or one the engine runs itself.
pub fn run(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Option<Frame> {
    let spec = lookup(args.first()?)?;
    let Handler::Cache(f) = spec.handler else {
        return None;
    };
    if !spec.arity_ok(args.len()) {
        return Some(wrong_arity(spec.name));
    }
    Some(f(ctx, args))
}

#[cfg(test)]
mod tests;
