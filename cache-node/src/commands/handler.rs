//! What runs a command and what a command gives back: the [`CommandHandler`] a
//! server hands the requests that are not connection commands to (the engine, or a
//! stub in tests), the [`Executed`] reply it returns with the durability it waits
//! for, a transaction's commands ([`Queued`], [`Watched`]) and what running them
//! gives ([`ExecOutcome`]), and the [`Reply`] a session's request ends in.

use super::errors::unknown_command;
use crate::resp::Frame;
use crate::store::Seen;
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

/// One command of a transaction, with the database it runs against (a `SELECT`
/// queued before it counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub db: usize,
    pub args: Vec<Bytes>,
}

/// A key a session WATCHes, and how it stood then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub db: usize,
    pub key: Bytes,
    pub seen: Seen,
}

/// What running a transaction gave.
pub enum ExecOutcome {
    /// A watched key changed: nothing ran (`EXEC` answers a null array).
    Aborted,
    /// Refused before anything ran (`-EXECABORT …`): `EXEC` answers this.
    Refused(Frame),
    /// Every command ran: one reply each, in order (a command's error is its
    /// reply), and what the `EXEC` reply waits for.
    Ran { replies: Vec<Frame>, durable: Option<DurableWait> },
}

/// One wait for several, in order; the first error is the result.
pub fn wait_all(waits: Vec<DurableWait>) -> Option<DurableWait> {
    if waits.is_empty() {
        return None;
    }
    Some(Box::pin(async move {
        for wait in waits {
            wait.await?;
        }
        Ok(())
    }))
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

    /// How `keys` of `db` stand now, one [`Seen`] each, for `WATCH`. The default is
    /// for handlers without a store (test stubs): keys that never change.
    fn watch(&self, _db: usize, keys: &[Bytes]) -> Vec<Seen> {
        vec![Seen::default(); keys.len()]
    }

    /// Runs a transaction's commands (`EXEC`), unless a key of `watched` changed
    /// since it was watched. The engine runs them as one: no other client's
    /// command runs in between, and their writes share one wait. The default, for
    /// handlers without a store (test stubs), runs them one after another with
    /// [`CommandHandler::execute`] and never sees a watched key change.
    fn exec<'a>(
        &'a self,
        commands: &'a [Queued],
        _watched: &'a [Watched],
    ) -> Pin<Box<dyn Future<Output = ExecOutcome> + Send + 'a>> {
        Box::pin(async move {
            let (mut replies, mut waits) = (Vec::with_capacity(commands.len()), Vec::new());
            for command in commands {
                match self.execute(command.db, &command.args).await {
                    Some(Executed { frame, durable }) => {
                        replies.push(frame);
                        waits.extend(durable);
                    }
                    None => replies.push(unknown_command(&command.args)),
                }
            }
            ExecOutcome::Ran { replies, durable: wait_all(waits) }
        })
    }
}

/// A reply, whether the connection closes after sending it, and what it waits for.
pub(crate) struct Reply {
    pub(crate) frame: Frame,
    pub(crate) close: bool,
    pub(crate) durable: Option<DurableWait>,
    /// Frames sent right after `frame` (a subscription to several channels replies
    /// once per channel).
    pub(crate) more: Vec<Frame>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("frame", &self.frame)
            .field("close", &self.close)
            .field("more", &self.more)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        self.frame == other.frame && self.close == other.close && self.more == other.more
    }
}

impl From<Frame> for Reply {
    fn from(frame: Frame) -> Reply {
        Reply { frame, close: false, durable: None, more: Vec::new() }
    }
}
