//! Reading requests as a Redis server does (`processMultibulkBuffer` and
//! `processInlineBuffer` in Redis's `networking.c`).

use bytes::{Buf, Bytes, BytesMut};

use super::{
    inline::split_args, parse_integer, ProtocolError, ARRAY_LEN_MAX, BULK_BYTES_MAX, INLINE_BYTES_MAX,
    UNAUTHENTICATED_ARRAY_LEN_MAX, UNAUTHENTICATED_BULK_BYTES_MAX,
};

/// Takes requests off the front of a connection's read buffer, one at a time.
///
/// A request starting with `*` is a multibulk array of bulk strings; anything else is
/// an inline line ended by `\n` (or `\r\n`). Empty requests (`*0`, `*-1`, a blank
/// line) are skipped, as Redis does. The decoder remembers where it is in a multibulk
/// request between calls: each argument leaves the buffer as soon as it is whole, so
/// the buffer never holds more than one partial argument. Arguments are copied out of
/// the buffer, so a value kept by the store does not pin the read buffer.
///
/// Until [`RequestDecoder::set_authenticated`] says otherwise a client is taken as
/// authenticated; an unauthenticated one is held to Redis's smaller limits
/// ([`UNAUTHENTICATED_ARRAY_LEN_MAX`], [`UNAUTHENTICATED_BULK_BYTES_MAX`]).
#[derive(Debug)]
pub struct RequestDecoder {
    request_bytes_max: usize,
    bulk_bytes_max: usize,
    authenticated: bool,
    pending: Option<Multibulk>,
}

/// A multibulk request read in part.
#[derive(Debug)]
struct Multibulk {
    args: Vec<Bytes>,
    args_remaining: usize,
    /// Length of the argument whose `$<n>` header was read but whose data was not.
    bulk_len: Option<usize>,
    /// Bytes of this request taken so far, headers included, plus the announced
    /// length of the argument being read.
    request_bytes: usize,
}

impl RequestDecoder {
    /// `request_bytes_max` bounds one request, in bytes; it also lowers the largest
    /// bulk string below [`BULK_BYTES_MAX`] when smaller.
    pub fn new(request_bytes_max: usize) -> RequestDecoder {
        assert!(request_bytes_max > 0, "request_bytes_max must be positive");
        RequestDecoder {
            request_bytes_max,
            bulk_bytes_max: BULK_BYTES_MAX.min(request_bytes_max),
            authenticated: true,
            pending: None,
        }
    }

    /// Whether the client has authenticated (or needs not); set before each
    /// [`RequestDecoder::decode`].
    pub fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    /// The next whole request at the front of `buf`, removed from it; `Ok(None)` when
    /// more bytes are needed. The arguments are never empty (`args[0]` is the command
    /// name). After an error the connection must be closed: the buffer is not
    /// resynchronised.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if self.pending.is_none() {
                let started = match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => self.start_multibulk(buf)?,
                    Some(_) => match self.take_inline(buf)? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    },
                };
                match started {
                    Header::Incomplete => return Ok(None),
                    Header::Empty => continue,
                    Header::Started { line_len } => return self.continue_multibulk(buf, line_len),
                }
            }
            return self.continue_multibulk(buf, 0);
        }
    }

    /// Reads the `*<n>` line of a multibulk request; the buffer advances past it
    /// only when it is empty (a started request's arguments are taken with it).
    fn start_multibulk(&mut self, buf: &mut BytesMut) -> Result<Header, ProtocolError> {
        let Some(line_len) = header_len(buf, ProtocolError::TooBigMultibulkCount)? else {
            return Ok(Header::Incomplete);
        };
        let count = parse_integer(&buf[1..line_len - 2])
            .filter(|&n| n <= ARRAY_LEN_MAX as i64)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count > UNAUTHENTICATED_ARRAY_LEN_MAX as i64 && !self.authenticated {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        self.check_size(line_len)?;
        if count <= 0 {
            buf.advance(line_len);
            return Ok(Header::Empty);
        }
        let count = count as usize;
        self.pending = Some(Multibulk {
            // Redis too trusts the count only so far before arguments arrive.
            args: Vec::with_capacity(count.min(1024)),
            args_remaining: count,
            bulk_len: None,
            request_bytes: line_len,
        });
        Ok(Header::Started { line_len })
    }

    /// Reads arguments of the pending multibulk request while whole ones are
    /// buffered, from `pos` on (what lies before it is read already), then takes all
    /// it read off the buffer at once.
    fn continue_multibulk(&mut self, buf: &mut BytesMut, mut pos: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let request_bytes_max = self.request_bytes_max;
        let bulk_bytes_max = self.bulk_bytes_max;
        let authenticated = self.authenticated;
        let request = self.pending.as_mut().expect("a multibulk request is pending");
        while request.args_remaining > 0 {
            let len = match request.bulk_len {
                Some(len) => len,
                None => {
                    let rest = &buf[pos..];
                    let Some(line_len) = header_len(rest, ProtocolError::TooBigBulkCount)? else {
                        buf.advance(pos);
                        return Ok(None);
                    };
                    if rest[0] != b'$' {
                        return Err(ProtocolError::ExpectedBulk(rest[0]));
                    }
                    let len = parse_integer(&rest[1..line_len - 2])
                        .filter(|&n| (0..=bulk_bytes_max as i64).contains(&n))
                        .ok_or(ProtocolError::InvalidBulkLength)? as usize;
                    if len > UNAUTHENTICATED_BULK_BYTES_MAX && !authenticated {
                        return Err(ProtocolError::UnauthenticatedBulkLength);
                    }
                    request.request_bytes += line_len + len + 2;
                    if request.request_bytes > request_bytes_max {
                        return Err(ProtocolError::RequestTooLarge { bytes_max: request_bytes_max });
                    }
                    pos += line_len;
                    request.bulk_len = Some(len);
                    len
                }
            };
            // Like Redis, the two bytes after the data are taken as the line ending
            // without looking at them.
            if buf.len() - pos < len + 2 {
                buf.advance(pos);
                return Ok(None);
            }
            request.args.push(Bytes::copy_from_slice(&buf[pos..pos + len]));
            pos += len + 2;
            request.bulk_len = None;
            request.args_remaining -= 1;
        }
        buf.advance(pos);
        let request = self.pending.take().expect("a multibulk request is pending");
        Ok(Some(request.args))
    }

    /// Reads one inline line; `None` when its end is not buffered yet.
    fn take_inline(&self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let window = &buf[..buf.len().min(INLINE_BYTES_MAX + 1)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() > INLINE_BYTES_MAX {
                return Err(ProtocolError::TooBigInlineRequest);
            }
            return Ok(None);
        };
        self.check_size(newline + 1)?;
        let line_end = if newline > 0 && buf[newline - 1] == b'\r' { newline - 1 } else { newline };
        let args = split_args(&buf[..line_end]).ok_or(ProtocolError::UnbalancedQuotes)?;
        buf.advance(newline + 1);
        Ok(Some(args))
    }

    fn check_size(&self, request_bytes: usize) -> Result<(), ProtocolError> {
        if request_bytes > self.request_bytes_max {
            return Err(ProtocolError::RequestTooLarge { bytes_max: self.request_bytes_max });
        }
        Ok(())
    }
}

enum Header {
    Incomplete,
    /// `*0` or a negative count: nothing to execute.
    Empty,
    /// A request of at least one argument, its header `line_len` bytes at the
    /// front of the buffer.
    Started {
        line_len: usize,
    },
}

/// Length of the `*<n>\r\n` or `$<n>\r\n` line at the front of `buf`, through the
/// byte after its `\r`; `None` while that is not buffered. As in Redis, the line ends
/// at the first `\r`, and a buffer of more than `INLINE_BYTES_MAX` bytes without one
/// is `too_big`.
fn header_len(buf: &[u8], too_big: ProtocolError) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[..buf.len().min(INLINE_BYTES_MAX + 1)];
    match window.iter().position(|&b| b == b'\r') {
        None if buf.len() > INLINE_BYTES_MAX => Err(too_big),
        None => Ok(None),
        Some(cr) if cr + 2 > buf.len() => Ok(None),
        Some(cr) => Ok(Some(cr + 2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST_BYTES_MAX: usize = 1024 * 1024;

    /// Every request in `bytes`, or the error that stopped decoding.
    fn decode_all(bytes: &[u8]) -> Result<Vec<Vec<String>>, ProtocolError> {
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        let mut buf = BytesMut::from(bytes);
        let mut requests = Vec::new();
        while let Some(args) = decoder.decode(&mut buf)? {
            requests.push(args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect());
        }
        Ok(requests)
    }

    fn error_reply(bytes: &[u8]) -> String {
        match decode_all(bytes) {
            Err(e) => match e.reply() {
                Some(crate::resp::Frame::Error(text)) => text,
                other => panic!("reply {other:?}"),
            },
            Ok(requests) => panic!("decoded {requests:?}"),
        }
    }

    #[test]
    fn multibulk_requests() {
        assert_eq!(decode_all(b"*1\r\n$4\r\nPING\r\n").unwrap(), [["PING"]]);
        assert_eq!(
            decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n").unwrap(),
            vec![vec!["SET", "k", ""], vec!["PING"]]
        );
        // Binary data, CRLF included, travels in bulk strings.
        assert_eq!(decode_all(b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n").unwrap(), [["ECHO", "a\r\nb"]]);
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(decode_all(b"*0\r\n*-1\r\n\r\n  \r\n*1\r\n$4\r\nPING\r\n").unwrap(), [["PING"]]);
    }

    #[test]
    fn inline_requests() {
        assert_eq!(decode_all(b"PING\r\n").unwrap(), [["PING"]]);
        assert_eq!(decode_all(b"PING\n").unwrap(), [["PING"]]);
        assert_eq!(
            decode_all(b"SET k \"hello world\"\r\nGET 'k'\r\n").unwrap(),
            vec![vec!["SET", "k", "hello world"], vec!["GET", "k"]]
        );
        assert_eq!(error_reply(b"SET k \"open\r\n"), "ERR Protocol error: unbalanced quotes in request");
    }

    #[test]
    fn byte_at_a_time_gives_the_same_requests() {
        let bytes: &[u8] = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\nPING x\r\n*1\r\n$4\r\nQUIT\r\n";
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        for &byte in bytes {
            buf.extend_from_slice(&[byte]);
            while let Some(args) = decoder.decode(&mut buf).unwrap() {
                requests.push(args);
            }
        }
        assert_eq!(
            requests,
            decode_all(bytes)
                .unwrap()
                .iter()
                .map(|r| r.iter().map(|a| Bytes::from(a.clone())).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert_eq!(requests.len(), 3);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_requests_wait_for_more() {
        for partial in [&b"*"[..], b"*2\r", b"*2\r\n$3", b"*2\r\n$3\r\nGET\r\n", b"*2\r\n$3\r\nGET\r\n$1\r\nk", b"PING"]
        {
            assert_eq!(decode_all(partial).unwrap(), Vec::<Vec<String>>::new(), "{partial:?}");
        }
    }

    #[test]
    fn protocol_errors_have_redis_texts() {
        assert_eq!(error_reply(b"*1\r\n$-1\r\n"), "ERR Protocol error: invalid bulk length");
        assert_eq!(error_reply(b"*1\r\n$x\r\n"), "ERR Protocol error: invalid bulk length");
        assert_eq!(error_reply(b"*1\r\n$536870913\r\n"), "ERR Protocol error: invalid bulk length");
        assert_eq!(error_reply(b"*x\r\n"), "ERR Protocol error: invalid multibulk length");
        assert_eq!(error_reply(b"*1048577\r\n"), "ERR Protocol error: invalid multibulk length");
        assert_eq!(error_reply(b"*1\r\n:1\r\n"), "ERR Protocol error: expected '$', got ':'");
        assert_eq!(error_reply(b"*1\r\nx\r\n"), "ERR Protocol error: expected '$', got 'x'");
        assert_eq!(error_reply(&vec![b'a'; INLINE_BYTES_MAX + 1]), "ERR Protocol error: too big inline request");
        let mut long_count = b"*".to_vec();
        long_count.extend(vec![b'1'; INLINE_BYTES_MAX + 1]);
        assert_eq!(error_reply(&long_count), "ERR Protocol error: too big mbulk count string");
        let mut long_len = b"*1\r\n$".to_vec();
        long_len.extend(vec![b'1'; INLINE_BYTES_MAX + 1]);
        assert_eq!(error_reply(&long_len), "ERR Protocol error: too big bulk count string");
    }

    #[test]
    fn commands_before_a_protocol_error_are_decoded() {
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        let mut buf = BytesMut::from(&b"PING\r\n*1\r\n:1\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), [Bytes::from("PING")]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::ExpectedBulk(b':')));
    }

    #[test]
    fn unauthenticated_clients_get_smaller_limits() {
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        decoder.set_authenticated(false);
        let mut buf = BytesMut::from(&b"*11\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap_err().to_string(),
            "Protocol error: unauthenticated multibulk length"
        );
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        decoder.set_authenticated(false);
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap_err().to_string(), "Protocol error: unauthenticated bulk length");
        let mut decoder = RequestDecoder::new(REQUEST_BYTES_MAX);
        decoder.set_authenticated(false);
        let mut buf = BytesMut::from(&b"*10\r\n$16384\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn request_bytes_max_bounds_one_request() {
        let mut decoder = RequestDecoder::new(64);
        // One argument above the limit: the bulk length itself is refused, as Redis
        // refuses one above proto-max-bulk-len.
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$65\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::InvalidBulkLength));
        // Arguments that fit one by one but not together: closed without a reply.
        let mut decoder = RequestDecoder::new(64);
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$20\r\n01234567890123456789\r\n$20\r\n"[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err, ProtocolError::RequestTooLarge { bytes_max: 64 });
        assert_eq!(err.reply(), None);
        // A request right at the limit passes.
        let request = format!("*2\r\n$4\r\nECHO\r\n$43\r\n{}\r\n", "x".repeat(43));
        assert_eq!(request.len(), 64);
        let mut decoder = RequestDecoder::new(64);
        let mut buf = BytesMut::from(request.as_bytes());
        assert!(decoder.decode(&mut buf).unwrap().is_some());
    }
}
