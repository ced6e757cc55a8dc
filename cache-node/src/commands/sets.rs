//! Set commands: SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER
//! SMOVE SINTER SUNION SDIFF SINTERSTORE SUNIONSTORE SDIFFSTORE SINTERCARD SSCAN.
//!
//! A set is an add-wins observed-remove set (see `xsite_consumer::set`): `SADD` is
//! an [`Op::SAdd`] of every member it names (one already there too: the add is
//! renewed, so a remove made concurrently at another site, which did not see it,
//! does not take the member away), `SREM`, `SPOP` and `SMOVE`'s source an
//! [`Op::SRem`] carrying, per member, the adds this site held of it. A write to a
//! key that is not a live set here (absent, expired, or overwritten by a `…STORE`)
//! carries what this site held of its set part (`seen`): those members die at
//! every site and the key's expiry is reset, as a new set in Redis has none. A key
//! of another type answers WRONGTYPE. Set writes wait until every remote site
//! reads log format 5 ([`Ctx::needs_format`]).
//!
//! Concurrent `SPOP`s at two sites can hand the same member to both clients: each
//! removed what it saw, as in Redis Active-Active.

use super::{err, live_of, new_key_seen, parse_i64, read_of, refused, Ctx, ERR_SYNTAX};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::Locked;
use bytes::Bytes;
use std::collections::BTreeSet;
use xsite_consumer::merge::{Kind, Record};
use xsite_schemas::{MemberSeen, Op, FORMAT_VERSION_SETS};

/// What [`Ctx::needs_format`] names in its refusal.
const WHAT: &str = "sets";
const ERR_NOT_POSITIVE: &str = "ERR value is out of range, must be positive";

/// The visible members of a live set (none for no set), in byte order.
fn members_of(r: Option<&Record>) -> Vec<&[u8]> {
    r.and_then(Record::set_members).map(|m| m.collect()).unwrap_or_default()
}

fn bulk(b: &[u8]) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(b))
}

/// The remove of `members` (visible ones of the live set `rec`), each with the adds
/// this site held of it.
fn remove_op(key: &[u8], rec: &Record, members: impl IntoIterator<Item = Vec<u8>>) -> Op {
    let set = rec.set().expect("a live set has a set part");
    let members = members
        .into_iter()
        .map(|member| {
            let seen = set.members.get(member.as_slice()).map(|e| e.seen()).unwrap_or_default();
            MemberSeen { member, seen }
        })
        .collect();
    Op::SRem { key: key.to_vec(), members }
}

/// Removes `members` (visible ones, at least one) from the live set at `key`, with
/// `event`, then `del` when nothing is left.
fn write_remove(ctx: &mut Ctx<'_>, locked: &mut Locked<'_>, key: &[u8], members: Vec<Vec<u8>>, event: Event) {
    let rec = locked.get(key).expect("a live set");
    let op = remove_op(key, rec, members);
    ctx.write(locked, op);
    ctx.notify(event, key);
    if locked.live(key, ctx.now_ms).is_none() {
        ctx.notify(Event::Del, key);
    }
}

pub fn sadd(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::Set) {
        Ok(r) => r,
        Err(f) => return f,
    };
    let named: BTreeSet<&[u8]> = args[2..].iter().map(|m| m.as_ref()).collect();
    let added = named.iter().filter(|m| !live.is_some_and(|r| r.is_member(m))).count() as i64;
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_SETS, WHAT) {
        return f;
    }
    let seen = new_key_seen(locked.get(key), live.is_some(), Kind::Set);
    let op = Op::SAdd { key: key.to_vec(), members: named.into_iter().map(<[u8]>::to_vec).collect(), seen };
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    if added > 0 {
        ctx.notify(Event::SAdd, key);
    }
    Frame::Integer(added)
}

pub fn srem(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::Set) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let members: BTreeSet<Vec<u8>> = args[2..].iter().filter(|m| live.is_member(m)).map(|m| m.to_vec()).collect();
    if members.is_empty() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_SETS, WHAT) {
        return f;
    }
    let removed = members.len() as i64;
    write_remove(ctx, &mut locked, key, members.into_iter().collect(), Event::SRem);
    Frame::Integer(removed)
}

pub fn smembers(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Set, |r| Frame::Set(members_of(r).into_iter().map(bulk).collect()))
        .unwrap_or_else(|f| f)
}

pub fn sismember(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Set, |r| Frame::Integer(i64::from(r.is_some_and(|r| r.is_member(&args[2])))))
        .unwrap_or_else(|f| f)
}

pub fn smismember(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Set, |r| {
        Frame::Array(args[2..].iter().map(|m| Frame::Integer(i64::from(r.is_some_and(|r| r.is_member(m))))).collect())
    })
    .unwrap_or_else(|f| f)
}

pub fn scard(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::Set, |r| {
        Frame::Integer(r.and_then(Record::set_members).map_or(0, |m| m.count()) as i64)
    })
    .unwrap_or_else(|f| f)
}

/// SPOP key [count]: removes random members (count: distinct, at most the whole
/// set) and replies them.
pub fn spop(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if args.len() > 3 {
        return err(ERR_SYNTAX);
    }
    let count = match args.get(2).map(|c| crate::resp::parse_integer(c)) {
        None => None,
        Some(Some(n)) if n >= 0 => Some(n as u64),
        Some(_) => return err(ERR_NOT_POSITIVE),
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let empty = || count.map_or(Frame::Null, |_| Frame::Set(Vec::new()));
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::Set) {
        Ok(Some(r)) => r,
        Ok(None) => return empty(),
        Err(f) => return f,
    };
    if count == Some(0) {
        return empty();
    }
    let members = members_of(Some(live));
    let take = count.unwrap_or(1).min(members.len() as u64) as i64;
    // The whole set when the count takes it all, in order, as Redis answers then.
    let picks = match take as usize == members.len() {
        true => (0..members.len()).collect(),
        false => super::random_picks(members.len(), take, ctx.clock.now().as_u64()),
    };
    let popped: Vec<Vec<u8>> = picks.into_iter().map(|i| members[i].to_vec()).collect();
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_SETS, WHAT) {
        return f;
    }
    let reply = match count {
        None => bulk(&popped[0]),
        Some(_) => Frame::Set(popped.iter().map(|m| bulk(m)).collect()),
    };
    write_remove(ctx, &mut locked, key, popped, Event::SPop);
    reply
}

/// SRANDMEMBER key [count], Redis 7.0's rules: a positive count gives distinct
/// members (all of them when it is larger), a negative one may repeat.
pub fn srandmember(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if args.len() > 3 {
        return err(ERR_SYNTAX);
    }
    let count = match args.get(2).map(|c| parse_i64(c)) {
        None => None,
        Some(Ok(i64::MIN)) => {
            return err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
        }
        Some(Ok(n)) => Some(n),
        Some(Err(f)) => return f,
    };
    let seed = ctx.clock.now().as_u64();
    read_of(ctx, &args[1], Kind::Set, |r| {
        let members = members_of(r);
        match count {
            None if members.is_empty() => Frame::Null,
            None => bulk(members[super::random_picks(members.len(), 1, seed)[0]]),
            Some(n) => Frame::Array(
                super::random_picks(members.len(), n, seed).into_iter().map(|i| bulk(members[i])).collect(),
            ),
        }
    })
    .unwrap_or_else(|f| f)
}

/// SMOVE source destination member.
pub fn smove(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let (src, dst, member) = (&args[1], &args[2], &args[3]);
    let mut locked = ctx.store.lock(&[src, dst]);
    let from = match live_of(locked.get(src), ctx.now_ms, Kind::Set) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let to = match live_of(locked.get(dst), ctx.now_ms, Kind::Set) {
        Ok(r) => r,
        Err(f) => return f,
    };
    if src == dst || !from.is_member(member) {
        return Frame::Integer(i64::from(src == dst && from.is_member(member)));
    }
    let existed = to.is_some_and(|r| r.is_member(member));
    let add = Op::SAdd {
        key: dst.to_vec(),
        members: vec![member.to_vec()],
        seen: new_key_seen(locked.get(dst), to.is_some(), Kind::Set),
    };
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_SETS, WHAT) {
        return f;
    }
    if let Err(e) = locked.admit([&add]) {
        return refused(e);
    }
    write_remove(ctx, &mut locked, src, vec![member.to_vec()], Event::SRem);
    ctx.write(&mut locked, add);
    if !existed {
        ctx.notify(Event::SAdd, dst);
    }
    Frame::Integer(1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algebra {
    Inter,
    Union,
    Diff,
}

/// The members of `op` over the sets at `keys`, every key type-checked first (a
/// missing key is an empty set), as Redis does.
fn combine(locked: &Locked<'_>, now_ms: u64, keys: &[Bytes], op: Algebra) -> Result<BTreeSet<Vec<u8>>, Frame> {
    let mut sets = Vec::with_capacity(keys.len());
    for key in keys {
        let members: BTreeSet<Vec<u8>> =
            members_of(live_of(locked.get(key), now_ms, Kind::Set)?).into_iter().map(<[u8]>::to_vec).collect();
        sets.push(members);
    }
    let mut sets = sets.into_iter();
    let first = sets.next().unwrap_or_default();
    Ok(sets.fold(first, |acc, s| match op {
        Algebra::Inter => acc.intersection(&s).cloned().collect(),
        Algebra::Union => acc.union(&s).cloned().collect(),
        Algebra::Diff => acc.difference(&s).cloned().collect(),
    }))
}

fn algebra(ctx: &mut Ctx<'_>, keys: &[Bytes], op: Algebra) -> Frame {
    let locked = ctx.store.lock(keys);
    match combine(&locked, ctx.now_ms, keys, op) {
        Ok(members) => Frame::Set(members.iter().map(|m| bulk(m)).collect()),
        Err(f) => f,
    }
}

pub fn sinter(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra(ctx, &args[1..], Algebra::Inter)
}

pub fn sunion(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra(ctx, &args[1..], Algebra::Union)
}

pub fn sdiff(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra(ctx, &args[1..], Algebra::Diff)
}

/// …STORE destination key [key …]: the destination replaced by the result (its
/// expiry gone), or deleted when the result is empty.
fn algebra_store(ctx: &mut Ctx<'_>, args: &[Bytes], op: Algebra, event: Event) -> Frame {
    let dst = &args[1];
    let mut locked = ctx.store.lock(&args[1..]);
    let members = match combine(&locked, ctx.now_ms, &args[2..], op) {
        Ok(m) => m,
        Err(f) => return f,
    };
    let existed = locked.live(dst, ctx.now_ms).is_some();
    if members.is_empty() {
        if existed {
            let op = super::delete_op(locked.get(dst), dst);
            ctx.write(&mut locked, op);
            ctx.notify(Event::Del, dst);
        }
        return Frame::Integer(0);
    }
    let n = members.len() as i64;
    let ops = super::Held::Set(members.into_iter().collect()).write_ops(dst, locked.get(dst), None);
    if let Err(f) = ctx.needs_format_of(&ops) {
        return f;
    }
    if let Err(e) = locked.admit(&ops) {
        return refused(e);
    }
    for op in ops {
        ctx.write(&mut locked, op);
    }
    ctx.notify(event, dst);
    Frame::Integer(n)
}

pub fn sinterstore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra_store(ctx, args, Algebra::Inter, Event::SInterStore)
}

pub fn sunionstore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra_store(ctx, args, Algebra::Union, Event::SUnionStore)
}

pub fn sdiffstore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra_store(ctx, args, Algebra::Diff, Event::SDiffStore)
}

/// SINTERCARD numkeys key [key …] [LIMIT limit].
pub fn sintercard(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let numkeys = match crate::resp::parse_integer(&args[1]) {
        Some(n) if n > 0 => n as usize,
        _ => return err("ERR numkeys should be greater than 0"),
    };
    if numkeys > args.len() - 2 {
        return err("ERR Number of keys can't be greater than number of args");
    }
    let keys = &args[2..2 + numkeys];
    let mut limit = 0usize;
    let mut rest = &args[2 + numkeys..];
    while let Some(opt) = rest.first() {
        match (opt.eq_ignore_ascii_case(b"limit"), rest.get(1)) {
            (true, Some(v)) => match parse_i64(v) {
                Ok(l) if l < 0 => return err("ERR LIMIT can't be negative"),
                Ok(l) => limit = l as usize,
                Err(_) => return err("ERR LIMIT can't be negative"),
            },
            _ => return err(ERR_SYNTAX),
        }
        rest = &rest[2..];
    }
    let locked = ctx.store.lock(keys);
    match combine(&locked, ctx.now_ms, keys, Algebra::Inter) {
        Ok(members) if limit > 0 => Frame::Integer(members.len().min(limit) as i64),
        Ok(members) => Frame::Integer(members.len() as i64),
        Err(f) => f,
    }
}

/// SSCAN key cursor [MATCH pattern] [COUNT count]: the whole set in one step
/// (cursor 0), as Redis answers for a set in its compact encoding; MATCH filters.
pub fn sscan(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if std::str::from_utf8(&args[2]).ok().and_then(|s| s.parse::<u64>().ok()).is_none() {
        return err("ERR invalid cursor");
    }
    let pattern = match super::keys::scan_options(&args[3..], false) {
        Ok(o) => o.pattern,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::Set, |r| {
        let out = members_of(r)
            .into_iter()
            .filter(|m| pattern.as_ref().is_none_or(|p| crate::store::glob::glob_match(p, m)))
            .map(bulk)
            .collect();
        Frame::Array(vec![Frame::Bulk(Bytes::from_static(b"0")), Frame::Array(out)])
    })
    .unwrap_or_else(|f| f)
}
