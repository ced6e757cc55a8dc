//! Sorted set commands: ZADD ZINCRBY ZREM ZSCORE ZMSCORE ZCARD ZCOUNT ZLEXCOUNT
//! ZRANGE ZRANGEBYSCORE ZREVRANGEBYSCORE ZRANGEBYLEX ZREVRANGEBYLEX ZREVRANGE ZRANK
//! ZREVRANK ZPOPMIN ZPOPMAX ZRANGESTORE ZUNIONSTORE ZINTERSTORE ZDIFFSTORE
//! ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX ZRANDMEMBER ZSCAN.
//!
//! A sorted set's members are an add-wins set and each member's score a register
//! or, under `ZINCRBY`, a float counter (see `xsite_consumer::zset`): `ZADD` is an
//! [`Op::ZAdd`] of the members it adds or updates (an unchanged one too: the add is
//! renewed, as `SADD` renews), `ZINCRBY` an [`Op::ZIncr`] on the member's score,
//! every removal an [`Op::ZRem`] of what this site held. An increment of a member
//! this site never held counts from nothing (the zero version), one of a member
//! that was removed on a reset of its old score (counting from 0): either way
//! first increments at two sites add up. A write to
//! a key that is not a live sorted set here carries what this site held of its
//! sorted set part (`seen`), so those members die and the expiry is reset. Sorted
//! set writes wait until every remote site reads log format 6.

use super::{err, live_of, new_key_seen, parse_i64, read_of, refused, Ctx, Held, ERR_SYNTAX, ERR_WRONGTYPE};
use crate::notify::Event;
use crate::resp::Frame;
use crate::store::Locked;
use bytes::Bytes;
use std::collections::BTreeMap;
use xsite_consumer::hash::FieldState;
use xsite_consumer::merge::{Kind, Record};
use xsite_schemas::{Float, FloatBase, MemberSeen, Op, Score, ScoredMember, Version, FORMAT_VERSION_ZSETS};

const WHAT: &str = "sorted sets";
const ERR_NOT_FLOAT: &str = "ERR value is not a valid float";
const ERR_NAN: &str = "ERR resulting score is not a number (NaN)";
const ERR_RANGE_FLOAT: &str = "ERR min or max is not a float";
const ERR_RANGE_LEX: &str = "ERR min or max not valid string range item";
const ERR_NOT_POSITIVE: &str = "ERR value is out of range, must be positive";

/// The visible members of a live sorted set, by score then member.
fn ranked(r: Option<&Record>) -> Vec<(&[u8], f64)> {
    r.and_then(Record::zset_ranked).unwrap_or_default()
}

fn bulk(b: &[u8]) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(b))
}

/// A score as `ZADD` reads one (Redis's `getDoubleFromObject`): the whole argument a
/// float, the infinities included, never NaN, no leading space.
pub fn parse_score(arg: &[u8]) -> Option<f64> {
    if arg.first().is_none_or(|b| b.is_ascii_whitespace()) {
        return None;
    }
    // -0 is stored as 0, as Redis shows it.
    strtod(arg).filter(|v| !v.is_nan()).map(|v| v + 0.0)
}

/// The whole argument as C's `strtod` reads a float (leading spaces skipped; an
/// empty argument is 0, as `zslParseRange` takes it).
fn strtod(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Some(0.0);
    }
    let body = text.trim_start_matches(['+', '-']);
    if body.len() + 1 < text.len() {
        return None;
    }
    if body.is_empty() || !(body.as_bytes()[0].is_ascii_digit() || body.starts_with('.') || body.len() >= 3) {
        return None;
    }
    text.parse::<f64>().ok()
}

/// One end of a score range: the score, and whether it is excluded (`(`).
fn parse_bound(arg: &[u8]) -> Option<(f64, bool)> {
    let (text, excluded) = match arg.strip_prefix(b"(") {
        Some(rest) => (rest, true),
        None => (arg, false),
    };
    strtod(text).filter(|v| !v.is_nan()).map(|v| (v, excluded))
}

#[derive(Clone, Copy)]
struct ScoreRange {
    min: (f64, bool),
    max: (f64, bool),
}

impl ScoreRange {
    fn parse(min: &[u8], max: &[u8]) -> Result<ScoreRange, Frame> {
        match (parse_bound(min), parse_bound(max)) {
            (Some(min), Some(max)) => Ok(ScoreRange { min, max }),
            _ => Err(err(ERR_RANGE_FLOAT)),
        }
    }

    fn holds(&self, score: f64) -> bool {
        let above = if self.min.1 { score > self.min.0 } else { score >= self.min.0 };
        let below = if self.max.1 { score < self.max.0 } else { score <= self.max.0 };
        above && below
    }
}

/// One end of a lex range.
#[derive(Clone)]
enum LexBound {
    /// `-`
    Min,
    /// `+`
    Max,
    Included(Vec<u8>),
    Excluded(Vec<u8>),
}

#[derive(Clone)]
struct LexRange {
    min: LexBound,
    max: LexBound,
}

impl LexRange {
    fn parse(min: &[u8], max: &[u8]) -> Result<LexRange, Frame> {
        let item = |a: &[u8]| match a {
            b"-" => Some(LexBound::Min),
            b"+" => Some(LexBound::Max),
            [b'[', rest @ ..] => Some(LexBound::Included(rest.to_vec())),
            [b'(', rest @ ..] => Some(LexBound::Excluded(rest.to_vec())),
            _ => None,
        };
        match (item(min), item(max)) {
            (Some(min), Some(max)) => Ok(LexRange { min, max }),
            _ => Err(err(ERR_RANGE_LEX)),
        }
    }

    fn holds(&self, m: &[u8]) -> bool {
        let above = match &self.min {
            LexBound::Min => true,
            LexBound::Max => false,
            LexBound::Included(v) => m >= v.as_slice(),
            LexBound::Excluded(v) => m > v.as_slice(),
        };
        let below = match &self.max {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Included(v) => m <= v.as_slice(),
            LexBound::Excluded(v) => m < v.as_slice(),
        };
        above && below
    }
}

/// Ranks `start..=end` of `len` elements as Redis sanitizes them (negative from the
/// end); `None` for an empty range.
fn rank_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { len + end } else { end };
    if start > end || start >= len {
        return None;
    }
    Some((start as usize, end.min(len - 1) as usize))
}

fn with_scores(members: &[(&[u8], f64)]) -> Frame {
    Frame::Pairs(members.iter().map(|(m, s)| (bulk(m), Frame::Double(*s))).collect())
}

fn names(members: &[(&[u8], f64)]) -> Frame {
    Frame::Array(members.iter().map(|(m, _)| bulk(m)).collect())
}

/// Removes `members` (visible ones) from the live sorted set at `key`, with
/// `event`, then `del` when nothing is left. Returns how many.
fn write_remove(ctx: &mut Ctx<'_>, locked: &mut Locked<'_>, key: &[u8], members: Vec<Vec<u8>>, event: Event) -> i64 {
    let n = members.len() as i64;
    if n == 0 {
        return 0;
    }
    let z = locked.get(key).and_then(|r| r.zset()).expect("a live sorted set");
    let members = members
        .into_iter()
        .map(|member| {
            let seen = z.members.members.get(member.as_slice()).map(|e| e.seen()).unwrap_or_default();
            MemberSeen { member, seen }
        })
        .collect();
    ctx.write(locked, Op::ZRem { key: key.to_vec(), members });
    ctx.notify(event, key);
    if locked.live(key, ctx.now_ms).is_none() {
        ctx.notify(Event::Del, key);
    }
    n
}

#[derive(Default, Clone, Copy)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

pub fn zadd(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let mut f = AddFlags::default();
    let mut i = 2;
    while let Some(a) = args.get(i) {
        match a.to_ascii_lowercase().as_slice() {
            b"nx" => f.nx = true,
            b"xx" => f.xx = true,
            b"gt" => f.gt = true,
            b"lt" => f.lt = true,
            b"ch" => f.ch = true,
            b"incr" => f.incr = true,
            _ => break,
        }
        i += 1;
    }
    let rest = &args[i..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return err(ERR_SYNTAX);
    }
    if f.nx && f.xx {
        return err("ERR XX and NX options at the same time are not compatible");
    }
    if (f.nx && (f.gt || f.lt)) || (f.gt && f.lt) {
        return err("ERR GT, LT, and/or NX options at the same time are not compatible");
    }
    if f.incr && rest.len() > 2 {
        return err("ERR INCR option supports a single increment-element pair");
    }
    let mut pairs = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        let Some(score) = parse_score(&pair[0]) else { return err(ERR_NOT_FLOAT) };
        pairs.push((score, &pair[1]));
    }
    let key = &args[1];
    if f.incr {
        return increment(ctx, key, &pairs[0].1[..], pairs[0].0, f);
    }
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::ZSet) {
        Ok(r) => r,
        Err(f) => return f,
    };
    if live.is_none() && f.xx {
        return Frame::Integer(0);
    }
    // The scores as this command leaves them, member by member (a member named
    // twice: the later pair applies to what the earlier one left).
    let mut now: BTreeMap<&[u8], f64> = BTreeMap::new();
    let (mut added, mut updated) = (0, 0);
    for (score, member) in pairs {
        let current = now.get(member.as_ref()).copied().or_else(|| live.and_then(|r| r.zscore(member)));
        match current {
            Some(_) if f.nx => continue,
            Some(cur) if (f.lt && score >= cur) || (f.gt && score <= cur) => continue,
            Some(cur) => updated += i64::from(score != cur),
            None if f.xx => continue,
            None => added += 1,
        }
        now.insert(member, score);
    }
    if now.is_empty() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_ZSETS, WHAT) {
        return f;
    }
    let members =
        now.into_iter().map(|(m, s)| ScoredMember { member: m.to_vec(), score: Score(s) }).collect::<Vec<_>>();
    let op = Op::ZAdd { key: key.to_vec(), members, seen: new_key_seen(locked.get(key), live.is_some(), Kind::ZSet) };
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write(&mut locked, op);
    if added + updated > 0 {
        ctx.notify(Event::ZAdd, key);
    }
    Frame::Integer(if f.ch { added + updated } else { added })
}

pub fn zincrby(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let Some(delta) = parse_score(&args[2]) else { return err(ERR_NOT_FLOAT) };
    increment(ctx, &args[1], &args[3], delta, AddFlags::default())
}

/// ZINCRBY, and ZADD … INCR with its flags: replies the new score (nil when a flag
/// said not to).
fn increment(ctx: &mut Ctx<'_>, key: &[u8], member: &[u8], delta: f64, f: AddFlags) -> Frame {
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::ZSet) {
        Ok(r) => r,
        Err(f) => return f,
    };
    let current = live.and_then(|r| r.zscore(member));
    let new = match current {
        Some(_) if f.nx => return Frame::Null,
        Some(cur) => cur + delta,
        None if f.xx => return Frame::Null,
        None => delta,
    };
    if new.is_nan() {
        return err(ERR_NAN);
    }
    if let Some(cur) = current {
        if (f.lt && new >= cur) || (f.gt && new <= cur) {
            return Frame::Null;
        }
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_ZSETS, WHAT) {
        return f;
    }
    let seen = new_key_seen(locked.get(key), live.is_some(), Kind::ZSet);
    let hlc = ctx.clock.now();
    // A counter on the member's score when it is there; from nothing (the zero
    // version) when this site never held a score for it; on a reset of the old
    // score (its rank, counting from 0) when it was removed: every site that
    // increments the member next names the same base, so their first increments
    // add up. The new score as a register when a number would not stay finite.
    let held = locked.get(key).and_then(|r| r.zset()?.scores.fields.get(member));
    let counter = match (held, current) {
        (None, None) => Some((FloatBase::on(&Version::zero(), 0.0), 0.0)),
        (Some(field), None) => Some((FloatBase { reset: true, ..FloatBase::on(&field.rank(), 0.0) }, 0.0)),
        (Some(field), Some(cur)) => match &field.state {
            FieldState::Bytes(_) => Some((FloatBase::on(&field.version, cur), 0.0)),
            FieldState::Float(c) => {
                let base = FloatBase { value: c.base, reset: c.reset, ..FloatBase::on(&field.version, 0.0) };
                Some((base, c.total_of(ctx.site)))
            }
            _ => None,
        },
        _ => None,
    };
    let op = match counter {
        Some((base, site_total)) if (site_total + delta).is_finite() && new.is_finite() => Op::ZIncr {
            key: key.to_vec(),
            member: member.to_vec(),
            delta: Float(delta),
            total: Float(site_total + delta),
            base,
            seen,
        },
        _ => Op::ZAdd {
            key: key.to_vec(),
            members: vec![ScoredMember { member: member.to_vec(), score: Score(new) }],
            seen,
        },
    };
    if let Err(e) = locked.admit([&op]) {
        return refused(e);
    }
    ctx.write_at(&mut locked, hlc, op);
    ctx.notify(Event::ZIncr, key);
    // The score as the member now holds it: the totals added in site-id order.
    let held = locked.get(key).and_then(|r| r.zscore(member)).unwrap_or(new);
    Frame::Double(held)
}

pub fn zrem(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::ZSet) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let mut members: Vec<Vec<u8>> = args[2..].iter().filter(|m| live.zscore(m).is_some()).map(|m| m.to_vec()).collect();
    members.sort();
    members.dedup();
    if members.is_empty() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_ZSETS, WHAT) {
        return f;
    }
    Frame::Integer(write_remove(ctx, &mut locked, key, members, Event::ZRem))
}

pub fn zscore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::ZSet, |r| r.and_then(|r| r.zscore(&args[2])).map_or(Frame::Null, Frame::Double))
        .unwrap_or_else(|f| f)
}

pub fn zmscore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        Frame::Array(args[2..].iter().map(|m| r.and_then(|r| r.zscore(m)).map_or(Frame::Null, Frame::Double)).collect())
    })
    .unwrap_or_else(|f| f)
}

pub fn zcard(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    read_of(ctx, &args[1], Kind::ZSet, |r| Frame::Integer(r.and_then(Record::zset_len).unwrap_or(0) as i64))
        .unwrap_or_else(|f| f)
}

pub fn zcount(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let range = match ScoreRange::parse(&args[2], &args[3]) {
        Ok(r) => r,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        Frame::Integer(ranked(r).iter().filter(|(_, s)| range.holds(*s)).count() as i64)
    })
    .unwrap_or_else(|f| f)
}

pub fn zlexcount(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let range = match LexRange::parse(&args[2], &args[3]) {
        Ok(r) => r,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        Frame::Integer(ranked(r).iter().filter(|(m, _)| range.holds(m)).count() as i64)
    })
    .unwrap_or_else(|f| f)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    Rank,
    Score,
    Lex,
}

/// A parsed range of ZRANGE and its family.
struct Range {
    by: By,
    rev: bool,
    with_scores: bool,
    /// LIMIT offset count (`(0, -1)` when not given; a count of -1 is all).
    limit: (i64, i64),
    rank: (i64, i64),
    score: Option<ScoreRange>,
    lex: Option<LexRange>,
}

/// Parses `min max [options]` (`args` from `min`), as Redis 7.0's
/// `zrangeGenericCommand` does: `by` and `rev` preset by the command's name, or
/// `None` where options may set them; `store`: ZRANGESTORE (no WITHSCORES).
fn parse_range(args: &[Bytes], by: Option<By>, rev: Option<bool>, store: bool) -> Result<Range, Frame> {
    let (mut by_opt, mut rev_opt, mut with_scores, mut offset, mut count) = (by, rev, false, 0i64, -1i64);
    let mut j = 2;
    while j < args.len() {
        let left = args.len() - j - 1;
        match args[j].to_ascii_lowercase().as_slice() {
            b"withscores" if !store => with_scores = true,
            b"limit" if left >= 2 => {
                offset = parse_i64(&args[j + 1])?;
                count = parse_i64(&args[j + 2])?;
                j += 2;
            }
            b"rev" if rev_opt.is_none() => rev_opt = Some(true),
            b"bylex" if by_opt.is_none() => by_opt = Some(By::Lex),
            b"byscore" if by_opt.is_none() => by_opt = Some(By::Score),
            _ => return Err(err(ERR_SYNTAX)),
        }
        j += 1;
    }
    let (by, rev) = (by_opt.unwrap_or(By::Rank), rev_opt.unwrap_or(false));
    // A count of -1 is Redis's "not given": no error with a rank range.
    let limit = (offset, count);
    if count != -1 && by == By::Rank {
        return Err(err("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"));
    }
    if with_scores && by == By::Lex {
        return Err(err("ERR syntax error, WITHSCORES not supported in combination with BYLEX"));
    }
    let (min, max) = if rev && by != By::Rank { (&args[1], &args[0]) } else { (&args[0], &args[1]) };
    let mut range = Range { by, rev, with_scores, limit, rank: (0, 0), score: None, lex: None };
    match by {
        By::Rank => range.rank = (parse_i64(min)?, parse_i64(max)?),
        By::Score => range.score = Some(ScoreRange::parse(min, max)?),
        By::Lex => range.lex = Some(LexRange::parse(min, max)?),
    }
    Ok(range)
}

impl Range {
    /// The members of `all` (by score then member) in the range, in reply order.
    fn select<'a>(&self, all: &[(&'a [u8], f64)]) -> Vec<(&'a [u8], f64)> {
        let ordered: Vec<(&[u8], f64)> = if self.rev { all.iter().rev().copied().collect() } else { all.to_vec() };
        match self.by {
            By::Rank => match rank_range(self.rank.0, self.rank.1, ordered.len()) {
                Some((a, b)) => ordered[a..=b].to_vec(),
                None => Vec::new(),
            },
            By::Score | By::Lex => {
                let (offset, count) = self.limit;
                if offset < 0 || (offset > 0 && offset as usize >= all.len()) {
                    return Vec::new();
                }
                let held = ordered.into_iter().filter(|(m, s)| match self.by {
                    By::Score => self.score.as_ref().is_some_and(|r| r.holds(*s)),
                    _ => self.lex.as_ref().is_some_and(|r| r.holds(m)),
                });
                let held = held.skip(offset as usize);
                match usize::try_from(count) {
                    Ok(n) => held.take(n).collect(),
                    Err(_) => held.collect(),
                }
            }
        }
    }
}

fn range_command(ctx: &mut Ctx<'_>, args: &[Bytes], by: Option<By>, rev: Option<bool>) -> Frame {
    let range = match parse_range(&args[2..], by, rev, false) {
        Ok(r) => r,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        let selected = range.select(&ranked(r));
        if range.with_scores {
            with_scores(&selected)
        } else {
            names(&selected)
        }
    })
    .unwrap_or_else(|f| f)
}

pub fn zrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    range_command(ctx, args, None, None)
}

pub fn zrevrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    range_command(ctx, args, Some(By::Rank), Some(true))
}

pub fn zrangebyscore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    range_command(ctx, args, Some(By::Score), Some(false))
}

pub fn zrevrangebyscore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    range_command(ctx, args, Some(By::Score), Some(true))
}

pub fn zrangebylex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    range_command(ctx, args, Some(By::Lex), Some(false))
}

pub fn zrevrangebylex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    range_command(ctx, args, Some(By::Lex), Some(true))
}

/// Writes `members` to `dst`, replacing what it holds (expiry gone), or deletes it
/// when there are none; `event` on success. Replies the count.
fn store_result(
    ctx: &mut Ctx<'_>,
    locked: &mut Locked<'_>,
    dst: &[u8],
    members: Vec<(Vec<u8>, f64)>,
    event: Event,
) -> Frame {
    let n = members.len() as i64;
    if members.is_empty() {
        if locked.live(dst, ctx.now_ms).is_some() {
            let op = super::delete_op(locked.get(dst), dst);
            ctx.write(locked, op);
            ctx.notify(Event::Del, dst);
        }
        return Frame::Integer(0);
    }
    let ops = Held::ZSet(members).write_ops(dst, locked.get(dst), None);
    if let Err(f) = ctx.needs_format_of(&ops) {
        return f;
    }
    if let Err(e) = locked.admit(&ops) {
        return refused(e);
    }
    for op in ops {
        ctx.write(locked, op);
    }
    ctx.notify(event, dst);
    Frame::Integer(n)
}

/// ZRANGESTORE dst src min max [BYSCORE|BYLEX] [REV] [LIMIT offset count].
pub fn zrangestore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let range = match parse_range(&args[3..], None, None, true) {
        Ok(r) => r,
        Err(f) => return f,
    };
    let (dst, src) = (&args[1], &args[2]);
    let mut locked = ctx.store.lock(&[dst, src]);
    let members: Vec<(Vec<u8>, f64)> = match live_of(locked.get(src), ctx.now_ms, Kind::ZSet) {
        Ok(r) => range.select(&ranked(r)).into_iter().map(|(m, s)| (m.to_vec(), s)).collect(),
        Err(f) => return f,
    };
    store_result(ctx, &mut locked, dst, members, Event::ZRangeStore)
}

pub fn zrank(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    rank_of(ctx, args, false)
}

pub fn zrevrank(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    rank_of(ctx, args, true)
}

fn rank_of(ctx: &mut Ctx<'_>, args: &[Bytes], rev: bool) -> Frame {
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        let all = ranked(r);
        match all.iter().position(|(m, _)| *m == args[2].as_ref()) {
            Some(i) if rev => Frame::Integer((all.len() - 1 - i) as i64),
            Some(i) => Frame::Integer(i as i64),
            None => Frame::Null,
        }
    })
    .unwrap_or_else(|f| f)
}

pub fn zpopmin(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    pop(ctx, args, false)
}

pub fn zpopmax(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    pop(ctx, args, true)
}

/// ZPOPMIN/ZPOPMAX key [count].
fn pop(ctx: &mut Ctx<'_>, args: &[Bytes], max: bool) -> Frame {
    if args.len() > 3 {
        return err(ERR_SYNTAX);
    }
    let count = match args.get(2).map(|c| crate::resp::parse_integer(c)) {
        None => None,
        Some(Some(n)) if n >= 0 => Some(n as usize),
        Some(_) => return err(ERR_NOT_POSITIVE),
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::ZSet) {
        Ok(Some(_)) if count == Some(0) => return Frame::Array(Vec::new()),
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Array(Vec::new()),
        Err(f) => return f,
    };
    let mut all = ranked(Some(live));
    if max {
        all.reverse();
    }
    let popped: Vec<(Vec<u8>, f64)> = all.iter().take(count.unwrap_or(1)).map(|(m, s)| (m.to_vec(), *s)).collect();
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_ZSETS, WHAT) {
        return f;
    }
    let reply = match count {
        None => Frame::Array(vec![bulk(&popped[0].0), Frame::Double(popped[0].1)]),
        Some(_) => Frame::Pairs(popped.iter().map(|(m, s)| (bulk(m), Frame::Double(*s))).collect()),
    };
    let event = if max { Event::ZPopMax } else { Event::ZPopMin };
    write_remove(ctx, &mut locked, key, popped.into_iter().map(|(m, _)| m).collect(), event);
    reply
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algebra {
    Union,
    Inter,
    Diff,
}

#[derive(Clone, Copy)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

fn aggregate(into: f64, value: f64, how: Aggregate) -> f64 {
    match how {
        // inf + -inf is NaN: Redis takes it as 0.
        Aggregate::Sum => Some(into + value).filter(|v| !v.is_nan()).unwrap_or(0.0),
        Aggregate::Min => into.min(value),
        Aggregate::Max => into.max(value),
    }
}

/// Z(UNION|INTER|DIFF)STORE dst numkeys key [key …] [WEIGHTS w …] [AGGREGATE
/// SUM|MIN|MAX]: the inputs may be sets too (every member scored 1).
fn algebra_store(ctx: &mut Ctx<'_>, args: &[Bytes], op: Algebra, name: &str, event: Event) -> Frame {
    let n = match parse_i64(&args[2]) {
        Ok(n) if n < 1 => return err(&format!("ERR at least 1 input key is needed for '{name}' command")),
        Ok(n) => n as usize,
        Err(f) => return f,
    };
    if n > args.len() - 3 {
        return err(ERR_SYNTAX);
    }
    let dst = &args[1];
    let keys = &args[3..3 + n];
    let mut all_keys: Vec<&Bytes> = keys.iter().collect();
    all_keys.push(dst);
    let mut locked = ctx.store.lock(&all_keys);
    // Every input's type first, as Redis checks them before the options.
    let mut inputs: Vec<Vec<(Vec<u8>, f64)>> = Vec::with_capacity(n);
    for key in keys {
        let rec = locked.get(key).filter(|r| r.is_live(ctx.now_ms));
        let members = match rec.map(Record::kind) {
            None => Vec::new(),
            Some(Kind::ZSet) => ranked(rec).into_iter().map(|(m, s)| (m.to_vec(), s)).collect(),
            Some(Kind::Set) => {
                rec.and_then(Record::set_members).map(|m| m.map(|m| (m.to_vec(), 1.0)).collect()).unwrap_or_default()
            }
            Some(_) => return err(ERR_WRONGTYPE),
        };
        inputs.push(members);
    }
    let mut weights = vec![1.0; n];
    let mut how = Aggregate::Sum;
    let mut j = 3 + n;
    while j < args.len() {
        let left = args.len() - j;
        match args[j].to_ascii_lowercase().as_slice() {
            b"weights" if op != Algebra::Diff && left > n => {
                for (i, w) in weights.iter_mut().enumerate() {
                    match parse_score(&args[j + 1 + i]) {
                        Some(v) => *w = v,
                        None => return err("ERR weight value is not a float"),
                    }
                }
                j += 1 + n;
            }
            b"aggregate" if op != Algebra::Diff && left >= 2 => {
                how = match args[j + 1].to_ascii_lowercase().as_slice() {
                    b"sum" => Aggregate::Sum,
                    b"min" => Aggregate::Min,
                    b"max" => Aggregate::Max,
                    _ => return err(ERR_SYNTAX),
                };
                j += 2;
            }
            _ => return err(ERR_SYNTAX),
        }
    }
    let weighted = |score: f64, w: f64| Some(score * w).filter(|v| !v.is_nan()).unwrap_or(0.0);
    // Union and intersection aggregate the smallest input first, as Redis
    // orders them (a stable sort: equal sizes keep their order). The order
    // shows where inf + -inf meets: Redis takes that NaN as 0.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let result: BTreeMap<Vec<u8>, f64> = match op {
        Algebra::Union => {
            let mut out: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
            for &i in &order {
                for (m, s) in &inputs[i] {
                    let v = weighted(*s, weights[i]);
                    out.entry(m.clone()).and_modify(|acc| *acc = aggregate(*acc, v, how)).or_insert(v);
                }
            }
            out
        }
        Algebra::Inter => {
            let maps: Vec<BTreeMap<&[u8], f64>> =
                inputs.iter().map(|m| m.iter().map(|(k, s)| (k.as_slice(), *s)).collect()).collect();
            let first = order[0];
            let mut out = BTreeMap::new();
            'members: for (m, s) in &inputs[first] {
                let mut acc = weighted(*s, weights[first]);
                for &i in &order[1..] {
                    match maps[i].get(m.as_slice()) {
                        Some(v) => acc = aggregate(acc, weighted(*v, weights[i]), how),
                        None => continue 'members,
                    }
                }
                out.insert(m.clone(), acc);
            }
            out
        }
        Algebra::Diff => {
            let others: std::collections::BTreeSet<&[u8]> =
                inputs[1..].iter().flatten().map(|(m, _)| m.as_slice()).collect();
            inputs[0].iter().filter(|(m, _)| !others.contains(m.as_slice())).cloned().collect()
        }
    };
    store_result(ctx, &mut locked, dst, result.into_iter().collect(), event)
}

pub fn zunionstore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra_store(ctx, args, Algebra::Union, "zunionstore", Event::ZUnionStore)
}

pub fn zinterstore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra_store(ctx, args, Algebra::Inter, "zinterstore", Event::ZInterStore)
}

pub fn zdiffstore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    algebra_store(ctx, args, Algebra::Diff, "zdiffstore", Event::ZDiffStore)
}

/// ZREMRANGEBYSCORE / ZREMRANGEBYRANK / ZREMRANGEBYLEX key min max.
fn remove_range(ctx: &mut Ctx<'_>, args: &[Bytes], by: By) -> Frame {
    let range = match by {
        By::Rank => match (parse_i64(&args[2]), parse_i64(&args[3])) {
            (Ok(a), Ok(b)) => {
                Range { by, rev: false, with_scores: false, limit: (0, -1), rank: (a, b), score: None, lex: None }
            }
            (Err(f), _) | (_, Err(f)) => return f,
        },
        By::Score => match ScoreRange::parse(&args[2], &args[3]) {
            Ok(s) => {
                Range { by, rev: false, with_scores: false, limit: (0, -1), rank: (0, 0), score: Some(s), lex: None }
            }
            Err(f) => return f,
        },
        By::Lex => match LexRange::parse(&args[2], &args[3]) {
            Ok(l) => {
                Range { by, rev: false, with_scores: false, limit: (0, -1), rank: (0, 0), score: None, lex: Some(l) }
            }
            Err(f) => return f,
        },
    };
    let key = &args[1];
    let mut locked = ctx.store.lock(&[key]);
    let live = match live_of(locked.get(key), ctx.now_ms, Kind::ZSet) {
        Ok(Some(r)) => r,
        Ok(None) => return Frame::Integer(0),
        Err(f) => return f,
    };
    let members: Vec<Vec<u8>> = range.select(&ranked(Some(live))).into_iter().map(|(m, _)| m.to_vec()).collect();
    if members.is_empty() {
        return Frame::Integer(0);
    }
    if let Err(f) = ctx.needs_format(FORMAT_VERSION_ZSETS, WHAT) {
        return f;
    }
    let event = match by {
        By::Rank => Event::ZRemRangeByRank,
        By::Score => Event::ZRemRangeByScore,
        By::Lex => Event::ZRemRangeByLex,
    };
    Frame::Integer(write_remove(ctx, &mut locked, key, members, event))
}

pub fn zremrangebyscore(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    remove_range(ctx, args, By::Score)
}

pub fn zremrangebyrank(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    remove_range(ctx, args, By::Rank)
}

pub fn zremrangebylex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    remove_range(ctx, args, By::Lex)
}

/// ZRANDMEMBER key [count [WITHSCORES]], Redis 7.0's rules.
pub fn zrandmember(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    let count = match args.get(2).map(|c| parse_i64(c)) {
        None => None,
        Some(Ok(i64::MIN)) => {
            return err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
        }
        Some(Ok(n)) => Some(n),
        Some(Err(f)) => return f,
    };
    let with_scores = match args.get(3) {
        None => false,
        Some(a) if args.len() == 4 && a.eq_ignore_ascii_case(b"withscores") => true,
        Some(_) => return err(ERR_SYNTAX),
    };
    if with_scores && count.is_some_and(|n| !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&n)) {
        return err("ERR value is out of range");
    }
    let seed = ctx.clock.now().as_u64();
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        let all = ranked(r);
        match count {
            None if all.is_empty() => Frame::Null,
            None => bulk(all[super::random_picks(all.len(), 1, seed)[0]].0),
            Some(n) => {
                let picked: Vec<(&[u8], f64)> =
                    super::random_picks(all.len(), n, seed).into_iter().map(|i| all[i]).collect();
                if with_scores {
                    self::with_scores(&picked)
                } else {
                    names(&picked)
                }
            }
        }
    })
    .unwrap_or_else(|f| f)
}

/// ZSCAN key cursor [MATCH pattern] [COUNT count]: the whole sorted set in one step
/// (cursor 0), members and their scores as text, as Redis answers for a small one.
pub fn zscan(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Frame {
    if std::str::from_utf8(&args[2]).ok().and_then(|s| s.parse::<u64>().ok()).is_none() {
        return err("ERR invalid cursor");
    }
    let pattern = match super::keys::scan_options(&args[3..], false) {
        Ok(o) => o.pattern,
        Err(f) => return f,
    };
    read_of(ctx, &args[1], Kind::ZSet, |r| {
        let mut out = Vec::new();
        for (m, s) in ranked(r) {
            if pattern.as_ref().is_none_or(|p| crate::store::glob::glob_match(p, m)) {
                out.push(bulk(m));
                out.push(Frame::Bulk(Bytes::from(crate::resp::format_double(s))));
            }
        }
        Frame::Array(vec![Frame::Bulk(Bytes::from_static(b"0")), Frame::Array(out)])
    })
    .unwrap_or_else(|f| f)
}
