//! What runs a command and what a command gives back: the [`CommandHandler`] a
//! server hands the requests that are not connection commands to (the engine, or a
//! stub in tests), the [`Executed`] reply it returns with the durability it waits
//! for, and the [`Reply`] a session's request ends in.

use crate::resp::Frame;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

/// Resolves when a command's writes are durable; `Err` carries the error reply
/// that replaces the command's reply.
pub type DurableWait = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// A command's reply, and what must complete before the reply may be sent.
pub struct Executed {
    pub frame: Frame,
    /// `None`: the reply can go at once (a read, or nothing was written).
    pub durable: Option<DurableWait>,
}

impl From<Frame> for Executed {
    fn from(frame: Frame) -> Executed {
        Executed { frame, durable: None }
    }
}

/// Runs the commands that are not connection commands; the engine implements it.
pub trait CommandHandler: Send + Sync + 'static {
    /// Execute a command (`args[0]` is the command name, as sent). `db` is the
    /// connection's selected database. Returns None when the command is unknown.
    /// The future resolves once the command took effect; its `durable` part once its
    /// writes are durable. The connection runs a pipeline's commands in order, then
    /// waits for their durability and sends the replies, so a pipeline shares one
    /// group commit and a later command still sees an earlier one's effect.
    fn execute<'a>(
        &'a self,
        db: usize,
        args: &'a [Bytes],
    ) -> Pin<Box<dyn Future<Output = Option<Executed>> + Send + 'a>>;
    /// Whether `SELECT db` is allowed.
    fn db_exists(&self, db: usize) -> bool;
}

/// A reply, whether the connection closes after sending it, and what it waits for.
pub(crate) struct Reply {
    pub(crate) frame: Frame,
    pub(crate) close: bool,
    pub(crate) durable: Option<DurableWait>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").field("frame", &self.frame).field("close", &self.close).finish_non_exhaustive()
    }
}

impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        self.frame == other.frame && self.close == other.close
    }
}

impl From<Frame> for Reply {
    fn from(frame: Frame) -> Reply {
        Reply { frame, close: false, durable: None }
    }
}
