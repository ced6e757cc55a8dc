//! Keyspace notifications, as Redis 7.0 sends them: for every change to a key, a
//! message on `__keyspace@<db>__:<key>` (payload: the event) and one on
//! `__keyevent@<db>__:<event>` (payload: the key), published on the data port's
//! [`Hub`]; which ones is `notify-keyspace-events` (`CONFIG SET`, or
//! `pubsub.notify_keyspace_events` in the config file), in Redis's letters.
//!
//! [`Notifier::notify`] is the one hook: a local write calls it from its command
//! (with the command's event, under the key's lock, as Redis does from the
//! command), a change applied from another site calls it through
//! [`Notifier::applied`] (the entry's events), and the expiry cycle for each key it
//! finds expired. Notifications are local to the node, like `PUBLISH`: each site
//! notifies its own subscribers of every change it applies, whoever made it.
//!
//! An entry from another site says what changed, not which command changed it, so
//! its events are those of the change: a value written is `set` (`APPEND`,
//! `SETRANGE`, `INCRBYFLOAT`, a `RENAME`'s destination at the origin), a delete is
//! `del` (a `RENAME`'s source, each key of a `FLUSHDB`), an expiry `expire` or
//! `persist` (`del` when it ends the key), an increment `incrby`; hash fields set
//! are `hset`, removed `hdel` (then `del` when no field is left), incremented
//! `hincrby`; set members added are `sadd`, removed `srem` (then `del` when none is
//! left); a whole hash or set deleted `del`; `new` comes first when the key was
//! absent.

use crate::pubsub::Hub;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::{AtomicU32, Ordering};
use xsite_schemas::Op;

/// Redis's `NOTIFY_*` bits, one per letter.
pub mod class {
    pub const KEYSPACE: u32 = 1 << 0; // K
    pub const KEYEVENT: u32 = 1 << 1; // E
    pub const GENERIC: u32 = 1 << 2; // g
    pub const STRING: u32 = 1 << 3; // $
    pub const LIST: u32 = 1 << 4; // l
    pub const SET: u32 = 1 << 5; // s
    pub const HASH: u32 = 1 << 6; // h
    pub const ZSET: u32 = 1 << 7; // z
    pub const EXPIRED: u32 = 1 << 8; // x
    pub const EVICTED: u32 = 1 << 9; // e
    pub const STREAM: u32 = 1 << 10; // t
    pub const KEY_MISS: u32 = 1 << 11; // m
    pub const MODULE: u32 = 1 << 12; // d
    pub const NEW: u32 = 1 << 13; // n
    /// `A`: every class but `m` and `n`.
    pub const ALL: u32 = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;
}

/// Redis's error for a letter it does not know (the text after `ERR CONFIG SET
/// failed (possibly related to argument 'notify-keyspace-events') - `).
pub const ERR_BAD_CLASS: &str = "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.";

/// `notify-keyspace-events` as given (`"KEA"`) to its bits; `Err` for a letter
/// Redis does not accept.
pub fn parse_flags(text: &[u8]) -> Result<u32, &'static str> {
    text.iter().try_fold(0, |flags, c| {
        let bit = match c {
            b'A' => class::ALL,
            b'g' => class::GENERIC,
            b'$' => class::STRING,
            b'l' => class::LIST,
            b's' => class::SET,
            b'h' => class::HASH,
            b'z' => class::ZSET,
            b'x' => class::EXPIRED,
            b'e' => class::EVICTED,
            b'K' => class::KEYSPACE,
            b'E' => class::KEYEVENT,
            b't' => class::STREAM,
            b'm' => class::KEY_MISS,
            b'd' => class::MODULE,
            b'n' => class::NEW,
            _ => return Err(ERR_BAD_CLASS),
        };
        Ok(flags | bit)
    })
}

/// The bits as `CONFIG GET` shows them (Redis's `keyspaceEventsFlagsToString`).
pub fn format_flags(flags: u32) -> String {
    let mut out = String::new();
    if flags & class::ALL == class::ALL {
        out.push('A');
    } else {
        let letters = [
            (class::GENERIC, 'g'),
            (class::STRING, '$'),
            (class::LIST, 'l'),
            (class::SET, 's'),
            (class::HASH, 'h'),
            (class::ZSET, 'z'),
            (class::EXPIRED, 'x'),
            (class::EVICTED, 'e'),
            (class::STREAM, 't'),
            (class::MODULE, 'd'),
            (class::NEW, 'n'),
        ];
        out.extend(letters.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, c)| *c));
    }
    for (bit, c) in [(class::KEYSPACE, 'K'), (class::KEYEVENT, 'E'), (class::KEY_MISS, 'm')] {
        if flags & bit != 0 {
            out.push(c);
        }
    }
    out
}

/// What happened to a key: Redis 7.0's event names for the commands there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Set,
    Del,
    Expire,
    Expired,
    Persist,
    IncrBy,
    IncrByFloat,
    Append,
    SetRange,
    /// SETBIT, and BITFIELD when it changed a field.
    SetBit,
    RenameFrom,
    RenameTo,
    /// COPY's destination.
    CopyTo,
    MoveFrom,
    MoveTo,
    Restore,
    /// HSET HMSET HSETNX (class `h`).
    HSet,
    HDel,
    HIncrBy,
    HIncrByFloat,
    /// SADD, and SMOVE's destination (class `s`).
    SAdd,
    /// SREM, and SMOVE's source.
    SRem,
    SPop,
    SInterStore,
    SUnionStore,
    SDiffStore,
    /// ZADD (class `z`).
    ZAdd,
    /// ZINCRBY, and ZADD … INCR.
    ZIncr,
    ZRem,
    ZRemRangeByScore,
    ZRemRangeByRank,
    ZRemRangeByLex,
    ZPopMin,
    ZPopMax,
    ZRangeStore,
    ZUnionStore,
    ZInterStore,
    ZDiffStore,
    /// LPUSH LPUSHX, LMOVE's destination at the left (class `l`).
    LPush,
    /// RPUSH RPUSHX, LMOVE's destination at the right; and a list put applied
    /// from another site (its entry does not say which command made it).
    RPush,
    LPop,
    RPop,
    LSet,
    LRem,
    LTrim,
    LInsert,
    /// SORT … STORE's destination.
    SortStore,
    /// A key that did not exist was created (class `n`, not in `A`).
    New,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Set => "set",
            Event::Del => "del",
            Event::Expire => "expire",
            Event::Expired => "expired",
            Event::Persist => "persist",
            Event::IncrBy => "incrby",
            Event::IncrByFloat => "incrbyfloat",
            Event::Append => "append",
            Event::SetRange => "setrange",
            Event::SetBit => "setbit",
            Event::RenameFrom => "rename_from",
            Event::RenameTo => "rename_to",
            Event::CopyTo => "copy_to",
            Event::MoveFrom => "move_from",
            Event::MoveTo => "move_to",
            Event::Restore => "restore",
            Event::HSet => "hset",
            Event::HDel => "hdel",
            Event::HIncrBy => "hincrby",
            Event::HIncrByFloat => "hincrbyfloat",
            Event::SAdd => "sadd",
            Event::SRem => "srem",
            Event::SPop => "spop",
            Event::SInterStore => "sinterstore",
            Event::SUnionStore => "sunionstore",
            Event::SDiffStore => "sdiffstore",
            Event::ZAdd => "zadd",
            Event::ZIncr => "zincr",
            Event::ZRem => "zrem",
            Event::ZRemRangeByScore => "zremrangebyscore",
            Event::ZRemRangeByRank => "zremrangebyrank",
            Event::ZRemRangeByLex => "zremrangebylex",
            Event::ZPopMin => "zpopmin",
            Event::ZPopMax => "zpopmax",
            Event::ZRangeStore => "zrangestore",
            Event::ZUnionStore => "zunionstore",
            Event::ZInterStore => "zinterstore",
            Event::ZDiffStore => "zdiffstore",
            Event::LPush => "lpush",
            Event::RPush => "rpush",
            Event::LPop => "lpop",
            Event::RPop => "rpop",
            Event::LSet => "lset",
            Event::LRem => "lrem",
            Event::LTrim => "ltrim",
            Event::LInsert => "linsert",
            Event::SortStore => "sortstore",
            Event::New => "new",
        }
    }

    /// The class that must be enabled for it.
    pub fn class(self) -> u32 {
        match self {
            Event::Set | Event::IncrBy | Event::IncrByFloat | Event::Append | Event::SetRange | Event::SetBit => {
                class::STRING
            }
            Event::Del
            | Event::Expire
            | Event::Persist
            | Event::RenameFrom
            | Event::RenameTo
            | Event::CopyTo
            | Event::MoveFrom
            | Event::MoveTo
            | Event::Restore => class::GENERIC,
            Event::HSet | Event::HDel | Event::HIncrBy | Event::HIncrByFloat => class::HASH,
            Event::SAdd | Event::SRem | Event::SPop | Event::SInterStore | Event::SUnionStore | Event::SDiffStore => {
                class::SET
            }
            Event::ZAdd
            | Event::ZIncr
            | Event::ZRem
            | Event::ZRemRangeByScore
            | Event::ZRemRangeByRank
            | Event::ZRemRangeByLex
            | Event::ZPopMin
            | Event::ZPopMax
            | Event::ZRangeStore
            | Event::ZUnionStore
            | Event::ZInterStore
            | Event::ZDiffStore => class::ZSET,
            Event::LPush
            | Event::RPush
            | Event::LPop
            | Event::RPop
            | Event::LSet
            | Event::LRem
            | Event::LTrim
            | Event::LInsert
            | Event::SortStore => class::LIST,
            Event::Expired => class::EXPIRED,
            Event::New => class::NEW,
        }
    }
}

/// The node's keyspace notifications: the flags in force and the hub they go to.
#[derive(Debug)]
pub struct Notifier {
    hub: Hub,
    flags: AtomicU32,
}

impl Notifier {
    pub fn new(hub: Hub, flags: u32) -> Notifier {
        Notifier { hub, flags: AtomicU32::new(flags) }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    pub fn set_flags(&self, flags: u32) {
        self.flags.store(flags, Ordering::Relaxed);
    }

    /// Whether events of `class` would be published now (enabled, with `K` or
    /// `E`, and someone subscribed; `u32::MAX`: of any class): callers skip
    /// looking up what an event needs otherwise.
    pub fn wants(&self, class: u32) -> bool {
        let flags = self.flags();
        flags & class != 0 && flags & (class::KEYSPACE | class::KEYEVENT) != 0 && self.hub.has_subscribers()
    }

    /// The hook: `event` happened to `key` of database `db`. Publishes nothing
    /// unless the event's class and `K` or `E` are enabled and someone subscribes.
    pub fn notify(&self, db: usize, key: &[u8], event: Event) {
        if !self.wants(event.class()) {
            return;
        }
        let flags = self.flags();
        let name = event.name();
        if flags & class::KEYSPACE != 0 {
            let channel = channel(&format!("__keyspace@{db}__:"), key);
            self.hub.publish(channel, Bytes::from_static(name.as_bytes()));
        }
        if flags & class::KEYEVENT != 0 {
            let channel = channel(&format!("__keyevent@{db}__:"), name.as_bytes());
            self.hub.publish(channel, Bytes::copy_from_slice(key));
        }
    }

    /// An entry from another site changed `op`'s key in `db`: its events (see the
    /// module docs). `live_before`/`live_after`: whether the key was visible before
    /// and after the change.
    pub fn applied(&self, db: usize, op: &Op, live_before: bool, live_after: bool) {
        let Some(key) = op.key() else { return };
        let created = !live_before && live_after;
        let events: &[Event] = match op {
            Op::Put { expire_at_ms: Some(_), keep_ttl: false, .. } if created => {
                &[Event::New, Event::Set, Event::Expire]
            }
            Op::Put { expire_at_ms: Some(_), keep_ttl: false, .. } if live_after => &[Event::Set, Event::Expire],
            Op::Put { .. } | Op::Incr { .. } if created => &[Event::New, applied_write(op)],
            Op::Put { .. } | Op::Incr { .. } if live_after => &[applied_write(op)],
            Op::Expire { expire_at_ms: Some(_), .. } if live_before && live_after => &[Event::Expire],
            Op::Expire { expire_at_ms: None, .. } if live_before && live_after => &[Event::Persist],
            Op::Delete { .. }
            | Op::Expire { .. }
            | Op::HClear { .. }
            | Op::SClear { .. }
            | Op::ZClear { .. }
            | Op::LClear { .. }
                if live_before && !live_after =>
            {
                &[Event::Del]
            }
            Op::LPut { .. } if created => &[Event::New, Event::RPush],
            Op::LPut { .. } if live_after => &[Event::RPush],
            Op::LRem { .. } if live_before && !live_after => &[Event::LRem, Event::Del],
            Op::LRem { .. } if live_after => &[Event::LRem],
            Op::SAdd { .. } if created => &[Event::New, Event::SAdd],
            Op::SAdd { .. } if live_after => &[Event::SAdd],
            Op::SRem { .. } if live_before && !live_after => &[Event::SRem, Event::Del],
            Op::SRem { .. } if live_after => &[Event::SRem],
            Op::ZAdd { .. } if created => &[Event::New, Event::ZAdd],
            Op::ZAdd { .. } if live_after => &[Event::ZAdd],
            Op::ZIncr { .. } if created => &[Event::New, Event::ZIncr],
            Op::ZIncr { .. } if live_after => &[Event::ZIncr],
            Op::ZRem { .. } if live_before && !live_after => &[Event::ZRem, Event::Del],
            Op::ZRem { .. } if live_after => &[Event::ZRem],
            Op::HSet { .. } if created => &[Event::New, Event::HSet],
            Op::HSet { .. } if live_after => &[Event::HSet],
            Op::HIncr { .. } if created => &[Event::New, Event::HIncrBy],
            Op::HIncr { .. } if live_after => &[Event::HIncrBy],
            Op::HIncrFloat { .. } if created => &[Event::New, Event::HIncrByFloat],
            Op::HIncrFloat { .. } if live_after => &[Event::HIncrByFloat],
            Op::HDel { .. } if live_before && !live_after => &[Event::HDel, Event::Del],
            Op::HDel { .. } if live_after => &[Event::HDel],
            _ => &[],
        };
        for event in events {
            self.notify(db, key, *event);
        }
    }
}

fn applied_write(op: &Op) -> Event {
    match op {
        Op::Incr { .. } => Event::IncrBy,
        _ => Event::Set,
    }
}

fn channel(prefix: &str, name: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() + name.len());
    out.put_slice(prefix.as_bytes());
    out.put_slice(name);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Kind;
    use crate::resp::Frame;

    #[test]
    fn flags_read_and_show_as_redis_does() {
        let show = |s: &str| format_flags(parse_flags(s.as_bytes()).unwrap());
        assert_eq!(show("KEA"), "AKE");
        assert_eq!(show("Kgx"), "gxK");
        assert_eq!(show("AKEmn"), "AKEm", "A hides n, as Redis's string does");
        assert_eq!(show("KElshzxetdg$"), "AKE");
        assert_eq!(show(""), "");
        assert_eq!(show("E$n"), "$nE");
        assert_eq!(parse_flags(b"kea"), Err(ERR_BAD_CLASS));
        assert_eq!(parse_flags(b"K E"), Err(ERR_BAD_CLASS));
    }

    #[test]
    fn only_enabled_classes_reach_subscribers() {
        let hub = Hub::default();
        let notifier = Notifier::new(hub.clone(), parse_flags(b"Kg").unwrap());
        let mut subs = hub.subscriber(1);
        subs.subscribe(Kind::Pattern, &[Bytes::from_static(b"__key*")]);
        notifier.notify(3, b"k", Event::Set);
        assert!(subs.take().is_empty(), "$ is off");
        notifier.notify(3, b"k", Event::Del);
        let got = subs.take();
        assert_eq!(got.len(), 1);
        let Frame::Push(parts) = &got[0] else { panic!("{got:?}") };
        assert_eq!(parts[2], Frame::bulk("__keyspace@3__:k"));
        assert_eq!(parts[3], Frame::bulk("del"));
        notifier.set_flags(parse_flags(b"g").unwrap());
        notifier.notify(3, b"k", Event::Del);
        assert!(subs.take().is_empty(), "neither K nor E");
    }

    #[test]
    fn remote_changes_name_the_change() {
        let hub = Hub::default();
        let notifier = Notifier::new(hub.clone(), parse_flags(b"EAn").unwrap());
        let mut subs = hub.subscriber(1);
        subs.subscribe(Kind::Pattern, &[Bytes::from_static(b"*")]);
        let events = |subs: &mut crate::pubsub::Subscriber| -> Vec<String> {
            subs.take()
                .into_iter()
                .map(|f| match f {
                    Frame::Push(p) => match &p[2] {
                        Frame::Bulk(c) => String::from_utf8_lossy(c).rsplit(':').next().unwrap().to_string(),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let put = |at| Op::Put { key: b"k".to_vec(), value: b"v".to_vec(), expire_at_ms: at, keep_ttl: false };
        notifier.applied(0, &put(None), false, true);
        assert_eq!(events(&mut subs), ["new", "set"]);
        notifier.applied(0, &put(Some(1)), true, true);
        assert_eq!(events(&mut subs), ["set", "expire"]);
        notifier.applied(0, &Op::Delete { key: b"k".to_vec() }, false, false);
        assert!(events(&mut subs).is_empty(), "deleting nothing is no event");
        notifier.applied(0, &Op::Expire { key: b"k".to_vec(), expire_at_ms: None }, true, true);
        assert_eq!(events(&mut subs), ["persist"]);
        notifier.applied(0, &Op::Expire { key: b"k".to_vec(), expire_at_ms: Some(1) }, true, false);
        assert_eq!(events(&mut subs), ["del"]);
    }
}
