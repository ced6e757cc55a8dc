//! List commands: LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LMPOP LRANGE LLEN LINDEX
//! LSET LREM LTRIM LINSERT LPOS LMOVE RPOPLPUSH, and the blocking BLPOP BRPOP
//! BLMPOP BLMOVE BRPOPLPUSH.
//!
//! A blocking command here runs once and replies a null (a null array for the
//! pops, a null bulk for the moves) when it finds nothing, as Redis does inside
//! `MULTI`; outside a transaction the dispatcher
//! runs it again each time a list put is joined into the cache, local or applied
//! from another site, until it finds something or its timeout passes
//! ([`block_timeout`]).
//!
//! A list is a sequence of elements each at a place chosen here and shipped with
//! it (see `xsite_consumer::list`): a push is an [`Op::LPut`] of places past the
//! end it pushes to, `LINSERT` one between the pivot and its neighbour, `LSET` a
//! put of the element's own place with the new value (a register, last write
//! wins), and every removal (pops, `LREM`, `LTRIM`, `LMOVE`'s source) an
//! [`Op::LRem`] of the places it took. A push to a key that is not a live list here
//! carries what this site held of its list part (`seen`): those elements die at
//! every site and the key's expiry is reset. A key of another type answers
//! WRONGTYPE. List writes wait until every remote site reads log format 7
//! ([`Ctx::needs_format`]).
//!
//! Concurrent pops at two sites can hand the same element to both clients: each
//! removed what it saw, as in Redis Active-Active. Elements pushed concurrently at
//! two sites interleave by their places, the same way everywhere.

use super::{err, live_of, new_key_seen, read_of, refused, Ctx, ERR_SYNTAX};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::Locked;
use bytes::Bytes;
use std::collections::BTreeMap;
use xsite_consumer::list::Item;
use xsite_consumer::merge::{Kind, Record};
use xsite_schemas::{Hlc, Ident, ListItem, Op, Place, SiteId, FORMAT_VERSION_LISTS};

/// What [`Ctx::needs_format`] names in its refusal.
const WHAT: &str = "lists";
const ERR_NOT_POSITIVE: &str = "ERR value is out of range, must be positive";
const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";

fn bulk(b: &[u8]) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(b))
}

/// The visible elements of a live list (none for no list), in order.
fn items_of(r: Option<&Record>) -> Vec<(&Place, &Item)> {
    r.and_then(Record::list_items).map(|i| i.collect()).unwrap_or_default()
}

/// The id of the `n`th element a write puts, stamped with the write's version when
/// it is written ([`Op::stamp_list_ids`]).
fn unstamped(site: &SiteId, n: u32) -> Ident {
    Ident { d: 0, epoch: 0, hlc: Hlc::ZERO, site: site.clone(), n }
}

/// The put of a whole new list of `values` at `key` (RENAME, COPY, RESTORE, SORT
/// STORE), removing what the key held of a list (`seen`).
pub fn fresh_list(key: &[u8], values: Vec<Vec<u8>>, seen: BTreeMap<SiteId, Hlc>) -> Op {
    let placeholder = SiteId::new("x").expect("a valid site id");
    let items = values
        .into_iter()
        .enumerate()
        .map(|(n, value)| {
            let d = i64::try_from(n).expect("a list of fewer than 2^63 elements");
            ListItem { place: Place(vec![Ident { d, ..unstamped(&placeholder, n as u32) }]), value }
        })
        .collect();
    Op::LPut { key: key.to_vec(), items, seen: Some(seen) }
}

/// Which end of a list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Left,
    Right,
}

impl End {
    fn parse(arg: &[u8]) -> Option<End> {
        match arg.to_ascii_lowercase().as_slice() {
            b"left" => Some(End::Left),
            b"right" => Some(End::Right),
            _ => None,
        }
    }

    fn push_event(self) -> Event {
        match self {
            End::Left => Event::LPush,
            End::Right => Event::RPush,
        }
    }

    fn pop_event(self) -> Event {
        match self {
            End::Left => Event::LPop,
            End::Right => Event::RPop,
        }
    }
}

/// The place of the element at `end` of the live list `live` (none for none):
/// found without walking the list.
fn edge_of(live: Option<&Record>, end: End) -> Option<Place> {
    let mut items = live.and_then(Record::list_items)?;
    let edge = match end {
        End::Left => items.next(),
        End::Right => items.next_back(),
    };
    edge.map(|(p, _)| p.clone())
}

/// The places of `count` values pushed one by one at `end` of a list whose element
/// there is at `edge`, in push order.
fn push_places(site: &SiteId, edge: Option<Place>, end: End, count: usize) -> Vec<Place> {
    let mut places = Vec::with_capacity(count);
    let mut edge = edge;
    for n in 0..count {
        let id = unstamped(site, n as u32);
        let place = match end {
            End::Left => Place::between(None, edge.as_ref(), &id),
            End::Right => Place::between(edge.as_ref(), None, &id),
        };
        edge = Some(place.clone());
        places.push(place);
    }
    places
}

/// Writes a push of `values` at `end` of `key`, with its event: a new list unless
/// the key holds a live list, or `was_live` (`LMOVE` of a list onto itself, whose
/// one element it just popped). Returns the length after.
fn write_push(
    ctx: &mut Ctx<'_>,
    locked: &mut Locked<'_>,
    key: &[u8],
    end: End,
    values: Vec<Vec<u8>>,
    was_live: bool,
) -> Result<i64, Frame> {
    let live = live_of(locked.get(key), ctx.now_ms, Kind::List)?;
    let len = live.and_then(Record::list_len).unwrap_or(0) + values.len();
    let places = push_places(ctx.site, edge_of(live, end), end, values.len());
    let seen = new_key_seen(locked.get(key), live.is_some() || was_live, Kind::List);
    let items = places.into_iter().zip(values).map(|(place, value)| ListItem { place, value }).collect();
    let op = Op::LPut { key: key.to_vec(), items, seen };
    locked.admit([&op]).map_err(refused)?;
    ctx.write(locked, op);
    ctx.notify(end.push_event(), key);
    Ok(len as i64)
}

/// Removes the elements at `places` (visible ones of the live list at `key`, at
/// least one) with `event`, then `del` when nothing is left.
fn write_remove(ctx: &mut Ctx<'_>, locked: &mut Locked<'_>, key: &[u8], places: Vec<Place>, event: Event) {
    ctx.write(locked, Op::LRem { key: key.to_vec(), places });
    notify_removed(ctx, locked, key, event);
}

/// `event` on `key`, then `del` when its list is gone.
fn notify_removed(ctx: &mut Ctx<'_>, locked: &Locked<'_>, key: &[u8], event: Event) {
    ctx.notify(event, key);
    if locked.live(key, ctx.now_ms).is_none() {
        ctx.notify(Event::Del, key);
    }
}

fn push(ctx: &mut Ctx<'_>, args: &[Bytes], end: End, existing_only: bool) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::List) {
        Ok(r) => r,
        Err(f) => return f,
    };
    if existing_only && live.is_none() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
        return f;
    }
    let values = args[2..].iter().map(|v| v.to_vec()).collect();
    match write_push(ctx, &mut locked, key, end, values, false) {
        Ok(len) => Frame::Integer(len),
        Err(f) => f,
    }
}

pub fn lpush(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    push(ctx, args, End::Left, false)
}

pub fn rpush(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    push(ctx, args, End::Right, false)
}

pub fn lpushx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    push(ctx, args, End::Left, true)
}

pub fn rpushx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    push(ctx, args, End::Right, true)
}

/// Pops up to `count` elements at `end` of the live list at `key`, with their
/// events: their values, none when the key holds no list.
fn pop_at(ctx: &mut Ctx<'_>, locked: &mut Locked<'_>, key: &[u8], end: End, count: usize) -> Vec<Vec<u8>> {
    let values = take_at(ctx, locked, key, end, count);
    if !values.is_empty() {
        notify_removed(ctx, locked, key, end.pop_event());
    }
    values
}

/// [`pop_at`] without the events.
fn take_at(ctx: &mut Ctx<'_>, locked: &mut Locked<'_>, key: &[u8], end: End, count: usize) -> Vec<Vec<u8>> {
    let live = locked.live(key, ctx.now_ms).filter(|r| r.kind() == Kind::List);
    let Some(items) = live.and_then(Record::list_items) else { return Vec::new() };
    let picked: Vec<(&Place, &Item)> = match end {
        End::Left => items.take(count).collect(),
        End::Right => items.rev().take(count).collect(),
    };
    let values: Vec<Vec<u8>> = picked.iter().map(|(_, i)| i.value.clone()).collect();
    let places: Vec<Place> = picked.iter().map(|(p, _)| (*p).clone()).collect();
    if !places.is_empty() {
        ctx.write(locked, Op::LRem { key: key.to_vec(), places });
    }
    values
}

/// LPOP / RPOP key [count].
fn pop(ctx: &mut Ctx<'_>, args: &[Bytes], end: End) -> Frame {
    if args.len() > 3 {
        return super::errors::wrong_arity(if end == End::Left { "lpop" } else { "rpop" });
    }
    let count = match args.get(2).map(|c| crate::resp::parse_integer(c)) {
        None => None,
        Some(Some(n)) if n >= 0 => Some(n as usize),
        Some(_) => return err(ERR_NOT_POSITIVE),
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    match live_of(locked.get(key), ctx.now_ms, Kind::List) {
        Ok(Some(_)) => {}
        Ok(None) => return count.map_or(Frame::Null, |_| Frame::NullArray),
        Err(f) => return f,
    }
    if count == Some(0) {
        return Frame::Array(Vec::new());
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
        return f;
    }
    let values = pop_at(ctx, &mut locked, key, end, count.unwrap_or(1));
    match count {
        None => bulk(&values[0]),
        Some(_) => Frame::Array(values.iter().map(|v| bulk(v)).collect()),
    }
}

pub fn lpop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    pop(ctx, args, End::Left)
}

pub fn rpop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    pop(ctx, args, End::Right)
}

/// LMPOP numkeys key [key …] LEFT|RIGHT [COUNT count]: pops from the first of the
/// keys that holds a list.
pub fn lmpop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let n = match crate::resp::parse_integer(&args[1]) {
        Some(n) if n > 0 => n as usize,
        _ => return err("ERR numkeys should be greater than 0"),
    };
    if n.saturating_add(2) >= args.len() {
        return err(ERR_SYNTAX);
    }
    let keys = &args[2..2 + n];
    let Some(end) = End::parse(&args[2 + n]) else { return err(ERR_SYNTAX) };
    let mut count = 1;
    match &args[3 + n..] {
        [] => {}
        [word, c] if word.eq_ignore_ascii_case(b"count") => match crate::resp::parse_integer(c) {
            Some(c) if c > 0 => count = c as usize,
            _ => return err("ERR count should be greater than 0"),
        },
        _ => return err(ERR_SYNTAX),
    }
    match pop_from_first(ctx, keys, end, count) {
        Ok(Some((key, values))) => {
            Frame::Array(vec![bulk(key), Frame::Array(values.iter().map(|v| bulk(v)).collect())])
        }
        Ok(None) => Frame::NullArray,
        Err(f) => f,
    }
}

/// The key a pop took from, and the values it took.
type Popped<'k> = (&'k Bytes, Vec<Vec<u8>>);

/// Pops up to `count` elements at `end` of the first of `keys` that holds a list
/// (LMPOP, BLPOP…): that key and the values, `None` when none does, `Err` for a
/// key of another type before it.
fn pop_from_first<'k>(
    ctx: &mut Ctx<'_>,
    keys: &'k [Bytes],
    end: End,
    count: usize,
) -> Result<Option<Popped<'k>>, Frame> {
    let mut locked = ctx.store.lock(&keys.iter().collect::<Vec<_>>());
    for key in keys {
        if live_of(locked.get(key), ctx.now_ms, Kind::List)?.is_none() {
            continue;
        }
        ctx.needs_format(FORMAT_VERSION_LISTS, WHAT)?;
        return Ok(Some((key, pop_at(ctx, &mut locked, key, end, count))));
    }
    Ok(None)
}

pub fn llen(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::List, |r| Frame::Integer(r.and_then(Record::list_len).unwrap_or(0) as i64))
        .unwrap_or_else(|f| f)
}

/// Redis's range over `len` elements: `start..=stop` with negative indexes from
/// the end, clamped; `None` when empty.
fn range_of(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 { (start + len).max(0) } else { start };
    let stop = if stop < 0 { stop + len } else { stop.min(len - 1) };
    (start <= stop && start < len).then_some((start as usize, stop as usize))
}

fn parse_index(arg: &[u8]) -> Result<i64, Frame> {
    crate::resp::parse_integer(arg).ok_or_else(|| err(ERR_NOT_INTEGER))
}

pub fn lrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let (start, stop) = match (parse_index(&args[2]), parse_index(&args[3])) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => return f,
    };
    read_of(ctx, &args[1], Kind::List, |r| {
        let Some(len) = r.and_then(Record::list_len) else { return Frame::Array(Vec::new()) };
        let Some((from, to)) = range_of(start, stop, len) else { return Frame::Array(Vec::new()) };
        let items = r.and_then(Record::list_items).expect("a live list");
        Frame::Array(items.skip(from).take(to - from + 1).map(|(_, i)| bulk(&i.value)).collect())
    })
    .unwrap_or_else(|f| f)
}

/// The element at `index` (negative from the end) of `r`'s visible elements.
fn nth(r: &Record, index: i64) -> Option<(&Place, &Item)> {
    let mut items = r.list_items()?;
    if index >= 0 {
        items.nth(index as usize)
    } else {
        items.rev().nth((-(index + 1)) as usize)
    }
}

pub fn lindex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let index = match parse_index(&args[2]) {
        Ok(i) => i,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::List, |r| match r.and_then(|r| nth(r, index)) {
        Some((_, item)) => bulk(&item.value),
        None => Frame::Null,
    })
    .unwrap_or_else(|f| f)
}

pub fn lset(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::List) {
        Ok(Some(r)) => r,
        Ok(None) => return err("ERR no such key"),
        Err(f) => return f,
    };
    let index = match parse_index(&args[2]) {
        Ok(i) => i,
        Err(f) => return f,
    };
    let Some((place, _)) = nth(live, index) else { return err("ERR index out of range") };
    let op = Op::LPut {
        key: key.to_vec(),
        items: vec![ListItem { place: place.clone(), value: args[3].to_vec() }],
        seen: None,
    };
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
        return f;
    }
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::LSet, key);
    Frame::ok()
}

/// LREM key count element: the first `count` matches from the head (from the tail
/// for a negative count, every one for 0).
pub fn lrem(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let count = match parse_index(&args[2]) {
        Ok(c) => c,
        Err(f) => return f,
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::List) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let items = items_of(Some(live));
    let matching = |(_, i): &&(&Place, &Item)| i.value == args[3].as_ref();
    let limit = if count == 0 { usize::MAX } else { count.unsigned_abs() as usize };
    let places: Vec<Place> = match count {
        c if c < 0 => items.iter().rev().filter(matching).take(limit).map(|(p, _)| (*p).clone()).collect(),
        _ => items.iter().filter(matching).take(limit).map(|(p, _)| (*p).clone()).collect(),
    };
    if places.is_empty() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
        return f;
    }
    let removed = places.len() as i64;
    write_remove(ctx, &mut locked, key, places, Event::LRem);
    Frame::Integer(removed)
}

pub fn ltrim(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let (start, stop) = match (parse_index(&args[2]), parse_index(&args[3])) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => return f,
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::List) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::ok(),
        Err(f) => return f,
    };
    let items = items_of(Some(live));
    let kept = range_of(start, stop, items.len());
    let places: Vec<Place> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| kept.is_none_or(|(from, to)| *i < from || *i > to))
        .map(|(_, (p, _))| (*p).clone())
        .collect();
    if !places.is_empty() {
        if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
            return f;
        }
        write_remove(ctx, &mut locked, key, places, Event::LTrim);
    } else {
        // Redis signals ltrim even when nothing goes.
        ctx.notify(Event::LTrim, key);
    }
    Frame::ok()
}

/// LINSERT key BEFORE|AFTER pivot element.
pub fn linsert(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let before = match args[2].to_ascii_lowercase().as_slice() {
        b"before" => true,
        b"after" => false,
        _ => return err(ERR_SYNTAX),
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::List) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let items = items_of(Some(live));
    let Some(at) = items.iter().position(|(_, i)| i.value == args[3].as_ref()) else { return Frame::Integer(-1) };
    let (lo, hi) = match before {
        true => (at.checked_sub(1).map(|i| items[i].0), Some(items[at].0)),
        false => (Some(items[at].0), items.get(at + 1).map(|(p, _)| *p)),
    };
    let place = Place::between(lo, hi, &unstamped(ctx.site, 0));
    let len = items.len() as i64 + 1;
    let op = Op::LPut { key: key.to_vec(), items: vec![ListItem { place, value: args[4].to_vec() }], seen: None };
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
        return f;
    }
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    ctx.notify(Event::LInsert, key);
    Frame::Integer(len)
}

/// LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len].
pub fn lpos(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let (mut rank, mut count, mut maxlen) = (1i64, None, 0usize);
    let mut j = 3;
    while j < args.len() {
        let Some(arg) = args.get(j + 1) else { return err(ERR_SYNTAX) };
        let value = match parse_index(arg) {
            Ok(v) => v,
            Err(f) => return f,
        };
        match args[j].to_ascii_lowercase().as_slice() {
            b"rank" if value == 0 => {
                return err("ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list")
            }
            b"rank" => rank = value,
            b"count" if value < 0 => return err("ERR COUNT can't be negative"),
            b"count" => count = Some(value as usize),
            b"maxlen" if value < 0 => return err("ERR MAXLEN can't be negative"),
            b"maxlen" => maxlen = value as usize,
            _ => return err(ERR_SYNTAX),
        }
        j += 2;
    }
    read_of(ctx, &args[1], Kind::List, |r| {
        let items = items_of(r);
        let len = items.len();
        let scanned = if maxlen == 0 { len } else { maxlen.min(len) };
        // Redis 7.0 takes RANK i64::MIN as the first match from the tail.
        let skip = if rank == i64::MIN { 0 } else { rank.unsigned_abs() as usize - 1 };
        let want = match count {
            Some(0) => usize::MAX,
            Some(c) => c,
            None => 1,
        };
        let indexes: Box<dyn Iterator<Item = usize>> =
            if rank > 0 { Box::new(0..scanned) } else { Box::new((len - scanned..len).rev()) };
        let found: Vec<usize> =
            indexes.filter(|&i| items[i].1.value == args[2].as_ref()).skip(skip).take(want).collect();
        match count {
            None => found.first().map_or(Frame::Null, |&i| Frame::Integer(i as i64)),
            Some(_) => Frame::Array(found.into_iter().map(|i| Frame::Integer(i as i64)).collect()),
        }
    })
    .unwrap_or_else(|f| f)
}

/// Pops at `from` of `src` and pushes at `to` of `dst`: the element moved, nil when
/// `src` holds no list.
fn move_one(ctx: &mut Ctx<'_>, src: &[u8], dst: &[u8], from: End, to: End) -> Frame {
    let mut locked = ctx.store.lock(&[src, dst]);
    match live_of(locked.get(src), ctx.now_ms, Kind::List) {
        Ok(Some(_)) => {}
        Ok(None) => return Frame::Null,
        Err(f) => return f,
    }
    if let Err(f) = live_of(locked.get(dst), ctx.now_ms, Kind::List) {
        return f;
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_LISTS, WHAT) {
        return f;
    }
    // Redis pushes, then signals the pop (and the source's end).
    let value = take_at(ctx, &mut locked, src, from, 1).remove(0);
    if let Err(f) = write_push(ctx, &mut locked, dst, to, vec![value.clone()], src == dst) {
        return f;
    }
    notify_removed(ctx, &locked, src, from.pop_event());
    bulk(&value)
}

pub fn lmove(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    match (End::parse(&args[3]), End::parse(&args[4])) {
        (Some(from), Some(to)) => move_one(ctx, &args[1], &args[2], from, to),
        _ => err(ERR_SYNTAX),
    }
}

pub fn rpoplpush(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    move_one(ctx, &args[1], &args[2], End::Right, End::Left)
}

/// The longest a blocking pop with timeout 0 ("forever") blocks: it then replies
/// as on a timeout, and a client's loop asks again.
pub const BLOCK_MS_MAX: u64 = 300_000;

/// A blocking command's timeout (`args[at]`, seconds as a float, as Redis 7.0 reads
/// it): how long it blocks, 0 being [`BLOCK_MS_MAX`]; `Err` with Redis's reply.
pub fn block_timeout(arg: &[u8]) -> Result<std::time::Duration, Frame> {
    let text = std::str::from_utf8(arg).ok().filter(|t| !t.is_empty() && t.trim() == *t);
    let seconds = match text.and_then(|t| t.parse::<f64>().ok()) {
        Some(v) if v.is_nan() => return Err(err("ERR timeout is not a float or out of range")),
        Some(v) => v,
        None => return Err(err("ERR timeout is not a float or out of range")),
    };
    let ms = seconds * 1000.0;
    // Redis converts to a long long: what overflows it comes out negative.
    if ms < 0.0 || ms >= i64::MAX as f64 {
        return Err(err("ERR timeout is negative"));
    }
    let ms = ms as u64;
    Ok(std::time::Duration::from_millis(if ms == 0 { BLOCK_MS_MAX } else { ms.min(BLOCK_MS_MAX) }))
}

/// Where a blocking command's timeout is: its last argument, or for BLMPOP its
/// first.
pub fn timeout_arg(name: &str, args: &[Bytes]) -> usize {
    if name == "blmpop" {
        1
    } else {
        args.len() - 1
    }
}

/// Pops one element at `end` of the first of `keys` that holds a list: `[key,
/// value]`, a null array when none does.
fn pop_first(ctx: &mut Ctx<'_>, keys: &[Bytes], end: End) -> Frame {
    match pop_from_first(ctx, keys, end, 1) {
        Ok(Some((key, values))) => Frame::Array(vec![bulk(key), bulk(&values[0])]),
        Ok(None) => Frame::NullArray,
        Err(f) => f,
    }
}

fn blocking_pop(ctx: &mut Ctx<'_>, args: &[Bytes], end: End) -> Frame {
    match block_timeout(&args[args.len() - 1]) {
        Ok(_) => pop_first(ctx, &args[1..args.len() - 1], end),
        Err(f) => f,
    }
}

pub fn blpop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    blocking_pop(ctx, args, End::Left)
}

pub fn brpop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    blocking_pop(ctx, args, End::Right)
}

/// BLMPOP timeout numkeys key [key …] LEFT|RIGHT [COUNT count].
pub fn blmpop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if let Err(f) = block_timeout(&args[1]) {
        return f;
    }
    // LMPOP's arguments after its name are BLMPOP's after the timeout.
    lmpop(ctx, &args[1..])
}

/// BLMOVE source destination LEFT|RIGHT LEFT|RIGHT timeout.
pub fn blmove(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let ends = (End::parse(&args[3]), End::parse(&args[4]));
    let (Some(from), Some(to)) = ends else { return err(ERR_SYNTAX) };
    match block_timeout(&args[5]) {
        Ok(_) => move_one(ctx, &args[1], &args[2], from, to),
        Err(f) => f,
    }
}

pub fn brpoplpush(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    match block_timeout(&args[3]) {
        Ok(_) => move_one(ctx, &args[1], &args[2], End::Right, End::Left),
        Err(f) => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_redis_s() {
        assert_eq!(range_of(0, -1, 3), Some((0, 2)));
        assert_eq!(range_of(-100, 100, 3), Some((0, 2)));
        assert_eq!(range_of(2, 1, 3), None);
        assert_eq!(range_of(3, 5, 3), None);
        assert_eq!(range_of(-1, -1, 3), Some((2, 2)));
        assert_eq!(range_of(0, -4, 3), None);
        assert_eq!(range_of(0, 0, 0), None);
    }

    #[test]
    fn pushes_at_both_ends_keep_their_order() {
        let site = SiteId::new("a").unwrap();
        let heads = push_places(&site, None, End::Left, 3);
        assert!(heads[2] < heads[1] && heads[1] < heads[0]);
        let tails = push_places(&site, None, End::Right, 3);
        assert!(tails[0] < tails[1] && tails[1] < tails[2]);
    }
}
