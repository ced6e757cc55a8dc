//! SORT and SORT_RO, as Redis 7.0 runs them, of a list's, a set's or a sorted
//! set's elements: numerically (or `ALPHA`, by bytes), `ASC`/`DESC`, `LIMIT offset
//! count`, `BY` a pattern (the weights read from string keys or, `key->field`, hash
//! fields; a pattern without `*` does not sort: a list and a sorted set keep their
//! order, reversed by `DESC`), `GET` patterns (`#` the element itself). A missing
//! key sorts as an empty list (`[]`, or with STORE the destination deleted and 0),
//! a string or a hash is `WRONGTYPE`. The options are parsed, and refused, as Redis
//! 7.0 does, before the key is looked at. `STORE` writes the result as a new list
//! (what a `GET` names that is missing as an empty string), replacing the
//! destination; a set sorted by nothing is then sorted `ALPHA`, as Redis does so
//! that the stored list is the same everywhere.

use super::{delete_op, err, parse_i64, refused, Ctx, Held, ERR_SYNTAX};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::CacheStore;
use bytes::Bytes;
use std::cmp::Ordering;
use xsite_consumer::merge::{Kind, Record};

/// Redis 7.0's `set-max-intset-entries`.
const SET_INTSET_ENTRIES_MAX: usize = 512;
const ERR_WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const ERR_NOT_DOUBLE: &str = "ERR One or more scores can't be converted into double";

/// The parsed options.
#[derive(Default)]
struct Options<'a> {
    desc: bool,
    alpha: bool,
    limit: Option<(i64, i64)>,
    store: Option<&'a Bytes>,
    by: Option<&'a Bytes>,
    gets: Vec<&'a Bytes>,
}

impl Options<'_> {
    /// `BY` a pattern without `*`: no sorting.
    fn no_sort(&self) -> bool {
        self.by.is_some_and(|p| !p.contains(&b'*'))
    }
}

/// `Err` with the reply to bad options.
fn parse_options(args: &[Bytes], read_only: bool) -> Result<Options<'_>, Frame> {
    let mut o = Options::default();
    let mut j = 0;
    while j < args.len() {
        let left = args.len() - j - 1;
        match args[j].to_ascii_lowercase().as_slice() {
            b"asc" => o.desc = false,
            b"desc" => o.desc = true,
            b"alpha" => o.alpha = true,
            b"limit" if left >= 2 => {
                o.limit = Some((parse_i64(&args[j + 1])?, parse_i64(&args[j + 2])?));
                j += 2;
            }
            b"store" if !read_only && left >= 1 => {
                o.store = Some(&args[j + 1]);
                j += 1;
            }
            b"by" if left >= 1 => {
                o.by = Some(&args[j + 1]);
                j += 1;
            }
            b"get" if left >= 1 => {
                o.gets.push(&args[j + 1]);
                j += 1;
            }
            _ => return Err(err(ERR_SYNTAX)),
        }
        j += 1;
    }
    Ok(o)
}

/// What `pattern` names for `member` (Redis's `lookupKeyByPattern`): `#` the member
/// itself; the first `*` replaced by the member, a string key's value, or after
/// `->` a hash field's; nothing for a pattern without `*`, or a key of another type.
fn lookup(store: &CacheStore, now_ms: u64, pattern: &[u8], member: &[u8]) -> Option<Vec<u8>> {
    if pattern == b"#" {
        return Some(member.to_vec());
    }
    let star = pattern.iter().position(|&b| b == b'*')?;
    let rest = &pattern[star + 1..];
    let arrow = rest.windows(2).position(|w| w == b"->").filter(|&a| a + 2 < rest.len());
    let (post, field) = match arrow {
        Some(a) => (&rest[..a], Some(&rest[a + 2..])),
        None => (rest, None),
    };
    let key = [&pattern[..star], member, post].concat();
    store.read(&key, |rec| {
        let rec = rec.filter(|r| r.is_live(now_ms))?;
        match field {
            Some(f) => rec.field(f).and_then(|f| f.value()).map(|v| v.into_owned()),
            None if rec.kind() == Kind::String => crate::store::value_bytes(rec).map(|v| v.into_owned()),
            None => None,
        }
    })
}

/// A float as `strtod` reads one, the whole text (SORT's weights).
fn weight_of(text: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(text).ok()?;
    let v: f64 = s.trim_start().parse().ok().or_else(|| s.trim_start().is_empty().then_some(0.0))?;
    (!v.is_nan()).then_some(v)
}

/// The members of the live set or sorted set `rec` in the order the options ask,
/// and the range LIMIT takes of them.
fn sorted(store: &CacheStore, now_ms: u64, rec: &Record, o: &Options<'_>) -> Result<Vec<Vec<u8>>, Frame> {
    let mut members: Vec<Vec<u8>> = match rec.kind() {
        Kind::ZSet => rec.zset_ranked().unwrap_or_default().into_iter().map(|(m, _)| m.to_vec()).collect(),
        Kind::List => rec.list_items().map(|i| i.map(|(_, i)| i.value.clone()).collect()).unwrap_or_default(),
        _ => rec.set_members().map(|m| m.map(<[u8]>::to_vec).collect()).unwrap_or_default(),
    };
    // A set of integers in the order Redis keeps one (an intset: by value), which
    // is the order of what SORT does not sort and of its ties; any other set by bytes.
    let ints: Option<Vec<i64>> = members.iter().map(|m| crate::resp::parse_integer(m)).collect();
    if let Some(ints) = ints.filter(|i| rec.kind() == Kind::Set && i.len() <= SET_INTSET_ENTRIES_MAX) {
        let mut pairs: Vec<(i64, Vec<u8>)> = ints.into_iter().zip(members).collect();
        pairs.sort_by_key(|(i, _)| *i);
        members = pairs.into_iter().map(|(_, m)| m).collect();
    }
    let len = members.len() as i64;
    let (offset, count) = o.limit.unwrap_or((0, -1));
    let mut start = offset.max(0);
    let mut end = if count < 0 { len - 1 } else { start + count - 1 };
    if start >= len {
        (start, end) = (len - 1, len - 2);
    }
    end = end.min(len - 1);
    if o.no_sort() {
        // A list and a sorted set keep their order (reversed by DESC), a set its own.
        if o.desc && matches!(rec.kind(), Kind::ZSet | Kind::List) {
            members.reverse();
        }
    } else if o.alpha && o.by.is_none() {
        members.sort();
        if o.desc {
            members.reverse();
        }
    } else {
        let by = |m: &[u8]| match o.by {
            Some(p) => lookup(store, now_ms, p, m),
            None => Some(m.to_vec()),
        };
        let mut keyed: Vec<(Vec<u8>, Option<Vec<u8>>, f64)> = Vec::with_capacity(members.len());
        let mut bad = false;
        for m in members {
            let w = by(&m);
            let score = match (&w, o.alpha) {
                (Some(text), false) => weight_of(text).unwrap_or_else(|| {
                    bad = true;
                    0.0
                }),
                _ => 0.0,
            };
            keyed.push((m, w, score));
        }
        if bad {
            return Err(err(ERR_NOT_DOUBLE));
        }
        keyed.sort_by(|a, b| {
            let cmp = match o.alpha {
                true => a.1.cmp(&b.1),
                false => a.2.partial_cmp(&b.2).unwrap_or(Ordering::Equal).then_with(|| a.0.cmp(&b.0)),
            };
            if o.desc {
                cmp.reverse()
            } else {
                cmp
            }
        });
        members = keyed.into_iter().map(|(m, _, _)| m).collect();
    }
    if end < start {
        return Ok(Vec::new());
    }
    Ok(members.drain(start as usize..=end as usize).collect())
}

fn sort_generic(ctx: &mut Ctx<'_>, args: &[Bytes], read_only: bool) -> Frame {
    let o = match parse_options(&args[2..], read_only) {
        Ok(o) => o,
        Err(f) => return f,
    };
    let key = &args[1];
    // The sorted key is read as it stands, then every key a pattern names is read
    // with its own shard's lock (a pattern's keys are known only from the members).
    let rec = ctx.store.read(key, |r| r.filter(|r| r.is_live(ctx.now_ms)).cloned());
    let mut o = o;
    if o.store.is_some() && o.no_sort() && rec.as_ref().is_some_and(|r| r.kind() == Kind::Set) {
        (o.by, o.alpha) = (None, true);
    }
    let sorted = match rec {
        None => Vec::new(),
        Some(r) if matches!(r.kind(), Kind::Set | Kind::ZSet | Kind::List) => {
            match sorted(ctx.store, ctx.now_ms, &r, &o) {
                Ok(s) => s,
                Err(f) => return f,
            }
        }
        Some(_) => return err(ERR_WRONGTYPE),
    };
    let Some(dest) = o.store else {
        return reply(ctx.store, ctx.now_ms, &o, sorted);
    };
    let values: Vec<Vec<u8>> = match o.gets.is_empty() {
        true => sorted,
        false => sorted
            .iter()
            .flat_map(|m| o.gets.iter().map(|g| lookup(ctx.store, ctx.now_ms, g, m).unwrap_or_default()))
            .collect(),
    };
    let mut locked = ctx.store.lock(&[dest]);
    if values.is_empty() {
        if locked.live(dest, ctx.now_ms).is_some() {
            let op = delete_op(locked.get(dest), dest);
            ctx.write(&mut locked, op);
            ctx.notify(Event::Del, dest);
        }
        return Frame::Integer(0);
    }
    let len = values.len() as i64;
    let ops = Held::List(values).write_ops(dest, locked.get(dest), None);
    if let Err(f) = ctx.needs_format_of(&ops) {
        return f;
    }
    if let Err(e) = locked.admit(&ops) {
        return refused(e);
    }
    for op in ops {
        ctx.write(&mut locked, op);
    }
    ctx.notify(Event::SortStore, dest);
    Frame::Integer(len)
}

/// The reply: each member, or what each GET pattern names for it.
fn reply(store: &CacheStore, now_ms: u64, o: &Options<'_>, sorted: Vec<Vec<u8>>) -> Frame {
    let bulk = |v: Option<Vec<u8>>| v.map_or(Frame::Null, |v| Frame::Bulk(Bytes::from(v)));
    let mut out = Vec::with_capacity(sorted.len() * o.gets.len().max(1));
    for m in sorted {
        if o.gets.is_empty() {
            out.push(bulk(Some(m)));
            continue;
        }
        for g in &o.gets {
            out.push(bulk(lookup(store, now_ms, g, &m)));
        }
    }
    Frame::Array(out)
}

pub fn sort(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    sort_generic(ctx, args, false)
}

pub fn sort_ro(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    sort_generic(ctx, args, true)
}
