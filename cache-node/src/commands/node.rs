//! Node commands: INFO, ROLE, TIME, CONFIG, FLUSHALL, SAVE, BGSAVE, LASTSAVE (and
//! PUBLISH, SPUBLISH, PUBSUB: see [`super::pubsub`]). They span
//! every cache or describe the node, so they run against the whole engine rather
//! than one cache's [`Ctx`].

use super::connection::REDIS_VERSION;
use super::copy::{self, Family};
use super::keys::{check_flush_args, flush};
use super::transaction::ERR_NOT_IN_TRANSACTION;
use super::{err, Ctx, ERR_READONLY};
use crate::engine::{CacheState, Engine};
use crate::resp::Frame;
use crate::store::glob::glob_match;
use bytes::Bytes;
use std::fmt::Write;
use xsite_schemas::LogEntry;

/// A node command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCommand {
    Info,
    Role,
    Time,
    Config,
    FlushAll,
    Save,
    BgSave,
    LastSave,
    Publish,
    SPublish,
    PubSub,
    Copy,
    Move,
    SwapDb,
    Wait,
    /// EVAL EVALSHA EVAL_RO EVALSHA_RO.
    Eval(super::script::Eval),
    /// SCRIPT LOAD|EXISTS|FLUSH|KILL|HELP.
    Script,
}

pub async fn run(engine: &Engine, db: usize, cmd: NodeCommand, args: &[Bytes]) -> Frame {
    match cmd {
        NodeCommand::FlushAll => flushall(engine, args).await,
        NodeCommand::Copy => copy::run(engine, db, Family::Copy, args).await,
        NodeCommand::Move => copy::run(engine, db, Family::Move, args).await,
        NodeCommand::Wait => super::wait::wait(engine, args).await,
        NodeCommand::Eval(how) => super::script::run(engine, db, how, args).await,
        NodeCommand::Save => match engine.snapshot().await {
            Ok(_) => Frame::ok(),
            Err(e) => Frame::Error(format!("ERR {e}")),
        },
        _ => run_now(engine, db, cmd, args),
    }
}

/// A node command inside a transaction, which holds the gate of every store it
/// touches (all of them for `FLUSHALL`): `FLUSHALL` queues its entries in
/// `pending`; `SAVE` cannot run in one (it waits for every write, the
/// transaction's included), and is refused when queued.
pub fn run_in_transaction(
    engine: &Engine,
    db: usize,
    cmd: NodeCommand,
    args: &[Bytes],
    pending: &mut Vec<LogEntry>,
) -> Frame {
    match cmd {
        NodeCommand::FlushAll => match check_flushall(engine, args) {
            Ok(()) => {
                engine.caches().iter().for_each(|cache| flush_into(engine, cache, pending));
                Frame::ok()
            }
            Err(error) => error,
        },
        NodeCommand::Save => err(ERR_NOT_IN_TRANSACTION),
        NodeCommand::Copy => copy::run_into(engine, db, Family::Copy, args, pending),
        NodeCommand::Move => copy::run_into(engine, db, Family::Move, args, pending),
        NodeCommand::Eval(how) => match engine.cache_by_db(db) {
            Some(cache) => super::script::run_into(engine, cache, how, args, pending),
            None => err(super::errors::ERR_DB_RANGE),
        },
        _ => run_now(engine, db, cmd, args),
    }
}

/// The node commands that only read.
fn run_now(engine: &Engine, db: usize, cmd: NodeCommand, args: &[Bytes]) -> Frame {
    match cmd {
        NodeCommand::Info => info(engine, db, &args[1..]),
        NodeCommand::Role => role(engine, db),
        NodeCommand::Time => time(),
        NodeCommand::Config => config(engine, args),
        NodeCommand::BgSave => bgsave(engine, args),
        NodeCommand::LastSave => Frame::Integer(engine.last_snapshot().1 as i64),
        NodeCommand::Publish => super::pubsub::publish(engine, args, false),
        NodeCommand::SPublish => super::pubsub::publish(engine, args, true),
        NodeCommand::PubSub => super::pubsub::pubsub(engine, args),
        NodeCommand::SwapDb => copy::swapdb(args),
        NodeCommand::Wait => super::wait::wait_now(engine, args),
        NodeCommand::Script => super::script::script(engine, args),
        NodeCommand::FlushAll | NodeCommand::Save | NodeCommand::Copy | NodeCommand::Move | NodeCommand::Eval(_) => {
            unreachable!("{cmd:?} is not read-only")
        }
    }
}

fn time() -> Frame {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    Frame::Array(vec![
        Frame::Bulk(Bytes::from((micros / 1_000_000).to_string())),
        Frame::Bulk(Bytes::from((micros % 1_000_000).to_string())),
    ])
}

fn bgsave(engine: &Engine, args: &[Bytes]) -> Frame {
    match args.get(1) {
        None => {}
        Some(a) if args.len() == 2 && a.eq_ignore_ascii_case(b"schedule") => {}
        Some(_) => return err(super::ERR_SYNTAX),
    }
    let Some(engine) = engine.handle() else {
        return err("ERR the engine is shutting down");
    };
    tokio::spawn(async move {
        if let Err(e) = engine.snapshot().await {
            tracing::warn!(error = %e, "BGSAVE failed");
        }
    });
    Frame::Simple("Background saving started".into())
}

/// FLUSHALL: FLUSHDB in every cache; refused if any cache is read-only.
async fn flushall(engine: &Engine, args: &[Bytes]) -> Frame {
    if let Err(f) = check_flushall(engine, args) {
        return f;
    }
    let mut pending = Vec::new();
    for cache in engine.caches() {
        let _shared = cache.store.share();
        flush_into(engine, cache, &mut pending);
    }
    match engine.commit(pending).await {
        Ok(()) => Frame::ok(),
        Err(e) => Frame::Error(format!("ERR {e}")),
    }
}

fn check_flushall(engine: &Engine, args: &[Bytes]) -> Result<(), Frame> {
    check_flush_args(args)?;
    if engine.caches().iter().any(|c| c.is_read_only()) {
        return Err(err(ERR_READONLY));
    }
    Ok(())
}

/// Deletes every live key of `cache`, queuing the entries in `pending`.
fn flush_into(engine: &Engine, cache: &CacheState, pending: &mut Vec<LogEntry>) {
    let mut ctx = Ctx::for_cache(engine, cache);
    flush(&mut ctx);
    pending.append(&mut ctx.pending);
}

/// CONFIG GET answers the few parameters clients ask about (an empty map for the
/// rest); CONFIG SET takes `notify-keyspace-events` (until a restart: the config
/// file's `pubsub.notify_keyspace_events` is what a node starts with) and refuses
/// the rest; CONFIG RESETSTAT and REWRITE are accepted.
fn config(engine: &Engine, args: &[Bytes]) -> Frame {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"get" if args.len() >= 3 => {
            let c = engine.config();
            let params: [(&str, String); 7] = [
                ("maxmemory", engine.memory().limit_bytes().to_string()),
                ("maxmemory-policy", "noeviction".into()),
                ("databases", engine.caches().iter().map(|c| c.db + 1).max().unwrap_or(1).to_string()),
                ("port", c.server.port.to_string()),
                ("bind", c.server.bind.clone()),
                ("proto-max-bulk-len", super::STRING_BYTES_MAX.to_string()),
                ("notify-keyspace-events", crate::notify::format_flags(engine.notifier().flags())),
            ];
            let mut out = Vec::new();
            for (name, value) in &params {
                if args[2..].iter().any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes())) {
                    out.push((Frame::Bulk(Bytes::from(*name)), Frame::Bulk(Bytes::from(value.clone()))));
                }
            }
            Frame::Map(out)
        }
        b"resetstat" | b"rewrite" if args.len() == 2 => Frame::ok(),
        b"set" if args.len() >= 4 => config_set(engine, &args[2..]),
        b"get" | b"set" | b"resetstat" | b"rewrite" => Frame::Error(format!(
            "ERR wrong number of arguments for 'config|{}' command",
            String::from_utf8_lossy(&sub)
        )),
        _ => Frame::Error(format!("ERR unknown subcommand '{}'. Try CONFIG HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// `CONFIG SET parameter value [parameter value …]`, all or nothing, as Redis 7.0.
fn config_set(engine: &Engine, pairs: &[Bytes]) -> Frame {
    if !pairs.len().is_multiple_of(2) {
        return err(super::ERR_SYNTAX);
    }
    let failed = |param: &[u8], why: &str| {
        Frame::Error(format!(
            "ERR CONFIG SET failed (possibly related to argument '{}') - {why}",
            String::from_utf8_lossy(param)
        ))
    };
    let mut flags = None;
    for pair in pairs.chunks(2) {
        let (param, value) = (&pair[0], &pair[1]);
        if !param.eq_ignore_ascii_case(b"notify-keyspace-events") {
            return Frame::Error(format!(
                "ERR CONFIG SET {} is not supported: xsite is configured by its config file",
                String::from_utf8_lossy(param)
            ));
        }
        if flags.is_some() {
            return failed(param, "duplicate parameter");
        }
        match crate::notify::parse_flags(value) {
            Ok(f) => flags = Some(f),
            Err(why) => return failed(param, why),
        }
    }
    if let Some(flags) = flags {
        engine.notifier().set_flags(flags);
        tracing::info!(notify_keyspace_events = %crate::notify::format_flags(flags), "CONFIG SET notify-keyspace-events");
    }
    Frame::ok()
}

const DEFAULT_SECTIONS: &[&str] = &["server", "clients", "memory", "persistence", "stats", "replication", "keyspace"];

/// What this node is for the connection's cache, as Redis's `ROLE` says it (Sentinel
/// clients check it after discovery): `master` where the cache takes writes here
/// (active-active, or this site is the primary), else `slave` of the primary site's
/// node as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Master,
    Replica { primary: Option<(String, u16)> },
}

fn role_of(engine: &Engine, db: usize) -> Role {
    let Some(cache) = engine.cache_by_db(db) else { return Role::Master };
    if !cache.is_read_only() {
        return Role::Master;
    }
    Role::Replica { primary: cache.primary().and_then(|p| engine.address_of(&p)) }
}

fn role(engine: &Engine, db: usize) -> Frame {
    match role_of(engine, db) {
        Role::Master => Frame::Array(vec![Frame::bulk("master"), Frame::Integer(0), Frame::Array(Vec::new())]),
        Role::Replica { primary } => {
            let (host, port, state) = match primary {
                Some((h, p)) => (h, i64::from(p), "connected"),
                None => (String::new(), 0, "connect"),
            };
            Frame::Array(vec![
                Frame::bulk("slave"),
                Frame::bulk(host),
                Frame::Integer(port),
                Frame::bulk(state),
                Frame::Integer(0),
            ])
        }
    }
}

fn info(engine: &Engine, db: usize, args: &[Bytes]) -> Frame {
    let wanted: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|w| matches!(w.as_str(), "all" | "everything" | "default"));
    let mut out = String::new();
    for section in DEFAULT_SECTIONS {
        if !all && !wanted.iter().any(|w| w == section) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        match *section {
            "server" => server_section(engine, &mut out),
            "clients" => out.push_str("# Clients\r\nconnected_clients:0\r\nblocked_clients:0\r\n"),
            "memory" => memory_section(engine, &mut out),
            "persistence" => persistence_section(engine, &mut out),
            "stats" => stats_section(engine, &mut out),
            "replication" => replication_section(engine, db, &mut out),
            _ => keyspace_section(engine, &mut out),
        }
    }
    Frame::Bulk(Bytes::from(out))
}

fn line(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "{name}:{value}\r\n");
}

fn server_section(engine: &Engine, out: &mut String) {
    let uptime = engine.uptime().as_secs();
    out.push_str("# Server\r\n");
    line(out, "redis_version", REDIS_VERSION);
    line(out, "redis_mode", "standalone");
    line(out, "os", std::env::consts::OS);
    line(out, "arch_bits", usize::BITS);
    line(out, "process_id", std::process::id());
    line(out, "tcp_port", engine.config().server.port);
    line(out, "uptime_in_seconds", uptime);
    line(out, "uptime_in_days", uptime / 86_400);
    line(out, "xsite_version", env!("CARGO_PKG_VERSION"));
    line(out, "xsite_site", engine.site());
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "K", "M", "G"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.2}{}", UNITS[unit])
    }
}

fn memory_section(engine: &Engine, out: &mut String) {
    let (used, max) = (engine.memory().used_bytes(), engine.memory().limit_bytes());
    out.push_str("# Memory\r\n");
    line(out, "used_memory", used);
    line(out, "used_memory_human", human(used));
    line(out, "maxmemory", max);
    line(out, "maxmemory_human", human(max));
    line(out, "maxmemory_policy", "noeviction");
}

fn persistence_section(engine: &Engine, out: &mut String) {
    let (lsn, at) = engine.last_snapshot();
    let wal = engine.wal();
    out.push_str("# Persistence\r\n");
    line(out, "loading", 0);
    line(out, "rdb_changes_since_last_save", wal.last_lsn().0.saturating_sub(lsn.0));
    line(out, "rdb_last_save_time", at);
    line(out, "aof_enabled", 1);
    line(out, "aof_last_write_status", if wal.health().is_ok() { "ok" } else { "err" });
    line(out, "xsite_wal_last_lsn", wal.last_lsn().0);
    line(out, "xsite_wal_durable_lsn", wal.durable_lsn().0);
    line(out, "xsite_wal_oldest_lsn", wal.oldest_lsn().0);
    line(out, "xsite_wal_durability", wal.config().durability);
    line(out, "xsite_snapshot_lsn", lsn.0);
}

fn stats_section(engine: &Engine, out: &mut String) {
    let s = engine.stats();
    let c = engine.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    out.push_str("# Stats\r\n");
    line(out, "total_commands_processed", load(&c.commands));
    line(out, "expired_keys", s.expired_keys_total);
    line(out, "evicted_keys", 0);
    line(out, "xsite_local_entries", load(&c.local_entries));
    line(out, "xsite_remote_applied", load(&c.remote_applied));
    line(out, "xsite_remote_unchanged", load(&c.remote_unchanged));
    line(out, "xsite_hlc_skew_exceeded", s.skew_exceeded_total);
    line(out, "xsite_tombstones", s.caches.iter().map(|c| c.tombstones).sum::<u64>());
}

fn replication_section(engine: &Engine, db: usize, out: &mut String) {
    out.push_str("# Replication\r\n");
    match role_of(engine, db) {
        Role::Master => line(out, "role", "master"),
        Role::Replica { primary } => {
            line(out, "role", "slave");
            let (host, port) = primary.unwrap_or_default();
            line(out, "master_host", host);
            line(out, "master_port", port);
            line(out, "master_link_status", if port > 0 { "up" } else { "down" });
            line(out, "slave_read_only", 1);
        }
    }
    line(out, "connected_slaves", 0);
    line(out, "xsite_site", engine.site());
    line(out, "xsite_hlc", engine.clock().last());
    for c in engine.caches() {
        let _ = write!(
            out,
            "xsite_cache_{}:db={},read_only={},epoch={}\r\n",
            c.name,
            c.db,
            u8::from(c.is_read_only()),
            c.epoch()
        );
    }
}

fn keyspace_section(engine: &Engine, out: &mut String) {
    out.push_str("# Keyspace\r\n");
    let mut caches: Vec<_> = engine.caches().iter().collect();
    caches.sort_by_key(|c| c.db);
    for c in caches {
        let s = c.store.stats();
        if s.keys > 0 {
            let _ = write!(out, "db{}:keys={},expires={},avg_ttl=0\r\n", c.db, s.keys, s.expires);
        }
    }
}
