//! Redis's error replies, word for word, and the replies the engine's typed errors
//! become: `-MISCONF` while the WAL cannot write, `-READONLY` on a read-only cache,
//! a refused write's reason.

use crate::engine::EngineError;
use crate::resp::Frame;
use crate::store::Refusal;
use crate::wal::{Health, WalError};
use bytes::Bytes;

pub const ERR_SYNTAX: &str = "ERR syntax error";
pub const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub const ERR_NOT_FLOAT: &str = "ERR value is not a valid float";
pub const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";
pub const ERR_NAN_OR_INFINITY: &str = "ERR increment would produce NaN or Infinity";
pub const ERR_STRING_TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
pub const ERR_OFFSET_RANGE: &str = "ERR offset is out of range";
pub const ERR_NO_SUCH_KEY: &str = "ERR no such key";
pub const ERR_WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const ERR_READONLY: &str = "READONLY You can't write against a read only replica.";
/// A primary whose lease from its successor lapsed (self-fenced): clients that
/// take `READONLY` as "the master moved" look for the new one.
pub const ERR_FENCED: &str =
    "READONLY You can't write against a read only replica. (this primary is fenced: its successor has not acknowledged it lately)";
/// The lease lapsed while the write was made durable: it was not acknowledged, and
/// may or may not survive.
pub const ERR_FENCED_UNACKNOWLEDGED: &str =
    "READONLY You can't write against a read only replica. (this primary fenced itself while the write was made durable: it is not acknowledged and may or may not survive)";
pub const ERR_DB_RANGE: &str = "ERR DB index is out of range";
pub const ERR_NOAUTH: &str = "NOAUTH Authentication required.";
/// Bytes of the command name, and of the arguments together, quoted in the
/// unknown-command error (as Redis does); the same for an unknown subcommand.
const UNKNOWN_COMMAND_QUOTE_BYTES_MAX: usize = 128;

pub fn wrong_arity(name: &str) -> Frame {
    Frame::Error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// Redis's reply to a command it does not know: the name and the first arguments,
/// quoted, 128 bytes of each at most, each argument followed by a space.
pub fn unknown_command(args: &[Bytes]) -> Frame {
    let name = &args[0][..args[0].len().min(UNKNOWN_COMMAND_QUOTE_BYTES_MAX)];
    let mut quoted = Vec::new();
    for arg in &args[1..] {
        if quoted.len() >= UNKNOWN_COMMAND_QUOTE_BYTES_MAX {
            break;
        }
        let room = UNKNOWN_COMMAND_QUOTE_BYTES_MAX - quoted.len();
        quoted.push(b'\'');
        quoted.extend_from_slice(&arg[..arg.len().min(room)]);
        quoted.extend_from_slice(b"' ");
    }
    let text = format!("ERR unknown command '{}', with args beginning with: {}", lossy(name), lossy(&quoted));
    Frame::Error(text.replace(['\r', '\n'], " "))
}

/// Redis's reply to an unknown subcommand `sub` of the container command `container`.
pub fn unknown_subcommand(container: &str, sub: &[u8]) -> Frame {
    let text = format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        lossy(&sub[..sub.len().min(UNKNOWN_COMMAND_QUOTE_BYTES_MAX)]),
        container.to_ascii_uppercase()
    );
    Frame::Error(text.replace(['\r', '\n'], " "))
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn invalid_expire(name: &str) -> Frame {
    Frame::Error(format!("ERR invalid expire time in '{name}' command"))
}

pub fn err(text: &str) -> Frame {
    Frame::Error(text.to_string())
}

/// The reply to a refused write (OOM, entry too large).
pub fn refused(e: Refusal) -> Frame {
    Frame::Error(e.to_string())
}

/// `-MISCONF` for a write while the WAL cannot write ([`Health`] is not `Ok`).
pub fn wal_unwritable(health: &Health) -> Frame {
    match health {
        Health::Ok => err("ERR the wal can write"),
        Health::Stalled { error } => misconf_stalled(error),
        Health::Failed { error } => misconf_failed(error),
    }
}

/// The reply to a write whose WAL records were not acknowledged: `-MISCONF` when
/// the WAL cannot write (the write is not durable, and is kept to be written once
/// the disk takes it), `-ERR` otherwise.
pub fn write_failed(e: &EngineError) -> Frame {
    match e {
        EngineError::Wal(WalError::Stalled(cause)) => misconf_stalled(cause),
        EngineError::Wal(WalError::WriterFailed(cause)) => misconf_failed(cause),
        EngineError::WalUnwritable(health) => wal_unwritable(health),
        other => Frame::Error(format!("ERR {other}")),
    }
}

fn misconf_stalled(cause: impl std::fmt::Display) -> Frame {
    Frame::Error(format!("MISCONF xsite cannot write its WAL ({cause}); writes are refused until it can, reads go on"))
}

fn misconf_failed(cause: impl std::fmt::Display) -> Frame {
    Frame::Error(format!(
        "MISCONF xsite's WAL failed ({cause}); writes are refused until the node is restarted, reads go on"
    ))
}
