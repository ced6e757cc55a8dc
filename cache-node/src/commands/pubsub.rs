//! Pub/sub commands, with Redis 7.0's replies: `SUBSCRIBE`, `PSUBSCRIBE`,
//! `SSUBSCRIBE` and their `UNSUBSCRIBE`s on the client's session (its
//! [`crate::pubsub::Subscriber`]); `PUBLISH`, `SPUBLISH` and `PUBSUB` on the
//! engine's hub, which the keyspace notifications go to as well. Channels are the
//! node's, not a database's, and nothing published reaches another site.
//!
//! - A RESP2 client subscribed to anything may only run the commands
//!   [`allowed_when_subscribed`] names (the others get Redis's error, see
//!   [`super::dispatch`]), and `PING` answers `["pong", message]` there. A RESP3
//!   client runs every command, the messages arriving as push frames.
//! - Inside `MULTI` a (un)subscription is queued and runs at `EXEC`, its replies in
//!   the `EXEC` array as Redis puts them (one element per reply: a subscription to
//!   two channels makes the array hold more elements than its header says, exactly
//!   as Redis does). Unlike Redis, it takes effect after the transaction's other
//!   commands ran, so a message the transaction publishes does not reach it.
//! - Shard channels are a namespace of their own (one shard: every channel here).

use super::errors::wrong_arity;
use super::handler::Reply;
use crate::engine::Engine;
use crate::pubsub::Kind;
use crate::resp::Frame;
use crate::session::Session;
use bytes::Bytes;

/// The commands a RESP2 client in subscribed mode may run (table names).
pub fn allowed_when_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "psubscribe"
            | "ssubscribe"
            | "unsubscribe"
            | "punsubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}

/// Redis's error for any other command in subscribed mode.
pub fn not_allowed_when_subscribed(name: &str) -> Frame {
    Frame::Error(format!(
        "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
    ))
}

/// `PING [message]` of a RESP2 client in subscribed mode.
pub fn subscribed_ping(message: Option<&Bytes>) -> Frame {
    Frame::Array(vec![Frame::bulk("pong"), Frame::Bulk(message.cloned().unwrap_or_default())])
}

/// A reply of several frames (one per channel), sent one after the other.
fn replies(mut frames: Vec<Frame>) -> Reply {
    let first = if frames.is_empty() { Frame::Array(Vec::new()) } else { frames.remove(0) };
    Reply { frame: first, close: false, durable: None, more: frames }
}

/// `SUBSCRIBE`/`PSUBSCRIBE`/`SSUBSCRIBE channel…`.
pub(super) fn subscribe(session: &mut Session, kind: Kind, names: &[Bytes]) -> Reply {
    replies(session.subscriber().subscribe(kind, names))
}

/// `UNSUBSCRIBE`/`PUNSUBSCRIBE`/`SUNSUBSCRIBE [channel…]`.
pub(super) fn unsubscribe(session: &mut Session, kind: Kind, names: &[Bytes]) -> Reply {
    replies(session.subscriber().unsubscribe(kind, names))
}

/// `PUBLISH`/`SPUBLISH channel message`: how many subscriptions received it.
pub fn publish(engine: &Engine, args: &[Bytes], shard: bool) -> Frame {
    let (channel, message) = (args[1].clone(), args[2].clone());
    let hub = engine.hub();
    let n = if shard { hub.spublish(channel, message) } else { hub.publish(channel, message) };
    Frame::Integer(n as i64)
}

const PUBSUB_HELP: &[&str] = &[
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
];

/// `PUBSUB CHANNELS [pattern] | NUMSUB [channel…] | NUMPAT | SHARDCHANNELS
/// [pattern] | SHARDNUMSUB [channel…] | HELP`.
pub fn pubsub(engine: &Engine, args: &[Bytes]) -> Frame {
    let hub = engine.hub();
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let syntax = || {
        Frame::Error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&args[1])
        ))
    };
    let names = |channels: Vec<Bytes>| Frame::Array(channels.into_iter().map(Frame::Bulk).collect());
    let counts = |shard: bool| {
        let n = hub.numsub(shard, &args[2..]);
        Frame::Array(
            args[2..].iter().zip(n).flat_map(|(c, n)| [Frame::Bulk(c.clone()), Frame::Integer(n as i64)]).collect(),
        )
    };
    match sub.as_str() {
        "channels" | "shardchannels" if args.len() > 3 => syntax(),
        "channels" => names(hub.channels(false, args.get(2).map(|p| &p[..]))),
        "shardchannels" => names(hub.channels(true, args.get(2).map(|p| &p[..]))),
        "numsub" => counts(false),
        "shardnumsub" => counts(true),
        "numpat" | "help" if args.len() != 2 => wrong_arity(&format!("pubsub|{sub}")),
        "numpat" => Frame::Integer(hub.numpat() as i64),
        "help" => Frame::Array(PUBSUB_HELP.iter().map(|l| Frame::Simple((*l).into())).collect()),
        _ => Frame::Error(format!("ERR unknown subcommand '{}'. Try PUBSUB HELP.", String::from_utf8_lossy(&args[1]))),
    }
}
