//! Glob patterns as Redis matches them (`stringmatchlen`, case-sensitive): `*`, `?`,
//! `[abc]`, `[^a]`, `[a-z]`, and `\x` to match `x` literally. Keys are bytes.

/// Recursion bound against abusive patterns (Redis's is the same).
const NESTING_MAX: u32 = 1000;

/// Does `key` match `pattern`? The pattern `*` alone matches every key, the empty
/// one included (as `KEYS *` and `SCAN` do in Redis).
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    pattern == b"*" || stringmatch(pattern, key)
}

/// Redis's `stringmatchlen` itself, without the shortcut for `*` alone: it never
/// matches the empty string with a `*` (pub/sub patterns match channels this way,
/// so `PSUBSCRIBE *` does not receive a message published on the empty channel).
pub fn stringmatch(pattern: &[u8], s: &[u8]) -> bool {
    let mut skip_longer = false;
    match_from(pattern, s, &mut skip_longer, 0)
}

fn match_from(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > NESTING_MAX {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                // No match for the rest of the pattern from anywhere in the string:
                // an earlier `*` matching more cannot help either.
                *skip_longer = true;
                return false;
            }
            b'?' => {
                s = &s[1..];
                p = &p[1..];
            }
            b'[' => {
                let (matched, rest) = match_class(&p[1..], s[0]);
                if !matched {
                    return false;
                }
                p = rest;
                s = &s[1..];
            }
            c => {
                let (want, rest) = if c == b'\\' && p.len() >= 2 { (p[1], &p[2..]) } else { (c, &p[1..]) };
                if want != s[0] {
                    return false;
                }
                p = rest;
                s = &s[1..];
            }
        }
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

/// Matches `c` against a class whose `[` is already consumed; returns whether it
/// matched and the pattern after the closing `]` (an unclosed class runs to the end).
fn match_class(mut p: &[u8], c: u8) -> (bool, &[u8]) {
    let negate = p.first() == Some(&b'^');
    if negate {
        p = &p[1..];
    }
    let mut matched = false;
    loop {
        match p {
            [] => break,
            [b'\\', escaped, rest @ ..] => {
                matched |= *escaped == c;
                p = rest;
            }
            [b']', rest @ ..] => {
                p = rest;
                break;
            }
            [a, b'-', b, rest @ ..] => {
                let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                matched |= (lo..=hi).contains(&c);
                p = rest;
            }
            [x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
        }
    }
    (matched != negate, p)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    fn m(p: &str, s: &str) -> bool {
        glob_match(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn redis_examples() {
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hallo") && m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "reversed range");
        assert!(m("h\\*llo", "h*llo") && !m("h\\*llo", "hello"));
        assert!(m("[\\]]", "]") && m("[a\\-z]", "-") && !m("[a\\-z]", "b"));
    }

    #[test]
    fn stars_and_edges() {
        assert!(m("*", "") && m("*", "anything"));
        assert!(!m("?", "") && !m("a", ""));
        assert!(m("a*", "a") && m("a**", "a") && m("*a*", "xxaxx"));
        assert!(m("*b", "aaab") && !m("*b", "aaba"));
        assert!(m("a*b*c", "aXbYc") && !m("a*b*c", "aXcYb"));
        assert!(m("", "") && !m("", "a"));
        assert!(m("[abc", "a"), "an unclosed class runs to the end");
        assert!(m("ab\\", "ab\\"), "a trailing backslash is literal");
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &"a".repeat(60)), "no blow-up");
    }

    /// Redis's `stringmatchlen` transliterated, without its shortcut for patterns
    /// that cannot match (exponential, for short inputs only).
    fn reference(p: &[u8], s: &[u8]) -> bool {
        let (mut p, mut s) = (p, s);
        while !p.is_empty() && !s.is_empty() {
            match p[0] {
                b'*' => {
                    while p.len() > 1 && p[1] == b'*' {
                        p = &p[1..];
                    }
                    if p.len() == 1 {
                        return true;
                    }
                    return (0..s.len()).any(|i| reference(&p[1..], &s[i..]));
                }
                b'?' => s = &s[1..],
                b'[' => {
                    p = &p[1..];
                    let not = p.first() == Some(&b'^');
                    if not {
                        p = &p[1..];
                    }
                    let mut matched = false;
                    loop {
                        if p.first() == Some(&b'\\') && p.len() >= 2 {
                            p = &p[1..];
                            matched |= p[0] == s[0];
                        } else if p.first() == Some(&b']') {
                            break;
                        } else if p.is_empty() {
                            // Unclosed: the class ends with the pattern (Redis steps
                            // back one so that the step below lands at the end).
                            break;
                        } else if p.len() >= 3 && p[1] == b'-' {
                            let (lo, hi) = (p[0].min(p[2]), p[0].max(p[2]));
                            matched |= (lo..=hi).contains(&s[0]);
                            p = &p[2..];
                        } else {
                            matched |= p[0] == s[0];
                        }
                        p = &p[1..];
                    }
                    if matched == not {
                        return false;
                    }
                    s = &s[1..];
                }
                c => {
                    if c == b'\\' && p.len() >= 2 {
                        p = &p[1..];
                    }
                    if p[0] != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
            }
            p = p.get(1..).unwrap_or_default();
            if s.is_empty() {
                while p.first() == Some(&b'*') {
                    p = &p[1..];
                }
                break;
            }
        }
        p.is_empty() && s.is_empty()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(5_000))]
        #[test]
        fn matches_as_redis_stringmatchlen_does(
            pattern in proptest::collection::vec(proptest::sample::select(b"ab*?[]^-\\".to_vec()), 0..10),
            s in proptest::collection::vec(proptest::sample::select(b"ab-]^*\\".to_vec()), 0..8),
        ) {
            proptest::prop_assert_eq!(super::stringmatch(&pattern, &s), reference(&pattern, &s), "{:?} {:?}",
                String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&s));
        }
    }

    #[test]
    fn a_star_alone_matches_the_empty_string_only_for_keys() {
        assert!(glob_match(b"*", b""));
        assert!(!super::stringmatch(b"*", b""));
        assert!(super::stringmatch(b"*", b"x"));
    }

    #[test]
    fn binary_keys() {
        assert!(glob_match(b"\x00*\xff", b"\x00abc\xff"));
        assert!(glob_match(b"[\x80-\xff]", b"\x90"));
    }
}
