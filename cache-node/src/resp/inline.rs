//! Inline commands: one line of space-separated arguments, as typed in telnet.
//!
//! Split exactly like Redis's `sdssplitargs`: arguments are separated by white space;
//! `"double quotes"` take the escapes `\n \r \t \b \a \\ \"` and `\xHH`;
//! `'single quotes'` take only `\'`; a closing quote must be followed by white space or
//! the end of the line. A quote inside a word starts a quoted part of that word
//! (`a"b c"` is one argument `ab c`). Redis reads the line as a C string, so a NUL
//! byte ends it.

use bytes::Bytes;

/// Splits one inline command line (without its line ending) into arguments. `None`
/// when quotes are unbalanced. A blank line gives no arguments.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let line = &line[..line.iter().position(|&b| b == 0).unwrap_or(line.len())];
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while pos < line.len() && is_space(line[pos]) {
            pos += 1;
        }
        if pos == line.len() {
            return Some(args);
        }
        let (arg, next) = split_one(line, pos)?;
        args.push(Bytes::from(arg));
        pos = next;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Reads the argument starting at `start`; returns it and the position after it.
fn split_one(line: &[u8], start: usize) -> Option<(Vec<u8>, usize)> {
    // Past the end reads as NUL, as in the C original.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut arg = Vec::new();
    let mut quote = Quote::None;
    let mut pos = start;
    loop {
        let byte = at(pos);
        let mut done = false;
        match quote {
            Quote::Double => {
                if byte == b'\\' && at(pos + 1) == b'x' && hex(at(pos + 2)).is_some() && hex(at(pos + 3)).is_some() {
                    arg.push(hex(at(pos + 2))? * 16 + hex(at(pos + 3))?);
                    pos += 3;
                } else if byte == b'\\' && at(pos + 1) != 0 {
                    pos += 1;
                    arg.push(unescape(at(pos)));
                } else if byte == b'"' {
                    if at(pos + 1) != 0 && !is_space(at(pos + 1)) {
                        return None;
                    }
                    done = true;
                } else if byte == 0 {
                    return None;
                } else {
                    arg.push(byte);
                }
            }
            Quote::Single => {
                if byte == b'\\' && at(pos + 1) == b'\'' {
                    pos += 1;
                    arg.push(b'\'');
                } else if byte == b'\'' {
                    if at(pos + 1) != 0 && !is_space(at(pos + 1)) {
                        return None;
                    }
                    done = true;
                } else if byte == 0 {
                    return None;
                } else {
                    arg.push(byte);
                }
            }
            Quote::None => match byte {
                b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                b'"' => quote = Quote::Double,
                b'\'' => quote = Quote::Single,
                other => arg.push(other),
            },
        }
        if pos < line.len() {
            pos += 1;
        }
        if done {
            return Some((arg, pos));
        }
    }
}

/// C `isspace`.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

fn unescape(byte: u8) -> u8 {
    match byte {
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 0x08,
        b'a' => 0x07,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::split_args;

    fn split(line: &str) -> Option<Vec<String>> {
        split_args(line.as_bytes()).map(|args| args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
    }

    #[test]
    fn splits_on_white_space() {
        assert_eq!(split("PING").unwrap(), ["PING"]);
        assert_eq!(split("  SET  k \t v ").unwrap(), ["SET", "k", "v"]);
        assert_eq!(split("").unwrap(), Vec::<String>::new());
        assert_eq!(split("   ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn double_quotes_take_escapes() {
        assert_eq!(split(r#"SET k "hello world""#).unwrap(), ["SET", "k", "hello world"]);
        assert_eq!(split(r#""a\nb\r\t\"\\""#).unwrap(), ["a\nb\r\t\"\\"]);
        assert_eq!(split(r#""\x41\x7a""#).unwrap(), ["Az"]);
        // `\x` without two hex digits is an escaped `x`.
        assert_eq!(split(r#""\xZZ""#).unwrap(), ["xZZ"]);
        assert_eq!(split(r#""""#).unwrap(), [""]);
    }

    #[test]
    fn single_quotes_take_only_escaped_quote() {
        assert_eq!(split(r"'it\'s' '\n'").unwrap(), ["it's", r"\n"]);
    }

    #[test]
    fn quote_inside_a_word_continues_the_word() {
        assert_eq!(split(r#"a"b c"d"#), None);
        assert_eq!(split(r#"a"b c" d"#).unwrap(), ["ab c", "d"]);
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        assert_eq!(split(r#"SET k "open"#), None);
        assert_eq!(split("SET k 'open"), None);
        assert_eq!(split(r#""closed"x"#), None);
        assert_eq!(split("'closed'x"), None);
    }

    #[test]
    fn nul_ends_the_line() {
        assert_eq!(split_args(b"PING\0 ignored").unwrap(), [&b"PING"[..]]);
    }
}
