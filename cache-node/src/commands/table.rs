//! The command table: every command this node serves — the connection commands, the
//! transaction commands, the cache commands and the node commands — with its arity,
//! whether it writes, whether it runs before authentication and what it does inside
//! `MULTI`; and [`resolve`], the one place a request is looked up and its arity
//! checked.
//!
//! Arity is Redis's: `n` is exactly n arguments, `-n` at least n, the command name
//! counted. A container command (`CLIENT`, `COMMAND`) names a subcommand in
//! `args[1]`, which has its own arity and is reported as `client|setname`.

use super::connection::{ClientSub, CommandSub, ConnectionCommand};
use super::errors::{unknown_subcommand, wrong_arity};
use super::node::NodeCommand;
use super::script::Eval;
use super::transaction::TransactionCommand;
use super::{bits, counters, dump, hashes, keys, lists, object, sets, sort, strings, zsets, Ctx};
use crate::pubsub::Kind;
use crate::resp::Frame;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A cache command: runs against one cache's [`Ctx`].
pub type CacheFn = fn(&mut Ctx<'_>, &[Bytes]) -> Frame;

/// What runs a command.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Against the selected database's cache (the engine runs it).
    Cache(CacheFn),
    /// Against the whole engine.
    Node(NodeCommand),
    /// Against the client's session (the connection runs it).
    Connection(ConnectionCommand),
    /// `MULTI` `EXEC` `DISCARD` `WATCH` `UNWATCH`: the session's transaction.
    Transaction(TransactionCommand),
    /// A container (`CLIENT`): it runs nothing itself; its subcommand says what runs.
    Container,
}

/// What a command does while its client is in `MULTI` (Redis 7.0's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InMulti {
    /// Queued, to run at `EXEC` (most commands).
    Queue,
    /// Runs at once: `EXEC`, `DISCARD`, `MULTI`, `WATCH` (which refuse or act on
    /// the transaction), `QUIT`, `RESET`.
    Run,
    /// Refused, and the transaction with it (`SAVE`).
    Refuse,
}

/// Which arguments of a command are keys that must hold strings (or nothing): a
/// hash there answers WRONGTYPE before the command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringKeys {
    None,
    /// `args[1]`.
    First,
    /// `args[3..]` (BITOP's sources).
    FromThird,
}

impl StringKeys {
    /// The arguments that are such keys.
    pub fn of(self, args: &[Bytes]) -> &[Bytes] {
        let range = match self {
            StringKeys::None => 0..0,
            StringKeys::First => 1..2,
            StringKeys::FromThird => 3..args.len(),
        };
        args.get(range).unwrap_or_default()
    }
}

/// One command (or subcommand) of the table.
pub struct Spec {
    /// Lowercase; a subcommand's is `container|sub`.
    pub name: &'static str,
    /// Redis's arity, the name counted.
    pub arity: i32,
    /// Arguments taken at most, the name counted (`PING` and `AUTH` take one
    /// optional argument).
    pub args_max: usize,
    /// A write: refused on a read-only cache and while the WAL cannot write.
    pub write: bool,
    /// Runs before the client authenticated (`AUTH`, `HELLO`, `QUIT`, `RESET`).
    pub before_auth: bool,
    pub in_multi: InMulti,
    pub handler: Handler,
    /// A container's subcommands, looked up by `args[1]`.
    pub subcommands: &'static [Spec],
    /// Keys that must not hold a hash.
    pub strings: StringKeys,
    /// A blocking command (BLPOP…): outside a transaction the dispatcher runs it
    /// again as lists are pushed, until it finds something or its timeout passes.
    pub blocks: bool,
}

impl Spec {
    /// Whether `argc` arguments (the name counted) fit this command.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let (argc_i, arity) = (argc as i64, i64::from(self.arity));
        let fits = if arity >= 0 { argc_i == arity } else { argc_i >= -arity };
        fits && argc <= self.args_max
    }

    /// The name a subcommand is called by (`setname` of `client|setname`).
    fn sub_name(&self) -> &'static str {
        self.name.split_once('|').map_or(self.name, |(_, sub)| sub)
    }

    const fn new(name: &'static str, arity: i32, write: bool, handler: Handler) -> Spec {
        Spec {
            name,
            arity,
            args_max: usize::MAX,
            write,
            before_auth: false,
            in_multi: InMulti::Queue,
            handler,
            subcommands: &[],
            strings: StringKeys::None,
            blocks: false,
        }
    }

    const fn blocking(self) -> Spec {
        Spec { blocks: true, ..self }
    }

    const fn strings(self, strings: StringKeys) -> Spec {
        Spec { strings, ..self }
    }

    const fn before_auth(self) -> Spec {
        Spec { before_auth: true, ..self }
    }

    const fn in_multi(self, in_multi: InMulti) -> Spec {
        Spec { in_multi, ..self }
    }

    const fn args_at_most(self, args_max: usize) -> Spec {
        Spec { args_max, ..self }
    }

    const fn with_subcommands(self, subcommands: &'static [Spec]) -> Spec {
        Spec { subcommands, ..self }
    }
}

const fn cache(name: &'static str, arity: i32, write: bool, f: CacheFn) -> Spec {
    Spec::new(name, arity, write, Handler::Cache(f))
}

const fn node(name: &'static str, arity: i32, write: bool, c: NodeCommand) -> Spec {
    Spec::new(name, arity, write, Handler::Node(c))
}

const fn connection(name: &'static str, arity: i32, c: ConnectionCommand) -> Spec {
    Spec::new(name, arity, false, Handler::Connection(c))
}

const fn transaction(name: &'static str, arity: i32, c: TransactionCommand) -> Spec {
    Spec::new(name, arity, false, Handler::Transaction(c))
}

const fn client(name: &'static str, arity: i32, sub: ClientSub) -> Spec {
    connection(name, arity, ConnectionCommand::Client(sub))
}

const fn command(name: &'static str, arity: i32, sub: CommandSub) -> Spec {
    connection(name, arity, ConnectionCommand::Command(sub))
}

const CLIENT_SUBCOMMANDS: &[Spec] = &[
    client("client|id", 2, ClientSub::Id),
    client("client|getname", 2, ClientSub::GetName),
    client("client|setname", 3, ClientSub::SetName),
    client("client|setinfo", 4, ClientSub::SetInfo),
    client("client|info", 2, ClientSub::Info),
    client("client|list", -2, ClientSub::List),
    client("client|help", 2, ClientSub::Help),
];

const COMMAND_SUBCOMMANDS: &[Spec] = &[
    command("command|count", 2, CommandSub::Count),
    command("command|docs", -2, CommandSub::Docs),
    command("command|info", -2, CommandSub::Info),
    command("command|list", -2, CommandSub::List),
    command("command|help", 2, CommandSub::Help),
];

static COMMANDS: &[Spec] = &[
    connection("ping", -1, ConnectionCommand::Ping).args_at_most(2),
    connection("echo", 2, ConnectionCommand::Echo),
    connection("quit", -1, ConnectionCommand::Quit).before_auth().in_multi(InMulti::Run),
    connection("hello", -1, ConnectionCommand::Hello).before_auth(),
    connection("auth", -2, ConnectionCommand::Auth).args_at_most(3).before_auth(),
    connection("select", 2, ConnectionCommand::Select),
    connection("reset", 1, ConnectionCommand::Reset).before_auth().in_multi(InMulti::Run),
    transaction("multi", 1, TransactionCommand::Multi).in_multi(InMulti::Run),
    transaction("exec", 1, TransactionCommand::Exec).in_multi(InMulti::Run),
    transaction("discard", 1, TransactionCommand::Discard).in_multi(InMulti::Run),
    transaction("watch", -2, TransactionCommand::Watch).in_multi(InMulti::Run),
    transaction("unwatch", 1, TransactionCommand::Unwatch),
    Spec::new("client", -2, false, Handler::Container).with_subcommands(CLIENT_SUBCOMMANDS),
    // COMMAND alone lists the commands, as COMMAND LIST does.
    command("command", -1, CommandSub::List).with_subcommands(COMMAND_SUBCOMMANDS),
    cache("get", 2, false, strings::get).strings(StringKeys::First),
    cache("set", -3, true, strings::set),
    cache("setnx", 3, true, strings::setnx),
    cache("setex", 4, true, strings::setex),
    cache("psetex", 4, true, strings::psetex),
    cache("mget", -2, false, strings::mget),
    cache("mset", -3, true, strings::mset),
    cache("msetnx", -3, true, strings::msetnx),
    cache("getset", 3, true, strings::getset).strings(StringKeys::First),
    cache("getdel", 2, true, strings::getdel).strings(StringKeys::First),
    cache("getex", -2, true, strings::getex).strings(StringKeys::First),
    cache("append", 3, true, strings::append).strings(StringKeys::First),
    cache("strlen", 2, false, strings::strlen).strings(StringKeys::First),
    cache("getrange", 4, false, strings::getrange).strings(StringKeys::First),
    cache("substr", 4, false, strings::getrange).strings(StringKeys::First),
    cache("setrange", 4, true, strings::setrange).strings(StringKeys::First),
    cache("setbit", 4, true, bits::setbit).strings(StringKeys::First),
    cache("getbit", 3, false, bits::getbit).strings(StringKeys::First),
    cache("bitcount", -2, false, bits::bitcount).strings(StringKeys::First),
    cache("bitpos", -3, false, bits::bitpos).strings(StringKeys::First),
    cache("bitop", -4, true, bits::bitop).strings(StringKeys::FromThird),
    cache("bitfield", -2, true, bits::bitfield).strings(StringKeys::First),
    cache("bitfield_ro", -2, false, bits::bitfield_ro).strings(StringKeys::First),
    cache("lcs", -3, false, bits::lcs),
    cache("incr", 2, true, counters::incr).strings(StringKeys::First),
    cache("decr", 2, true, counters::decr).strings(StringKeys::First),
    cache("incrby", 3, true, counters::incrby).strings(StringKeys::First),
    cache("decrby", 3, true, counters::decrby).strings(StringKeys::First),
    cache("incrbyfloat", 3, true, counters::incrbyfloat).strings(StringKeys::First),
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
    cache("dump", 2, false, dump::dump),
    cache("sort", -2, true, sort::sort),
    cache("sort_ro", -2, false, sort::sort_ro),
    cache("restore", -4, true, dump::restore),
    // Its subcommands are dispatched by `object::object` (a cache command).
    cache("object", -2, false, object::object),
    cache("hset", -4, true, hashes::hset),
    cache("hmset", -4, true, hashes::hmset),
    cache("hsetnx", 4, true, hashes::hsetnx),
    cache("hget", 3, false, hashes::hget),
    cache("hmget", -3, false, hashes::hmget),
    cache("hgetall", 2, false, hashes::hgetall),
    cache("hdel", -3, true, hashes::hdel),
    cache("hexists", 3, false, hashes::hexists),
    cache("hincrby", 4, true, hashes::hincrby),
    cache("hincrbyfloat", 4, true, hashes::hincrbyfloat),
    cache("hkeys", 2, false, hashes::hkeys),
    cache("hvals", 2, false, hashes::hvals),
    cache("hlen", 2, false, hashes::hlen),
    cache("hstrlen", 3, false, hashes::hstrlen),
    cache("hrandfield", -2, false, hashes::hrandfield),
    cache("hscan", -3, false, hashes::hscan),
    cache("lpush", -3, true, lists::lpush),
    cache("rpush", -3, true, lists::rpush),
    cache("lpushx", -3, true, lists::lpushx),
    cache("rpushx", -3, true, lists::rpushx),
    cache("lpop", -2, true, lists::lpop),
    cache("rpop", -2, true, lists::rpop),
    cache("lmpop", -4, true, lists::lmpop),
    cache("llen", 2, false, lists::llen),
    cache("lrange", 4, false, lists::lrange),
    cache("lindex", 3, false, lists::lindex),
    cache("lset", 4, true, lists::lset),
    cache("lrem", 4, true, lists::lrem),
    cache("ltrim", 4, true, lists::ltrim),
    cache("linsert", 5, true, lists::linsert),
    cache("lpos", -3, false, lists::lpos),
    cache("lmove", 5, true, lists::lmove),
    cache("rpoplpush", 3, true, lists::rpoplpush),
    cache("blpop", -3, true, lists::blpop).blocking(),
    cache("brpop", -3, true, lists::brpop).blocking(),
    cache("blmpop", -5, true, lists::blmpop).blocking(),
    cache("blmove", 6, true, lists::blmove).blocking(),
    cache("brpoplpush", 4, true, lists::brpoplpush).blocking(),
    cache("sadd", -3, true, sets::sadd),
    cache("srem", -3, true, sets::srem),
    cache("smembers", 2, false, sets::smembers),
    cache("sismember", 3, false, sets::sismember),
    cache("smismember", -3, false, sets::smismember),
    cache("scard", 2, false, sets::scard),
    cache("spop", -2, true, sets::spop),
    cache("srandmember", -2, false, sets::srandmember),
    cache("smove", 4, true, sets::smove),
    cache("sinter", -2, false, sets::sinter),
    cache("sunion", -2, false, sets::sunion),
    cache("sdiff", -2, false, sets::sdiff),
    cache("sinterstore", -3, true, sets::sinterstore),
    cache("sunionstore", -3, true, sets::sunionstore),
    cache("sdiffstore", -3, true, sets::sdiffstore),
    cache("sintercard", -3, false, sets::sintercard),
    cache("sscan", -3, false, sets::sscan),
    cache("zadd", -4, true, zsets::zadd),
    cache("zincrby", 4, true, zsets::zincrby),
    cache("zrem", -3, true, zsets::zrem),
    cache("zscore", 3, false, zsets::zscore),
    cache("zmscore", -3, false, zsets::zmscore),
    cache("zcard", 2, false, zsets::zcard),
    cache("zcount", 4, false, zsets::zcount),
    cache("zlexcount", 4, false, zsets::zlexcount),
    cache("zrange", -4, false, zsets::zrange),
    cache("zrevrange", -4, false, zsets::zrevrange),
    cache("zrangebyscore", -4, false, zsets::zrangebyscore),
    cache("zrevrangebyscore", -4, false, zsets::zrevrangebyscore),
    cache("zrangebylex", -4, false, zsets::zrangebylex),
    cache("zrevrangebylex", -4, false, zsets::zrevrangebylex),
    cache("zrangestore", -5, true, zsets::zrangestore),
    cache("zrank", 3, false, zsets::zrank),
    cache("zrevrank", 3, false, zsets::zrevrank),
    cache("zpopmin", -2, true, zsets::zpopmin),
    cache("zpopmax", -2, true, zsets::zpopmax),
    cache("zunionstore", -4, true, zsets::zunionstore),
    cache("zinterstore", -4, true, zsets::zinterstore),
    cache("zdiffstore", -4, true, zsets::zdiffstore),
    cache("zremrangebyscore", 4, true, zsets::zremrangebyscore),
    cache("zremrangebyrank", 4, true, zsets::zremrangebyrank),
    cache("zremrangebylex", 4, true, zsets::zremrangebylex),
    cache("zrandmember", -2, false, zsets::zrandmember),
    cache("zscan", -3, false, zsets::zscan),
    node("copy", -3, true, NodeCommand::Copy),
    node("move", 3, true, NodeCommand::Move),
    node("swapdb", 3, true, NodeCommand::SwapDb),
    node("wait", 3, false, NodeCommand::Wait),
    node("eval", -3, true, NodeCommand::Eval(Eval { by_sha: false, read_only: false })),
    node("evalsha", -3, true, NodeCommand::Eval(Eval { by_sha: true, read_only: false })),
    node("eval_ro", -3, false, NodeCommand::Eval(Eval { by_sha: false, read_only: true })),
    node("evalsha_ro", -3, false, NodeCommand::Eval(Eval { by_sha: true, read_only: true })),
    node("script", -2, false, NodeCommand::Script),
    node("flushall", -1, true, NodeCommand::FlushAll),
    node("info", -1, false, NodeCommand::Info),
    node("role", 1, false, NodeCommand::Role),
    node("time", 1, false, NodeCommand::Time),
    node("config", -2, false, NodeCommand::Config),
    node("save", 1, false, NodeCommand::Save).in_multi(InMulti::Refuse),
    node("bgsave", -1, false, NodeCommand::BgSave),
    node("lastsave", 1, false, NodeCommand::LastSave),
    connection("subscribe", -2, ConnectionCommand::Subscribe(Kind::Channel)),
    connection("psubscribe", -2, ConnectionCommand::Subscribe(Kind::Pattern)),
    connection("ssubscribe", -2, ConnectionCommand::Subscribe(Kind::Shard)),
    connection("unsubscribe", -1, ConnectionCommand::Unsubscribe(Kind::Channel)),
    connection("punsubscribe", -1, ConnectionCommand::Unsubscribe(Kind::Pattern)),
    connection("sunsubscribe", -1, ConnectionCommand::Unsubscribe(Kind::Shard)),
    node("publish", 3, false, NodeCommand::Publish),
    node("spublish", 3, false, NodeCommand::SPublish),
    node("pubsub", -2, false, NodeCommand::PubSub),
];

/// Longest command name in the table, in bytes.
const NAME_BYTES_MAX: usize = 16;

/// The command named `name` (any case), if this node serves it.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    // Every request looks its command up, most twice: a name is one 128-bit word
    // (lowercased, zero-padded), hashed by foldhash in a few instructions and
    // compared in one. No name holds a zero byte, so padding is unambiguous.
    type ByName = HashMap<u128, &'static Spec, foldhash::fast::FixedState>;
    static BY_NAME: OnceLock<ByName> = OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| {
        COMMANDS.iter().map(|s| (name_word(s.name.as_bytes()).expect("a table name fits a word"), s)).collect()
    });
    by_name.get(&name_word(name)?).copied()
}

/// `name` lowercased in one little-endian word, zero-padded: `None` when it is
/// longer than any command's or holds a zero byte (no command is so named).
fn name_word(name: &[u8]) -> Option<u128> {
    const _: () = assert!(NAME_BYTES_MAX <= 16, "a command name fits a 128-bit word");
    let mut buf = [0u8; 16];
    buf.get_mut(..name.len()).filter(|_| name.len() <= NAME_BYTES_MAX)?.copy_from_slice(name);
    if name.contains(&0) {
        return None;
    }
    buf.make_ascii_lowercase();
    Some(u128::from_le_bytes(buf))
}

/// The command a request names, its subcommand resolved and its arity checked:
/// `Ok(None)` for a command not in the table, `Err` with the reply for a wrong
/// number of arguments or an unknown subcommand. `args` is never empty.
pub fn resolve(args: &[Bytes]) -> Result<Option<&'static Spec>, Frame> {
    let Some(spec) = lookup(&args[0]) else {
        return Ok(None);
    };
    if !spec.arity_ok(args.len()) {
        return Err(wrong_arity(spec.name));
    }
    let Some(sub) = args.get(1).filter(|_| !spec.subcommands.is_empty()) else {
        return Ok(Some(spec));
    };
    let Some(found) = spec.subcommands.iter().find(|s| sub.eq_ignore_ascii_case(s.sub_name().as_bytes())) else {
        return Err(unknown_subcommand(spec.name, sub));
    };
    if !found.arity_ok(args.len()) {
        return Err(wrong_arity(found.name));
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    #[test]
    fn names_fit_the_lookup_buffer_and_are_lowercase() {
        for spec in COMMANDS.iter().chain(CLIENT_SUBCOMMANDS).chain(COMMAND_SUBCOMMANDS) {
            assert!(spec.name.len() <= NAME_BYTES_MAX, "{}", spec.name);
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
        }
        assert!(lookup(b"x".repeat(NAME_BYTES_MAX + 1).as_slice()).is_none());
        assert!(lookup(b"IncrByFloat").is_some());
        assert!(lookup(b"get\0").is_none(), "a zero byte is not padding");
        assert!(lookup(b"").is_none());
        assert!(COMMANDS.iter().all(|s| lookup(s.name.to_uppercase().as_bytes()).is_some_and(|f| f.name == s.name)));
    }

    #[test]
    fn a_container_always_resolves_to_a_subcommand() {
        for spec in COMMANDS.iter().filter(|s| matches!(s.handler, Handler::Container)) {
            assert!(spec.arity <= -2 && !spec.subcommands.is_empty(), "{}", spec.name);
        }
        assert_eq!(resolve(&args("client")).err(), Some(wrong_arity("client")));
        assert_eq!(resolve(&args("CLIENT ID")).unwrap().map(|s| s.name), Some("client|id"));
        assert_eq!(resolve(&args("command")).unwrap().map(|s| s.name), Some("command"));
    }

    #[test]
    fn inside_multi_everything_is_queued_but_the_transaction_commands_quit_reset_and_save() {
        let all = COMMANDS.iter().chain(CLIENT_SUBCOMMANDS).chain(COMMAND_SUBCOMMANDS);
        let runs: Vec<&str> = all.clone().filter(|s| s.in_multi == InMulti::Run).map(|s| s.name).collect();
        assert_eq!(runs, ["quit", "reset", "multi", "exec", "discard", "watch"]);
        let refused: Vec<&str> = all.filter(|s| s.in_multi == InMulti::Refuse).map(|s| s.name).collect();
        assert_eq!(refused, ["save"]);
    }

    #[test]
    fn arity_counts_the_name_and_bounds_optional_arguments() {
        assert!(resolve(&args("ping hi")).is_ok());
        assert_eq!(resolve(&args("ping a b")).err(), Some(wrong_arity("ping")));
        assert_eq!(resolve(&args("get")).err(), Some(wrong_arity("get")));
        assert_eq!(resolve(&args("client setname")).err(), Some(wrong_arity("client|setname")));
        assert!(matches!(resolve(&args("nosuch a")), Ok(None)));
    }
}
