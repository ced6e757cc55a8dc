//! Writing frames for RESP2 or RESP3.

use bytes::{BufMut, BytesMut};
use std::fmt::Write;

use super::Frame;

/// Protocol version 2, the default of every connection.
pub const RESP2: u8 = 2;
/// Protocol version 3, after `HELLO 3`.
pub const RESP3: u8 = 3;

/// Appends `frame` to `out` as protocol version `proto` ([`RESP2`] or [`RESP3`]).
///
/// RESP2 has no null, map, set, double or boolean of its own: `Null` is `$-1`,
/// `NullArray` is `*-1`, a map is a flat array of keys and values, a set an array, a
/// double a bulk string and a boolean the integer 1 or 0 — what Redis sends.
/// Line breaks in simple strings and errors are replaced by spaces, as Redis does, so
/// that a reply can never break the framing.
pub fn encode(frame: &Frame, proto: u8, out: &mut BytesMut) {
    debug_assert!(proto == RESP2 || proto == RESP3, "protocol version {proto}");
    let resp3 = proto >= RESP3;
    match frame {
        Frame::Simple(text) => line(out, b'+', text),
        Frame::Error(text) => line(out, b'-', text),
        Frame::Integer(n) => header(out, b':', *n),
        Frame::Bulk(data) => bulk(out, data),
        Frame::Null if resp3 => out.put_slice(b"_\r\n"),
        Frame::Null => out.put_slice(b"$-1\r\n"),
        Frame::NullArray if resp3 => out.put_slice(b"_\r\n"),
        Frame::NullArray => out.put_slice(b"*-1\r\n"),
        Frame::Array(items) => {
            header(out, b'*', items.len() as i64);
            items.iter().for_each(|item| encode(item, proto, out));
        }
        Frame::Set(items) => {
            header(out, if resp3 { b'~' } else { b'*' }, items.len() as i64);
            items.iter().for_each(|item| encode(item, proto, out));
        }
        Frame::Push(items) => {
            header(out, if resp3 { b'>' } else { b'*' }, items.len() as i64);
            items.iter().for_each(|item| encode(item, proto, out));
        }
        Frame::Map(pairs) => {
            if resp3 {
                header(out, b'%', pairs.len() as i64);
            } else {
                header(out, b'*', 2 * pairs.len() as i64);
            }
            for (key, value) in pairs {
                encode(key, proto, out);
                encode(value, proto, out);
            }
        }
        Frame::Pairs(pairs) => {
            header(out, b'*', if resp3 { pairs.len() } else { 2 * pairs.len() } as i64);
            for (a, b) in pairs {
                if resp3 {
                    header(out, b'*', 2);
                }
                encode(a, proto, out);
                encode(b, proto, out);
            }
        }
        Frame::Double(d) if resp3 => {
            out.put_u8(b',');
            out.put_slice(format_double(*d).as_bytes());
            out.put_slice(b"\r\n");
        }
        Frame::Double(d) => bulk(out, format_double(*d).as_bytes()),
        Frame::Boolean(b) if resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Frame::Boolean(b) => header(out, b':', i64::from(*b)),
    }
}

fn line(out: &mut BytesMut, kind: u8, text: &str) {
    out.put_u8(kind);
    out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, n: i64) {
    out.put_u8(kind);
    write!(out, "{n}\r\n").expect("writing to a BytesMut cannot fail");
}

fn bulk(out: &mut BytesMut, data: &[u8]) {
    header(out, b'$', data.len() as i64);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The shortest text that reads back as the same double: `inf`, `-inf`, `nan`, `3`,
/// `1.5`, and exponent notation for very large or small magnitudes (`1e300`).
/// A double as Redis 7.0 writes one in a reply (`addReplyDouble`): C's `%.17g`,
/// and `inf`, `-inf`, `nan`.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    const PRECISION: i32 = 17;
    let sci = format!("{:.*e}", (PRECISION - 1) as usize, d);
    let (mantissa, exp) = sci.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("a decimal exponent");
    let trim = |s: &str| -> String {
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => s.to_string(),
        }
    };
    if !(-4..PRECISION).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        trim(&format!("{:.*}", (PRECISION - 1 - exp) as usize, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn enc(frame: &Frame, proto: u8) -> String {
        let mut out = BytesMut::new();
        encode(frame, proto, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn common_types_are_the_same_in_both_versions() {
        for proto in [RESP2, RESP3] {
            assert_eq!(enc(&Frame::ok(), proto), "+OK\r\n");
            assert_eq!(enc(&Frame::error("ERR syntax error"), proto), "-ERR syntax error\r\n");
            assert_eq!(enc(&Frame::Integer(-12), proto), ":-12\r\n");
            assert_eq!(enc(&Frame::bulk("hey"), proto), "$3\r\nhey\r\n");
            assert_eq!(enc(&Frame::Bulk(Bytes::new()), proto), "$0\r\n\r\n");
            assert_eq!(enc(&Frame::Array(vec![Frame::Integer(1), Frame::bulk("a")]), proto), "*2\r\n:1\r\n$1\r\na\r\n");
        }
    }

    #[test]
    fn null_differs_by_version() {
        assert_eq!(enc(&Frame::Null, RESP2), "$-1\r\n");
        assert_eq!(enc(&Frame::NullArray, RESP2), "*-1\r\n");
        assert_eq!(enc(&Frame::Null, RESP3), "_\r\n");
        assert_eq!(enc(&Frame::NullArray, RESP3), "_\r\n");
    }

    #[test]
    fn map_is_a_flat_array_in_resp2() {
        let map = Frame::Map(vec![(Frame::bulk("proto"), Frame::Integer(3))]);
        assert_eq!(enc(&map, RESP2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&map, RESP3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        let set = Frame::Set(vec![Frame::bulk("a")]);
        assert_eq!(enc(&set, RESP2), "*1\r\n$1\r\na\r\n");
        assert_eq!(enc(&set, RESP3), "~1\r\n$1\r\na\r\n");
    }

    #[test]
    fn double_is_a_bulk_string_in_resp2() {
        assert_eq!(enc(&Frame::Double(1.5), RESP2), "$3\r\n1.5\r\n");
        assert_eq!(enc(&Frame::Double(1.5), RESP3), ",1.5\r\n");
        assert_eq!(enc(&Frame::Double(3.0), RESP3), ",3\r\n");
        assert_eq!(enc(&Frame::Double(f64::INFINITY), RESP3), ",inf\r\n");
        assert_eq!(enc(&Frame::Double(f64::NEG_INFINITY), RESP2), "$4\r\n-inf\r\n");
        assert_eq!(enc(&Frame::Double(f64::NAN), RESP3), ",nan\r\n");
        assert_eq!(enc(&Frame::Double(1e300), RESP3), ",1.0000000000000001e+300\r\n");
        // C's %.17g, as Redis 7.0 writes every double.
        for (d, text) in [
            (0.1, "0.10000000000000001"),
            (1.5e-7, "1.4999999999999999e-07"),
            (1e20, "1e+20"),
            (-2.5, "-2.5"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (-0.0, "-0"),
        ] {
            assert_eq!(format_double(d), text);
        }
        let pairs = Frame::Pairs(vec![(Frame::bulk("a"), Frame::Double(1.0))]);
        assert_eq!(enc(&pairs, RESP2), "*2\r\n$1\r\na\r\n$1\r\n1\r\n");
        assert_eq!(enc(&pairs, RESP3), "*1\r\n*2\r\n$1\r\na\r\n,1\r\n");
    }

    #[test]
    fn boolean_is_an_integer_in_resp2() {
        assert_eq!(enc(&Frame::Boolean(true), RESP2), ":1\r\n");
        assert_eq!(enc(&Frame::Boolean(false), RESP2), ":0\r\n");
        assert_eq!(enc(&Frame::Boolean(true), RESP3), "#t\r\n");
        assert_eq!(enc(&Frame::Boolean(false), RESP3), "#f\r\n");
    }

    #[test]
    fn line_breaks_in_errors_become_spaces() {
        assert_eq!(enc(&Frame::error("ERR a\r\nb"), RESP2), "-ERR a  b\r\n");
        assert_eq!(enc(&Frame::Simple("x\ny".into()), RESP3), "+x y\r\n");
    }
}
