//! Transactions on the client's session: `MULTI`, `EXEC`, `DISCARD`, `WATCH`,
//! `UNWATCH`, with Redis 7.0's replies and errors.
//!
//! - After `MULTI` a command is queued (`+QUEUED`) instead of run, except those the
//!   table marks [`InMulti::Run`]. A command refused while queuing — unknown, a
//!   wrong number of arguments, one that cannot be in a transaction
//!   ([`InMulti::Refuse`]), one past [`QUEUED_BYTES_MAX`] — answers its error and
//!   makes `EXEC` answer `-EXECABORT`. `MULTI` nested and `WATCH` inside `MULTI`
//!   answer an error and leave the transaction as it was.
//! - `EXEC` hands the queued cache and node commands, each with the database it
//!   runs against (a queued `SELECT` changes it for the commands after it), and the
//!   watched keys to the handler ([`CommandHandler::exec`]), which runs them as one
//!   or, if a watched key changed, not at all (a null array). The queued connection
//!   commands then run on the session, in order; their replies take their places in
//!   the `EXEC` array. A runtime error of one command is its element of the array;
//!   the others still run.
//! - `WATCH` remembers how each key stands ([`CommandHandler::watch`]); `EXEC`,
//!   `DISCARD`, `UNWATCH` and `RESET` forget every watched key.
//!
//! Unlike Redis, a write queued while the WAL cannot write is accepted while
//! queuing and refused by `EXEC` as a whole (`-EXECABORT Transaction discarded
//! because of: MISCONF …`); `READONLY` is an element of the `EXEC` array. A `HELLO`
//! inside a transaction changes the protocol of the whole `EXEC` reply, where Redis
//! encodes the replies before it (RESP3 maps, nulls) with the old one.

use super::connection::{self, selected_db, ConnectionCommand};
use super::errors::{err, unknown_command};
use super::handler::{CommandHandler, ExecOutcome, Queued, Reply, Watched};
use super::table::{Handler, InMulti, Spec};
use crate::resp::Frame;
use crate::session::Session;
use crate::store::Seen;
use bytes::Bytes;
use std::collections::HashMap;

/// Bytes of arguments one transaction may queue (each argument counted with
/// [`QUEUED_ARG_OVERHEAD_BYTES`]); the command past it is refused, and the
/// transaction with it.
pub const QUEUED_BYTES_MAX: usize = 256 * 1024 * 1024;
/// What one queued argument costs beyond its bytes.
pub const QUEUED_ARG_OVERHEAD_BYTES: usize = 32;
/// Keys one session may watch at once; a `WATCH` past it is refused.
pub const WATCHED_KEYS_MAX: usize = 1024 * 1024;

pub const ERR_EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";
pub const ERR_EXEC_WITHOUT_MULTI: &str = "ERR EXEC without MULTI";
pub const ERR_DISCARD_WITHOUT_MULTI: &str = "ERR DISCARD without MULTI";
pub const ERR_MULTI_NESTED: &str = "ERR MULTI calls can not be nested";
pub const ERR_WATCH_IN_MULTI: &str = "ERR WATCH inside MULTI is not allowed";
pub const ERR_NOT_IN_TRANSACTION: &str = "ERR Command not allowed inside a transaction";

/// A transaction command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionCommand {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

/// What a session keeps for transactions.
#[derive(Default)]
pub struct TransactionState {
    /// Since `MULTI`; `None` outside a transaction.
    queue: Option<Queue>,
    /// `(db, key)` → how the key stood when it was watched (the first `WATCH` of it).
    watched: HashMap<(usize, Bytes), Seen>,
}

/// The commands queued since `MULTI`.
#[derive(Default)]
struct Queue {
    commands: Vec<(&'static Spec, Vec<Bytes>)>,
    bytes: usize,
    /// A command was refused while queuing: `EXEC` answers `-EXECABORT`.
    failed: bool,
}

impl TransactionState {
    /// Whether the session is between `MULTI` and `EXEC` or `DISCARD`.
    pub fn in_multi(&self) -> bool {
        self.queue.is_some()
    }
}

/// The reply to a request refused before it ran (a wrong number of arguments,
/// `NOAUTH`): inside `MULTI` it fails the transaction. A refused `EXEC`, inside
/// `MULTI` or not, discards the transaction and every watched key, and answers
/// `-EXECABORT` with the reason, as Redis does.
pub(super) fn refused(session: &mut Session, args: &[Bytes], error: Frame) -> Reply {
    if args[0].eq_ignore_ascii_case(b"exec") {
        *session.transaction() = TransactionState::default();
        return abort_because(error).into();
    }
    if let Some(queue) = &mut session.transaction().queue {
        queue.failed = true;
    }
    error.into()
}

/// Redis's reply to an `EXEC` refused as a whole: `-EXECABORT` with the reason (an
/// error's text, without a leading `ERR `).
pub(super) fn abort_because(error: Frame) -> Frame {
    let text = match error {
        Frame::Error(text) => text,
        other => format!("{other:?}"),
    };
    let reason = text.strip_prefix("ERR ").unwrap_or(&text);
    Frame::Error(format!("EXECABORT Transaction discarded because of: {reason}"))
}

/// A request inside `MULTI` of a command that does not run at once: queued, or
/// refused. `spec` is `None` for a command not in the table.
pub(super) fn queue(session: &mut Session, spec: Option<&'static Spec>, args: &[Bytes]) -> Reply {
    let spec = match spec {
        None => return refused(session, args, unknown_command(args)),
        Some(spec) if spec.in_multi == InMulti::Refuse => {
            return refused(session, args, err(ERR_NOT_IN_TRANSACTION));
        }
        Some(spec) => spec,
    };
    debug_assert_eq!(spec.in_multi, InMulti::Queue, "{} runs at once", spec.name);
    let queue = session.transaction().queue.as_mut().expect("inside MULTI");
    let bytes = args.iter().map(|a| a.len() + QUEUED_ARG_OVERHEAD_BYTES).sum::<usize>();
    if queue.bytes + bytes > QUEUED_BYTES_MAX {
        queue.failed = true;
        return Frame::Error(format!("ERR transaction too large: more than {QUEUED_BYTES_MAX} bytes queued")).into();
    }
    queue.bytes += bytes;
    queue.commands.push((spec, args.to_vec()));
    Frame::Simple("QUEUED".into()).into()
}

/// Runs a transaction command.
pub(super) async fn run(
    session: &mut Session,
    handler: &dyn CommandHandler,
    cmd: TransactionCommand,
    args: &[Bytes],
) -> Reply {
    let state = session.transaction();
    match cmd {
        TransactionCommand::Multi if state.in_multi() => err(ERR_MULTI_NESTED).into(),
        TransactionCommand::Multi => {
            state.queue = Some(Queue::default());
            Frame::ok().into()
        }
        TransactionCommand::Exec => exec(session, handler).await,
        TransactionCommand::Discard if !state.in_multi() => err(ERR_DISCARD_WITHOUT_MULTI).into(),
        TransactionCommand::Discard => {
            *state = TransactionState::default();
            Frame::ok().into()
        }
        TransactionCommand::Watch if state.in_multi() => err(ERR_WATCH_IN_MULTI).into(),
        TransactionCommand::Watch => watch(session, handler, &args[1..]).into(),
        TransactionCommand::Unwatch => {
            state.watched.clear();
            Frame::ok().into()
        }
    }
}

fn watch(session: &mut Session, handler: &dyn CommandHandler, keys: &[Bytes]) -> Frame {
    let db = session.db();
    let watched = &mut session.transaction().watched;
    if watched.len().saturating_add(keys.len()) > WATCHED_KEYS_MAX {
        return Frame::Error(format!("ERR too many keys watched: at most {WATCHED_KEYS_MAX}"));
    }
    let fresh: Vec<Bytes> = keys.iter().filter(|k| !watched.contains_key(&(db, (*k).clone()))).cloned().collect();
    for (key, seen) in fresh.iter().zip(handler.watch(db, &fresh)) {
        watched.entry((db, key.clone())).or_insert(seen);
    }
    Frame::ok()
}

async fn exec(session: &mut Session, handler: &dyn CommandHandler) -> Reply {
    let state = std::mem::take(session.transaction());
    let Some(queue) = state.queue else {
        *session.transaction() = state; // EXEC without MULTI keeps the watched keys
        return err(ERR_EXEC_WITHOUT_MULTI).into();
    };
    if queue.failed {
        return err(ERR_EXECABORT).into();
    }
    let watched: Vec<Watched> = state.watched.into_iter().map(|((db, key), seen)| Watched { db, key, seen }).collect();
    let commands = for_handler(session.db(), handler, &queue.commands);
    let (engine_replies, durable) = match handler.exec(&commands, &watched).await {
        ExecOutcome::Aborted => return Frame::NullArray.into(),
        ExecOutcome::Refused(error) => return error.into(),
        ExecOutcome::Ran { replies, durable } => (replies, durable),
    };
    debug_assert_eq!(engine_replies.len(), commands.len(), "one reply per command");
    let mut engine_replies = engine_replies.into_iter();
    let mut replies = Vec::with_capacity(queue.commands.len());
    for (spec, args) in &queue.commands {
        match spec.handler {
            Handler::Connection(cmd) => {
                let reply = connection::run(session, handler, cmd, args);
                replies.push(reply.frame);
                replies.extend(reply.more);
            }
            // UNWATCH: EXEC forgets every watched key anyway.
            Handler::Transaction(_) => replies.push(Frame::ok()),
            Handler::Cache(_) | Handler::Node(_) | Handler::Container => {
                replies.push(engine_replies.next().unwrap_or_else(|| err("ERR the transaction lost a reply")))
            }
        }
    }
    // One element per command, as the header says; a command of several replies
    // (SUBSCRIBE a b) pushes the later ones past the array, as Redis does.
    let more = replies.split_off(queue.commands.len());
    Reply { frame: Frame::Array(replies), close: false, durable, more }
}

/// The queued commands the handler runs, each with the database it runs against:
/// the session's, changed by every queued `SELECT` that will succeed.
fn for_handler(mut db: usize, handler: &dyn CommandHandler, commands: &[(&'static Spec, Vec<Bytes>)]) -> Vec<Queued> {
    let mut out = Vec::with_capacity(commands.len());
    for (spec, args) in commands {
        match spec.handler {
            Handler::Connection(ConnectionCommand::Select) => db = selected_db(handler, &args[1]).unwrap_or(db),
            Handler::Connection(_) | Handler::Transaction(_) => {}
            Handler::Cache(_) | Handler::Node(_) | Handler::Container => out.push(Queued { db, args: args.clone() }),
        }
    }
    out
}
