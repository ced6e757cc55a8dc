//! Protocol errors, with the texts Redis replies.

use super::{Frame, FRAME_DEPTH_MAX};

/// A request or frame that breaks the protocol. Its `Display` is the text Redis puts
/// after `ERR ` in the reply; after any of these the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A bulk length that is not an integer, negative, or above the limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An array length that is not an integer or above the limit.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// An inline line longer than `INLINE_BYTES_MAX`.
    #[error("Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// An array of more than `UNAUTHENTICATED_ARRAY_LEN_MAX` elements from a client
    /// that has not authenticated yet.
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A bulk string over `UNAUTHENTICATED_BULK_BYTES_MAX` from a client that has not
    /// authenticated yet.
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// A `*<n>` header line longer than `INLINE_BYTES_MAX`.
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$<n>` header line longer than `INLINE_BYTES_MAX`.
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// An element of a request array that is not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", printable(*.0))]
    ExpectedBulk(u8),
    /// An inline line with an unterminated quote, or a closing quote not followed by a
    /// space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// One request larger than `request_bytes_max`. Redis closes such a client without
    /// a reply (`client-query-buffer-limit`), and so do we.
    #[error("request larger than request_bytes_max ({bytes_max} bytes)")]
    RequestTooLarge { bytes_max: usize },
    /// A frame starting with a byte that is no RESP type.
    #[error("Protocol error: invalid frame type byte {0:#04x}")]
    InvalidFrameType(u8),
    #[error("Protocol error: invalid integer")]
    InvalidInteger,
    #[error("Protocol error: invalid double")]
    InvalidDouble,
    #[error("Protocol error: invalid boolean")]
    InvalidBoolean,
    #[error("Protocol error: invalid null")]
    InvalidNull,
    /// A simple string or error line that is not UTF-8.
    #[error("Protocol error: simple string is not UTF-8")]
    InvalidUtf8,
    /// A line or bulk string not ended by `\r\n`.
    #[error("Protocol error: expected CRLF")]
    ExpectedCrlf,
    /// A simple, error, integer or header line longer than `INLINE_BYTES_MAX`.
    #[error("Protocol error: too big line")]
    LineTooLong,
    #[error("Protocol error: frames nested deeper than {FRAME_DEPTH_MAX}")]
    TooDeep,
}

impl ProtocolError {
    /// The reply sent before the connection is closed, or `None` when Redis closes
    /// without one.
    pub fn reply(&self) -> Option<Frame> {
        match self {
            ProtocolError::RequestTooLarge { .. } => None,
            other => Some(Frame::Error(format!("ERR {other}"))),
        }
    }
}

/// Why [`Frame::check`] or [`Frame::parse`] did not produce a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer holds the start of a frame only; read more and try again.
    #[error("incomplete frame")]
    Incomplete,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// The byte as Redis prints it with `%c`, except that line breaks become spaces (Redis
/// replaces them in every error reply).
fn printable(byte: u8) -> char {
    match byte {
        b'\r' | b'\n' => ' ',
        other => other as char,
    }
}
