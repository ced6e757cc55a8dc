//! RESP protocol: frames, parsing and encoding (RESP2, and RESP3 after `HELLO 3`).
//!
//! Two readers, one per direction of use:
//!
//! - [`RequestDecoder`] is what the server reads requests with. It accepts what a Redis
//!   server accepts: a multibulk array of bulk strings (`*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n`)
//!   or an inline command line (`ECHO "hi there"\r\n`, split like Redis's
//!   `sdssplitargs`). It is incremental: arguments already read leave the buffer, so a
//!   large request arriving in many reads is scanned once.
//! - [`Frame::check`] then [`Frame::parse`] read any frame of RESP2 or RESP3 (the types
//!   [`Frame`] has). Clients and tests read replies with them.
//!
//! [`encode`] writes a frame for protocol version [`RESP2`] or [`RESP3`].
//!
//! # Limits
//!
//! | limit | value | violation |
//! | --- | --- | --- |
//! | [`BULK_BYTES_MAX`] | 512 MiB (and at most `request_bytes_max`) | `ERR Protocol error: invalid bulk length` |
//! | [`ARRAY_LEN_MAX`] | 1 Mi elements (map: pairs) | `ERR Protocol error: invalid multibulk length` |
//! | [`INLINE_BYTES_MAX`] | 64 KiB, an inline line or a `*`/`$` header | `ERR Protocol error: too big inline request` (`too big mbulk count string`, `too big bulk count string`) |
//! | `request_bytes_max` | configured, one whole request | connection closed without a reply, as Redis does at `client-query-buffer-limit` |
//! | [`UNAUTHENTICATED_ARRAY_LEN_MAX`], [`UNAUTHENTICATED_BULK_BYTES_MAX`] | 10 elements, 16 KiB, before `AUTH` when a password is set | `ERR Protocol error: unauthenticated multibulk length` (`… bulk length`) |
//! | [`FRAME_DEPTH_MAX`] | 64 levels of nested aggregates ([`Frame::check`] only) | protocol error |
//!
//! After a protocol error the server sends the error reply (if any) and closes the
//! connection, exactly as Redis does; commands before the bad one in the same read are
//! executed and answered first.

mod encode;
mod error;
mod inline;
mod integer;
mod parse;
#[cfg(test)]
mod proptests;
mod request;

pub use encode::{encode, format_double, RESP2, RESP3};
pub use error::{FrameError, ProtocolError};
pub use inline::split_args;
pub use integer::parse_integer;
pub use request::RequestDecoder;

use bytes::Bytes;

/// Largest bulk string in a request or frame, in bytes (Redis `proto-max-bulk-len`).
pub const BULK_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Most elements in one array or set, or pairs in one map.
pub const ARRAY_LEN_MAX: usize = 1024 * 1024;
/// Longest inline command line, and longest `*<n>` / `$<n>` / simple line, in bytes
/// (Redis `PROTO_INLINE_MAX_SIZE`).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;
/// Most elements of one request from a client that must authenticate and has not.
pub const UNAUTHENTICATED_ARRAY_LEN_MAX: usize = 10;
/// Largest bulk string from a client that must authenticate and has not, in bytes.
pub const UNAUTHENTICATED_BULK_BYTES_MAX: usize = 16 * 1024;
/// Deepest nesting of aggregate frames that [`Frame::check`] accepts.
pub const FRAME_DEPTH_MAX: usize = 64;

/// One RESP value. Replies are built as frames and encoded for the connection's
/// protocol version: `Null` is `$-1` in RESP2 and `_` in RESP3; `Map`, `Double`,
/// `Boolean`, `Set` and `Push` fall back to their RESP2 forms (flat array, bulk
/// string, integer, array, array).
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Simple(String),
    /// The whole error line without the leading `-`, e.g. `ERR syntax error`.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    /// RESP2 `*-1` (null array); RESP3 `_`.
    NullArray,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    /// Pairs (a sorted set's members WITHSCORES): a flat array in RESP2, an array
    /// of two-element arrays in RESP3, as Redis 7 sends them.
    Pairs(Vec<(Frame, Frame)>),
    /// Out-of-band data (pub/sub messages): RESP3 `>`, an array in RESP2.
    Push(Vec<Frame>),
    Double(f64),
    Boolean(bool),
}

impl Frame {
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }
    pub fn error(msg: impl Into<String>) -> Frame {
        Frame::Error(msg.into())
    }
    pub fn bulk(b: impl Into<Bytes>) -> Frame {
        Frame::Bulk(b.into())
    }
}
