//! Reading any RESP2 or RESP3 frame: [`Frame::check`], then [`Frame::parse`].

use bytes::{Buf, Bytes, BytesMut};
use std::io::Cursor;

use super::{
    parse_integer, Frame, FrameError, ProtocolError, ARRAY_LEN_MAX, BULK_BYTES_MAX, FRAME_DEPTH_MAX, INLINE_BYTES_MAX,
};

impl Frame {
    /// Checks whether a whole frame starts at the cursor, and advances the cursor past
    /// it. [`FrameError::Incomplete`] when more bytes are needed. Allocates nothing;
    /// a frame that passes can be read with [`Frame::parse`] from the same position.
    pub fn check(src: &mut Cursor<&[u8]>) -> Result<(), FrameError> {
        check_at(src, 0)
    }

    /// Reads the frame at the cursor. Call after [`Frame::check`] accepted it.
    pub fn parse(src: &mut Cursor<&[u8]>) -> Result<Frame, FrameError> {
        parse_at(src, 0)
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` when `buf` holds only
    /// part of one.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let mut cursor = Cursor::new(&buf[..]);
        match Frame::check(&mut cursor) {
            Ok(()) => {}
            Err(FrameError::Incomplete) => return Ok(None),
            Err(FrameError::Protocol(e)) => return Err(e),
        }
        let len = cursor.position() as usize;
        cursor.set_position(0);
        let frame = match Frame::parse(&mut cursor) {
            Ok(frame) => frame,
            Err(FrameError::Protocol(e)) => return Err(e),
            Err(FrameError::Incomplete) => unreachable!("check accepted an incomplete frame"),
        };
        debug_assert_eq!(cursor.position() as usize, len, "check and parse disagree on the length");
        buf.advance(len);
        Ok(Some(frame))
    }
}

fn check_at(src: &mut Cursor<&[u8]>, depth: usize) -> Result<(), FrameError> {
    match get_u8(src)? {
        b'+' | b'-' => {
            std::str::from_utf8(get_line(src)?).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        b':' => {
            get_integer(src)?;
        }
        b'$' => {
            if let Some(len) = get_bulk_len(src)? {
                skip_data(src, len)?;
            }
        }
        kind @ (b'*' | b'~' | b'%' | b'>') => {
            if let Some(len) = get_aggregate_len(src, kind, depth)? {
                let frames = if kind == b'%' { 2 * len } else { len };
                for _ in 0..frames {
                    check_at(src, depth + 1)?;
                }
            }
        }
        b'_' => get_null(src)?,
        b',' => {
            get_double(src)?;
        }
        b'#' => {
            get_boolean(src)?;
        }
        other => return Err(ProtocolError::InvalidFrameType(other).into()),
    }
    Ok(())
}

fn parse_at(src: &mut Cursor<&[u8]>, depth: usize) -> Result<Frame, FrameError> {
    let frame = match get_u8(src)? {
        b'+' => Frame::Simple(get_text(src)?),
        b'-' => Frame::Error(get_text(src)?),
        b':' => Frame::Integer(get_integer(src)?),
        b'$' => match get_bulk_len(src)? {
            None => Frame::Null,
            Some(len) => {
                let start = src.position() as usize;
                skip_data(src, len)?;
                Frame::Bulk(Bytes::copy_from_slice(&src.get_ref()[start..start + len]))
            }
        },
        b'*' => match get_aggregate_len(src, b'*', depth)? {
            None => Frame::NullArray,
            Some(len) => Frame::Array(parse_items(src, len, depth)?),
        },
        b'~' => {
            let len = get_aggregate_len(src, b'~', depth)?.ok_or(ProtocolError::InvalidMultibulkLength)?;
            Frame::Set(parse_items(src, len, depth)?)
        }
        b'>' => {
            let len = get_aggregate_len(src, b'>', depth)?.ok_or(ProtocolError::InvalidMultibulkLength)?;
            Frame::Push(parse_items(src, len, depth)?)
        }
        b'%' => {
            let len = get_aggregate_len(src, b'%', depth)?.ok_or(ProtocolError::InvalidMultibulkLength)?;
            let mut pairs = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                let key = parse_at(src, depth + 1)?;
                pairs.push((key, parse_at(src, depth + 1)?));
            }
            Frame::Map(pairs)
        }
        b'_' => {
            get_null(src)?;
            Frame::Null
        }
        b',' => Frame::Double(get_double(src)?),
        b'#' => Frame::Boolean(get_boolean(src)?),
        other => return Err(ProtocolError::InvalidFrameType(other).into()),
    };
    Ok(frame)
}

fn parse_items(src: &mut Cursor<&[u8]>, len: usize, depth: usize) -> Result<Vec<Frame>, FrameError> {
    // The length is the peer's word: grow as elements arrive, not all at once.
    let mut items = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        items.push(parse_at(src, depth + 1)?);
    }
    Ok(items)
}

fn get_u8(src: &mut Cursor<&[u8]>) -> Result<u8, FrameError> {
    if !src.has_remaining() {
        return Err(FrameError::Incomplete);
    }
    Ok(src.get_u8())
}

/// The line at the cursor, without its `\r\n`; the cursor moves past the `\r\n`.
fn get_line<'a>(src: &mut Cursor<&'a [u8]>) -> Result<&'a [u8], FrameError> {
    let buf: &'a [u8] = src.get_ref();
    let start = src.position() as usize;
    let window = &buf[start..buf.len().min(start + INLINE_BYTES_MAX + 2)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() > INLINE_BYTES_MAX + 1 {
            return Err(ProtocolError::LineTooLong.into());
        }
        return Err(FrameError::Incomplete);
    };
    if cr > INLINE_BYTES_MAX {
        return Err(ProtocolError::LineTooLong.into());
    }
    match buf.get(start + cr + 1) {
        None => Err(FrameError::Incomplete),
        Some(b'\n') => {
            src.set_position((start + cr + 2) as u64);
            Ok(&buf[start..start + cr])
        }
        Some(_) => Err(ProtocolError::ExpectedCrlf.into()),
    }
}

fn get_text(src: &mut Cursor<&[u8]>) -> Result<String, FrameError> {
    let line = get_line(src)?;
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::InvalidUtf8)?;
    Ok(text.to_owned())
}

fn get_integer(src: &mut Cursor<&[u8]>) -> Result<i64, FrameError> {
    Ok(parse_integer(get_line(src)?).ok_or(ProtocolError::InvalidInteger)?)
}

/// `None` for the RESP2 null bulk string `$-1`.
fn get_bulk_len(src: &mut Cursor<&[u8]>) -> Result<Option<usize>, FrameError> {
    match parse_integer(get_line(src)?) {
        Some(-1) => Ok(None),
        Some(len) if (0..=BULK_BYTES_MAX as i64).contains(&len) => Ok(Some(len as usize)),
        _ => Err(ProtocolError::InvalidBulkLength.into()),
    }
}

/// `None` for the RESP2 null array `*-1`.
fn get_aggregate_len(src: &mut Cursor<&[u8]>, kind: u8, depth: usize) -> Result<Option<usize>, FrameError> {
    if depth >= FRAME_DEPTH_MAX {
        return Err(ProtocolError::TooDeep.into());
    }
    match parse_integer(get_line(src)?) {
        Some(-1) if kind == b'*' => Ok(None),
        Some(len) if (0..=ARRAY_LEN_MAX as i64).contains(&len) => Ok(Some(len as usize)),
        _ => Err(ProtocolError::InvalidMultibulkLength.into()),
    }
}

/// Skips `len` bytes of bulk data and the `\r\n` after them.
fn skip_data(src: &mut Cursor<&[u8]>, len: usize) -> Result<(), FrameError> {
    if src.remaining() < len + 2 {
        return Err(FrameError::Incomplete);
    }
    src.advance(len);
    if src.get_u8() != b'\r' || src.get_u8() != b'\n' {
        return Err(ProtocolError::ExpectedCrlf.into());
    }
    Ok(())
}

fn get_null(src: &mut Cursor<&[u8]>) -> Result<(), FrameError> {
    if !get_line(src)?.is_empty() {
        return Err(ProtocolError::InvalidNull.into());
    }
    Ok(())
}

fn get_double(src: &mut Cursor<&[u8]>) -> Result<f64, FrameError> {
    let line = get_line(src)?;
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::InvalidDouble)?;
    let value = match text {
        "inf" | "+inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        "nan" => f64::NAN,
        // `f64::from_str` also takes words such as "infinity"; RESP3 has digits only.
        _ if text.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => {
            text.parse().map_err(|_| ProtocolError::InvalidDouble)?
        }
        _ => return Err(ProtocolError::InvalidDouble.into()),
    };
    Ok(value)
}

fn get_boolean(src: &mut Cursor<&[u8]>) -> Result<bool, FrameError> {
    match get_line(src)? {
        b"t" => Ok(true),
        b"f" => Ok(false),
        _ => Err(ProtocolError::InvalidBoolean.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let frame = Frame::decode(&mut buf)?;
        if frame.is_some() {
            assert!(buf.is_empty(), "left over: {buf:?}");
        }
        Ok(frame)
    }

    fn parse_ok(bytes: &[u8]) -> Frame {
        parse_all(bytes).unwrap().expect("a whole frame")
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(parse_ok(b"+OK\r\n"), Frame::ok());
        assert_eq!(parse_ok(b"-ERR bad\r\n"), Frame::error("ERR bad"));
        assert_eq!(parse_ok(b":-42\r\n"), Frame::Integer(-42));
        assert_eq!(parse_ok(b"$5\r\nhello\r\n"), Frame::bulk("hello"));
        assert_eq!(parse_ok(b"$0\r\n\r\n"), Frame::bulk(""));
        assert_eq!(parse_ok(b"$4\r\na\r\nb\r\n"), Frame::bulk("a\r\nb"));
        assert_eq!(parse_ok(b"$-1\r\n"), Frame::Null);
        assert_eq!(parse_ok(b"*-1\r\n"), Frame::NullArray);
        assert_eq!(parse_ok(b"_\r\n"), Frame::Null);
        assert_eq!(parse_ok(b"*0\r\n"), Frame::Array(vec![]));
        assert_eq!(
            parse_ok(b"*2\r\n$3\r\nGET\r\n*1\r\n:1\r\n"),
            Frame::Array(vec![Frame::bulk("GET"), Frame::Array(vec![Frame::Integer(1)])])
        );
        assert_eq!(
            parse_ok(b"%1\r\n+a\r\n#t\r\n"),
            Frame::Map(vec![(Frame::Simple("a".into()), Frame::Boolean(true))])
        );
        assert_eq!(parse_ok(b"~2\r\n:1\r\n:2\r\n"), Frame::Set(vec![Frame::Integer(1), Frame::Integer(2)]));
        assert_eq!(parse_ok(b",1.5\r\n"), Frame::Double(1.5));
        assert_eq!(parse_ok(b",-inf\r\n"), Frame::Double(f64::NEG_INFINITY));
        assert_eq!(parse_ok(b",1e300\r\n"), Frame::Double(1e300));
        assert!(matches!(parse_ok(b",nan\r\n"), Frame::Double(d) if d.is_nan()));
        assert_eq!(parse_ok(b"#f\r\n"), Frame::Boolean(false));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let whole: &[u8] = b"*3\r\n$3\r\nSET\r\n%1\r\n+k\r\n,2.5\r\n~1\r\n#t\r\n";
        assert!(parse_all(whole).unwrap().is_some());
        for end in 0..whole.len() {
            let mut cursor = Cursor::new(&whole[..end]);
            assert_eq!(Frame::check(&mut cursor), Err(FrameError::Incomplete), "prefix of {end} bytes");
        }
    }

    #[test]
    fn check_stops_after_one_frame() {
        let bytes: &[u8] = b"+a\r\n+b\r\n";
        let mut buf = BytesMut::from(bytes);
        assert_eq!(Frame::decode(&mut buf).unwrap(), Some(Frame::Simple("a".into())));
        assert_eq!(Frame::decode(&mut buf).unwrap(), Some(Frame::Simple("b".into())));
        assert_eq!(Frame::decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"?x\r\n", ProtocolError::InvalidFrameType(b'?')),
            (b":12a\r\n", ProtocolError::InvalidInteger),
            (b"$-2\r\n", ProtocolError::InvalidBulkLength),
            (b"$x\r\n", ProtocolError::InvalidBulkLength),
            (b"$536870913\r\n", ProtocolError::InvalidBulkLength),
            (b"*1048577\r\n", ProtocolError::InvalidMultibulkLength),
            (b"~-1\r\n", ProtocolError::InvalidMultibulkLength),
            (b"$1\r\nab\r\n", ProtocolError::ExpectedCrlf),
            (b"+a\rb\r\n", ProtocolError::ExpectedCrlf),
            (b"#x\r\n", ProtocolError::InvalidBoolean),
            (b",1.2.3\r\n", ProtocolError::InvalidDouble),
            (b",infinity\r\n", ProtocolError::InvalidDouble),
            (b"_x\r\n", ProtocolError::InvalidNull),
            (b"+\xff\r\n", ProtocolError::InvalidUtf8),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse_all(bytes).as_ref(), Err(expected), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn lines_and_nesting_are_bounded() {
        let long = vec![b'a'; INLINE_BYTES_MAX + 2];
        let mut bytes = b"+".to_vec();
        bytes.extend_from_slice(&long);
        assert_eq!(parse_all(&bytes), Err(ProtocolError::LineTooLong));

        let deep = b"*1\r\n".repeat(FRAME_DEPTH_MAX + 1);
        assert_eq!(parse_all(&deep), Err(ProtocolError::TooDeep));
        let mut ok = b"*1\r\n".repeat(FRAME_DEPTH_MAX);
        ok.extend_from_slice(b":1\r\n");
        assert!(parse_all(&ok).unwrap().is_some());
    }
}
