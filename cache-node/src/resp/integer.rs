//! Integers as Redis reads them (`string2ll`).

/// Parses a decimal integer the way Redis's `string2ll` does: an optional `-`, digits,
/// no `+`, no spaces, no leading zeros (`0` itself is fine, `-0` is not), within `i64`.
pub fn parse_integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    // Accumulate as a negative number so that i64::MIN parses.
    let mut value: i64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(byte - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_integer;

    #[test]
    fn accepts_what_string2ll_accepts() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"42"), Some(42));
        assert_eq!(parse_integer(b"-7"), Some(-7));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn refuses_what_string2ll_refuses() {
        for text in
            [&b""[..], b"-", b"+1", b"01", b"-0", b" 1", b"1 ", b"1x", b"9223372036854775808", b"-9223372036854775809"]
        {
            assert_eq!(parse_integer(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }
}
