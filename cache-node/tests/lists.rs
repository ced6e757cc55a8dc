//! Lists as clients see them, on the real path of a node:
//!
//! - the same commands sent as raw RESP to a real `redis-server` (7.0, Debian's
//!   package) and to a node, every reply compared byte for byte: each list
//!   command's options, indexes and errors, pops with and without a count, LMPOP,
//!   LPOS, LMOVE, SORT of a list and `SORT … STORE` (which makes one), WRONGTYPE
//!   both ways, TYPE, SCAN TYPE, RENAME COPY DEL EXPIRE of a list, keys gone once
//!   popped or trimmed empty, the blocking pops (with something to pop, past their
//!   timeout, inside MULTI), the RESP3 shapes, and the keyspace events;
//! - a seeded random sequence of list, set, string and key commands on a few keys,
//!   compared reply by reply, then every list read back (the seed is printed on
//!   failure; `XSITE_SIM_SEED` replays one);
//! - DUMP and RESTORE of a list, at a node alone (its payload is xsite's, not
//!   Redis's);
//! - two sites on MockCluster, cut from each other while they write: pushes at
//!   both interleave the same way at both, each site's in its order, a pop removes
//!   only what it popped, and a push survives a concurrent `DEL` (which removes
//!   what its site had seen);
//! - lists back whole after a restart, from the snapshot and the WAL;
//! - redis-py (PyPI) across two sites, a work queue;
//! - a pop blocked at one site woken by a push at the other.
//!
//! OBJECT ENCODING of a list is `quicklist` at both, as Redis 7.0 keeps every list.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use xsite_node::node::RunningNode;
use xsite_schemas::SiteId;

use support::redis_server::{differences, events, RedisServer};

const WAIT: Duration = Duration::from_secs(30);
/// Commands of the random sequence.
const RANDOM_OPS: usize = 1500;

const FIXED: &[&str] = &[
    // LPUSH RPUSH LPUSHX RPUSHX LLEN: several values, missing keys, arity
    "LPUSH l c b a",
    "RPUSH l d e",
    "LRANGE l 0 -1",
    "LPUSH l",
    "RPUSH l",
    "LPUSH",
    "LPUSHX nosuch a b",
    "RPUSHX nosuch a",
    "EXISTS nosuch",
    "LPUSHX l z y",
    "RPUSHX l f",
    "LPUSHX l",
    "RPUSHX l",
    "LRANGE l 0 -1",
    "RPUSH l ''",
    "LLEN l",
    "LLEN nosuch",
    "LLEN l x",
    "RPUSH dup a a a",
    "LRANGE dup 0 -1",
    // LRANGE: negative, out of range, start after end, the extremes of i64
    "LRANGE l 0 2",
    "LRANGE l -3 -1",
    "LRANGE l -100 1",
    "LRANGE l 5 100",
    "LRANGE l 100 200",
    "LRANGE l 3 1",
    "LRANGE l -1 -3",
    "LRANGE l -1 -1",
    "LRANGE l 0 9223372036854775807",
    "LRANGE l -9223372036854775808 0",
    "LRANGE l 0 x",
    "LRANGE l 0",
    "LRANGE nosuch 0 -1",
    // LINDEX: negative, out of range, not an integer
    "LINDEX l 0",
    "LINDEX l -1",
    "LINDEX l 3",
    "LINDEX l 100",
    "LINDEX l -100",
    "LINDEX l x",
    "LINDEX l 1.5",
    "LINDEX l -9223372036854775808",
    "LINDEX nosuch 0",
    "LINDEX l",
    // LSET: out of range, a missing key (which LSET does not create)
    "LSET l 0 first",
    "LSET l -1 last",
    "LSET l 100 v",
    "LSET l -100 v",
    "LSET nosuch 0 v",
    "EXISTS nosuch",
    "LSET l x v",
    "LSET nosuch x v",
    "LSET l 0",
    "LRANGE l 0 -1",
    // LPOP RPOP: with and without a count, count 0, negative, a missing key (nil,
    // or a nil array with a count); a list popped empty is gone
    "LPOP l",
    "RPOP l",
    "LPOP l 2",
    "RPOP l 2",
    "LPOP l 0",
    "RPOP l 0",
    "LPOP l -1",
    "RPOP l -1",
    "LPOP l x",
    "LPOP l 1 2",
    "LPOP",
    "LPOP nosuch",
    "RPOP nosuch",
    "LPOP nosuch 2",
    "RPOP nosuch 2",
    "LPOP nosuch 0",
    "LRANGE l 0 -1",
    "LPOP l 100",
    "EXISTS l",
    "LPOP l",
    "RPUSH l a b",
    "RPOP l 9223372036854775807",
    "EXISTS l",
    // LREM: from the head, from the tail, all; a list emptied is gone
    "RPUSH r a b a c a b a",
    "LREM r 2 a",
    "LRANGE r 0 -1",
    "LREM r -1 a",
    "LRANGE r 0 -1",
    "LREM r 0 b",
    "LRANGE r 0 -1",
    "LREM r 0 nosuch",
    "LREM r -5 nosuch",
    "LREM nosuch 0 a",
    "LREM r x a",
    "LREM r 0",
    "LREM r 0 c",
    "LREM r 0 a",
    "EXISTS r",
    // LTRIM: every kind of range, and those that empty the list (and delete it)
    "RPUSH t 0 1 2 3 4 5 6 7 8 9",
    "LTRIM t 1 -2",
    "LRANGE t 0 -1",
    "LTRIM t -5 100",
    "LRANGE t 0 -1",
    "LTRIM t 0 -1",
    "LTRIM t -100 2",
    "LRANGE t 0 -1",
    "LTRIM t 1 1",
    "LRANGE t 0 -1",
    "LTRIM t x 1",
    "LTRIM t 0",
    "LTRIM nosuch 0 1",
    "EXISTS nosuch",
    "LTRIM t 5 1",
    "EXISTS t",
    "RPUSH t a b",
    "LTRIM t 10 20",
    "EXISTS t",
    "RPUSH t a b c",
    "LTRIM t -1 -2",
    "EXISTS t",
    // LINSERT: before and after the first match, a missing pivot (-1), a missing key
    // (0), syntax and arity
    "RPUSH i a b c b",
    "LINSERT i BEFORE b x",
    "LINSERT i AFTER c y",
    "LINSERT i after a z",
    "LINSERT i before b w",
    "LRANGE i 0 -1",
    "LINSERT i AFTER b end",
    "LRANGE i 0 -1",
    "LINSERT i BEFORE nosuch v",
    "LINSERT nosuch BEFORE a v",
    "EXISTS nosuch",
    "LINSERT i MIDDLE a v",
    "LINSERT i BEFORE a",
    "LINSERT i BEFORE a v v",
    "LLEN i",
    // LPOS: RANK (negative from the tail, 0 refused), COUNT (0 for all), MAXLEN
    "RPUSH p a b c 1 2 3 c c",
    "LPOS p c",
    "LPOS p 1",
    "LPOS p c RANK 2",
    "LPOS p c RANK -1",
    "LPOS p c RANK -2",
    "LPOS p c RANK 9",
    "LPOS p c COUNT 2",
    "LPOS p c COUNT 0",
    "LPOS p c RANK -1 COUNT 2",
    "LPOS p c RANK 2 COUNT 0",
    "LPOS p c MAXLEN 2",
    "LPOS p c COUNT 0 MAXLEN 7",
    "LPOS p c RANK -1 MAXLEN 2",
    "LPOS p c MAXLEN 0",
    "LPOS p c rank 1 count 1 maxlen 0",
    "LPOS p c RANK 0",
    "LPOS p c COUNT -1",
    "LPOS p c MAXLEN -1",
    "LPOS p c RANK x",
    "LPOS p c RANK",
    "LPOS p c FOO 1",
    "LPOS p nosuch",
    "LPOS p nosuch COUNT 2",
    "LPOS nosuch a",
    "LPOS nosuch a COUNT 1",
    "LPOS p",
    // LMOVE RPOPLPUSH: every pair of ends, the same key (a rotation), a missing
    // source (nil), WRONGTYPE at either end
    "RPUSH src a b c",
    "LMOVE src dst LEFT RIGHT",
    "LMOVE src dst RIGHT LEFT",
    "LMOVE src dst LEFT LEFT",
    "EXISTS src",
    "LRANGE dst 0 -1",
    "LMOVE dst dst LEFT RIGHT",
    "LRANGE dst 0 -1",
    "LMOVE dst dst RIGHT LEFT",
    "LRANGE dst 0 -1",
    "LMOVE dst dst RIGHT RIGHT",
    "LMOVE dst dst left left",
    "LMOVE nosuch dst LEFT RIGHT",
    "LMOVE dst other UP LEFT",
    "LMOVE dst other LEFT",
    "RPOPLPUSH dst other",
    "RPOPLPUSH nosuch other",
    "RPOPLPUSH other other",
    "LRANGE other 0 -1",
    "LRANGE dst 0 -1",
    "RPOPLPUSH dst",
    "RPUSH one x",
    "LMOVE one one LEFT RIGHT",
    "LMOVE one two LEFT RIGHT",
    "EXISTS one",
    "LRANGE two 0 -1",
    "SET str v",
    "LMOVE dst str LEFT LEFT",
    "LRANGE dst 0 -1",
    "LMOVE str dst LEFT LEFT",
    "LMOVE nosuch str LEFT LEFT",
    "RPOPLPUSH dst str",
    // LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count]: the first non-empty key
    "RPUSH m1 a b c",
    "RPUSH m2 x y",
    "LMPOP 2 nosuch m1 LEFT",
    "LMPOP 2 m1 m2 RIGHT COUNT 10",
    "EXISTS m1",
    "LMPOP 2 m1 m2 LEFT COUNT 1",
    "LMPOP 1 nosuch LEFT",
    "LMPOP 1 nosuch LEFT COUNT 3",
    "LMPOP 0 m2 LEFT",
    "LMPOP -1 m2 LEFT",
    "LMPOP 3 m2 LEFT",
    "LMPOP 1 m2 MIDDLE",
    "LMPOP 1 m2 LEFT COUNT 0",
    "LMPOP 1 m2 LEFT COUNT -1",
    "LMPOP 1 m2 LEFT COUNT",
    "LMPOP 1 m2 LEFT COUNT x",
    "LMPOP 1 m2 LEFT COUNT 1 COUNT 1",
    "LMPOP 1 m2 LEFT FOO",
    "LMPOP x m2 LEFT",
    "LMPOP 1 m2",
    "LMPOP 2 str m2 LEFT",
    "LMPOP 2 nosuch str LEFT",
    "LMPOP 1 m2 left count 5",
    "EXISTS m2",
    // SORT of a list, and SORT ... STORE, which makes a list
    "RPUSH so 3 1 2 10",
    "SORT so",
    "SORT so DESC",
    "SORT so LIMIT 1 2",
    "SORT so LIMIT 0 -1 DESC",
    "SORT so ALPHA",
    "SORT so ALPHA DESC LIMIT 0 2",
    "SORT_RO so DESC",
    "SORT so BY nosort",
    "SORT so BY nosort DESC",
    "SORT so BY nosort LIMIT 1 2",
    "SET w_1 30",
    "SET w_2 20",
    "SET w_3 10",
    "SORT so BY w_* GET # GET w_*",
    "SORT so STORE sorted",
    "LRANGE sorted 0 -1",
    "TYPE sorted",
    "SORT so ALPHA DESC STORE sorted",
    "LRANGE sorted 0 -1",
    "SORT so BY nosort STORE sorted",
    "LRANGE sorted 0 -1",
    "SET strdst v",
    "SORT so STORE strdst",
    "TYPE strdst",
    "LRANGE strdst 0 -1",
    "SORT so LIMIT 10 2 STORE sorted",
    "EXISTS sorted",
    "SORT so STORE sorted",
    "SORT nosuch STORE sorted",
    "EXISTS sorted",
    "SORT_RO so STORE sorted",
    "RPUSH words b a c",
    "SORT words",
    "SORT words ALPHA",
    "SORT words ALPHA STORE sorted",
    "LRANGE sorted 0 -1",
    "SORT_RO words ALPHA LIMIT 1 5",
    // Types: WRONGTYPE both ways, TYPE, SCAN TYPE, SET over a list
    "SET str v",
    "LPUSH str a",
    "RPUSH str a",
    "LPUSHX str a",
    "RPUSHX str a",
    "LPOP str",
    "RPOP str 2",
    "LRANGE str 0 -1",
    "LLEN str",
    "LINDEX str 0",
    "LSET str 0 v",
    "LREM str 0 a",
    "LTRIM str 0 1",
    "LINSERT str BEFORE a b",
    "LPOS str a",
    "LMPOP 1 str LEFT",
    "SADD set a",
    "LPUSH set a",
    "LLEN set",
    "LRANGE set 0 -1",
    "RPUSH lst a b",
    "GET lst",
    "SADD lst a",
    "SMEMBERS lst",
    "HSET lst f v",
    "ZADD lst 1 a",
    "INCR lst",
    "APPEND lst x",
    "STRLEN lst",
    "SETBIT lst 1 1",
    "SET lst v GET",
    "TYPE lst",
    "SCAN 0 TYPE list COUNT 100",
    "SET lst v",
    "TYPE lst",
    "GET lst",
    // A whole list: expiry, RENAME, COPY, DEL, a pop that empties it, FLUSHDB
    "RPUSH w 1 2",
    "EXPIRE w 100",
    "RPUSH w 3",
    "TTL w",
    "RENAME w w2",
    "EXISTS w",
    "TTL w2",
    "LRANGE w2 0 -1",
    "COPY w2 w3",
    "LRANGE w3 0 -1",
    "TTL w3",
    "LPUSH w3 0",
    "LRANGE w2 0 -1",
    "COPY w2 w3",
    "COPY w2 w3 REPLACE",
    "LRANGE w3 0 -1",
    "RENAME w3 str",
    "TYPE str",
    "LRANGE str 0 -1",
    "DEL w2",
    "EXISTS w2",
    "RPUSH w2 z",
    "TTL w2",
    "LPOP w2",
    "EXISTS w2",
    "TTL w2",
    "RPUSH e only",
    "EXPIRE e 100",
    "RPOP e",
    "EXISTS e",
    "RPUSH e again",
    "TTL e",
    "PERSIST e",
    "DEL e nosuch",
    "FLUSHDB",
    "LLEN str",
    "LRANGE so 0 -1",
    // The blocking pops with something to take reply at once; with nothing, after
    // their timeout; inside MULTI they do not block.
    // A one-element list moved onto itself keeps its expiry (it never stops being live).
    "RPUSH one a",
    "EXPIRE one 100",
    "LMOVE one one LEFT RIGHT",
    "TTL one",
    "RPOPLPUSH one one",
    "TTL one",
    "RPUSH bq a b c",
    "OBJECT ENCODING bq",
    "BLPOP nosuch bq 0",
    "BRPOP bq 0.5",
    "BLPOP nosuch 0.01",
    "BRPOP nosuch 0.01",
    "BLMPOP 0.01 2 nosuch bq RIGHT COUNT 5",
    "BLMPOP 0.01 1 nosuch LEFT",
    "RPUSH bq x y",
    "BLMOVE bq bq2 LEFT RIGHT 0",
    "BRPOPLPUSH bq bq2 0",
    "LRANGE bq2 0 -1",
    "BLMOVE nosuch bq2 LEFT RIGHT 0.01",
    "BRPOPLPUSH nosuch bq2 0.01",
    "BLPOP bq -1",
    "BLPOP bq x",
    "BLPOP bq inf",
    "BLPOP bq 1e400",
    "BLMPOP x 1 bq LEFT",
    "BLMPOP 0 0 bq LEFT",
    "BLMOVE bq2 bq UP LEFT 0",
    "BLPOP bq",
    "SET bs v",
    "BLPOP bs 0",
    "BLMOVE bq2 bs LEFT LEFT 0",
    "MULTI",
    "BLPOP nosuch 0",
    "BRPOPLPUSH nosuch bq2 0",
    "BLPOP bq2 0",
    "EXEC",
];

/// Commands whose replies Redis gives in no fixed order: compared as sets (a
/// list's elements come in their order; only a SCAN's keys do not).
fn unordered(command: &str) -> bool {
    command.split(' ').next().unwrap_or_default().eq_ignore_ascii_case("SCAN")
}

/// `commands` sent to a fresh redis-server and a fresh node: the replies of each,
/// those of unordered commands sorted.
async fn both_replies(commands: &[String]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    support::replies_of_both("list-test", commands, unordered).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_of_the_list_commands_is_redis_7s() {
    let commands: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "{} replies differ from Redis's:\n{}", diffs.len(), diffs.join("\n"));
}

/// The same in RESP3 (after `HELLO 3`, whose reply is not compared): a missing
/// key's pop, with a count or without, LMPOP of nothing, LINDEX out of range,
/// LPOS without a match and LMOVE of nothing are the null `_`; LMPOP is an array
/// of the key and an array (not a map), LPOS with COUNT an array of integers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_replies_in_resp3_are_redis_7s() {
    let commands: Vec<String> = [
        "!HELLO 3",
        "RPUSH l a b c a",
        "LRANGE l 0 -1",
        "LRANGE l 5 9",
        "LRANGE nosuch 0 -1",
        "LPOP l 2",
        "RPOP l 0",
        "LPOP nosuch",
        "LPOP nosuch 2",
        "LPOP nosuch 0",
        "LINDEX l 0",
        "LINDEX l 10",
        "LPOS l a",
        "LPOS l nosuch",
        "LPOS l a COUNT 0",
        "LPOS l nosuch COUNT 2",
        "LPOS nosuch a COUNT 0",
        "LMPOP 1 l RIGHT COUNT 5",
        "LMPOP 2 nosuch l LEFT",
        "LMOVE nosuch l LEFT LEFT",
        "RPUSH l x y",
        "LMPOP 2 nosuch l LEFT",
        "LMOVE l l LEFT RIGHT",
        "LSET l 9 v",
        "LINSERT l BEFORE y w",
        "SORT l ALPHA",
        "SORT l ALPHA STORE s",
        "LRANGE s 0 -1",
        "RPOP s 5",
        "EXISTS s",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let (want, got) = both_replies(&commands).await;
    let diffs = differences(&commands, &want, &got);
    assert!(diffs.is_empty(), "RESP3 replies differ from Redis's:\n{}", diffs.join("\n"));
}

/// Redis's events, in its order: LMOVE and RPOPLPUSH notify the push to the
/// destination before the pop from the source; LTRIM notifies even when it keeps
/// everything; a pop, trim or remove that empties a list adds `del`; a push or
/// remove that changes nothing notifies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_of_list_commands_are_redis_7s() {
    const COMMANDS: &[&str] = &[
        "LPUSH l a b c",
        "RPUSH l d e",
        "LPUSHX l x",
        "RPUSHX nosuch x",
        "LPOP l",
        "RPOP l 2",
        "LPOP l 0",
        "LPOP nosuch",
        "LSET l 0 z",
        "LSET l 9 z",
        "LREM l 0 nosuch",
        "LREM l 1 a",
        "LINSERT l BEFORE nosuch v",
        "LINSERT l AFTER z y",
        "LTRIM l 0 -1",
        "LTRIM l 1 -1",
        "LMOVE l m LEFT RIGHT",
        "RPOPLPUSH m l",
        "LMOVE l l LEFT RIGHT",
        "LMPOP 2 nosuch l RIGHT COUNT 1",
        "LMPOP 1 l LEFT",
        "RPUSH t 1 2",
        "RPOP t 2",
        "RPUSH t 1 2",
        "LTRIM t 5 10",
        "RPUSH t 1 2",
        "LREM t 0 1",
        "LREM t 0 2",
        "RPUSH t 1 2",
        "LMOVE t t2 LEFT LEFT",
        "LMOVE t t2 RIGHT LEFT",
        "SORT t2 STORE t3",
        "EXPIRE t3 100",
        "RENAME t3 t4",
        "DEL t4",
        "DEL t2 nosuch",
    ];
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "list-test", |_| {}).await;
    let want = events(redis.addr, COMMANDS).await;
    let got = events(node.resp_addr, COMMANDS).await;
    assert_eq!(got, want, "keyspace events differ from Redis's");
    support::stop_single(node, cancel).await;
}

/// A random command on keys `k0`..`k3` and values `v0`..`v5` (or small integers):
/// list commands with their options, and the string, set and key commands that
/// make a key of another type, delete, rename, copy or expire one. Every reply is
/// Redis's to give the same way each time: counts that pick nothing at random.
fn random_command(rng: &mut StdRng) -> String {
    let key = |rng: &mut StdRng| format!("k{}", rng.gen_range(0..4));
    let value = |rng: &mut StdRng| match rng.gen_range(0..3) {
        0 => rng.gen_range(0..6).to_string(),
        _ => format!("v{}", rng.gen_range(0..6)),
    };
    let values = |rng: &mut StdRng| (0..rng.gen_range(1..4)).map(|_| value(rng)).collect::<Vec<_>>().join(" ");
    let index = |rng: &mut StdRng| rng.gen_range(-4..5);
    let end = |rng: &mut StdRng| ["LEFT", "RIGHT"][rng.gen_range(0..2)];
    let pop = |rng: &mut StdRng| ["LPOP", "RPOP"][rng.gen_range(0..2)];
    match rng.gen_range(0..38) {
        0..=4 => format!("RPUSH {} {}", key(rng), values(rng)),
        5..=7 => format!("LPUSH {} {}", key(rng), values(rng)),
        8 => format!("{} {} {}", ["LPUSHX", "RPUSHX"][rng.gen_range(0..2)], key(rng), values(rng)),
        9 | 10 => format!("{} {}", pop(rng), key(rng)),
        11 => format!("{} {} {}", pop(rng), key(rng), rng.gen_range(0..4)),
        12 => format!("LRANGE {} {} {}", key(rng), index(rng), index(rng)),
        13 => format!("LLEN {}", key(rng)),
        14 => format!("LINDEX {} {}", key(rng), index(rng)),
        15 | 16 => format!("LSET {} {} {}", key(rng), index(rng), value(rng)),
        17 | 18 => format!("LREM {} {} {}", key(rng), rng.gen_range(-2..3), value(rng)),
        19 => format!("LTRIM {} {} {}", key(rng), index(rng), index(rng)),
        20 | 21 => {
            let side = ["BEFORE", "AFTER"][rng.gen_range(0..2)];
            format!("LINSERT {} {side} {} {}", key(rng), value(rng), value(rng))
        }
        22 => {
            let mut command = format!("LPOS {} {}", key(rng), value(rng));
            if rng.gen_bool(0.5) {
                command += &format!(" RANK {}", [-2, -1, 1, 2, 3][rng.gen_range(0..5)]);
            }
            if rng.gen_bool(0.5) {
                command += &format!(" COUNT {}", rng.gen_range(0..3));
            }
            if rng.gen_bool(0.3) {
                command += &format!(" MAXLEN {}", rng.gen_range(0..4));
            }
            command
        }
        23 | 24 => format!("LMOVE {} {} {} {}", key(rng), key(rng), end(rng), end(rng)),
        25 => format!("RPOPLPUSH {} {}", key(rng), key(rng)),
        26 => {
            let n = rng.gen_range(1..4);
            let keys = (0..n).map(|_| key(rng)).collect::<Vec<_>>().join(" ");
            match rng.gen_range(0..2) {
                0 => format!("LMPOP {n} {keys} {}", end(rng)),
                _ => format!("LMPOP {n} {keys} {} COUNT {}", end(rng), rng.gen_range(1..4)),
            }
        }
        // Numeric (an error for a list with a non-number in it) or ALPHA, of a
        // list or a set; STORE makes a list.
        27 => format!("SORT {}{}", key(rng), ["", " DESC", " LIMIT 1 2"][rng.gen_range(0..3)]),
        28 => format!("SORT {} ALPHA{}", key(rng), ["", " DESC", " LIMIT 0 2"][rng.gen_range(0..3)]),
        29 => format!("SORT {} ALPHA STORE {}", key(rng), key(rng)),
        // Now and then a key of another type, deleted more often.
        30 => match rng.gen_range(0..2) {
            0 => format!("SET {} {}", key(rng), value(rng)),
            _ => format!("SADD {} {}", key(rng), values(rng)),
        },
        31 | 32 => format!("DEL {}", key(rng)),
        33 => ["TYPE", "EXISTS", "LLEN"].map(|c| format!("{c} {}", key(rng)))[rng.gen_range(0..3)].clone(),
        34 => format!("EXPIRE {} 1000", key(rng)),
        35 => format!("RENAME {} {}", key(rng), key(rng)),
        36 => format!("COPY {} {} REPLACE", key(rng), key(rng)),
        _ => format!("LRANGE {} 0 -1", key(rng)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_sequence_of_list_commands_replies_as_redis_does() {
    let seed = std::env::var("XSITE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commands: Vec<String> = (0..RANDOM_OPS).map(|_| random_command(&mut rng)).collect();
    for k in 0..4 {
        commands.push(format!("TYPE k{k}"));
        commands.push(format!("LRANGE k{k} 0 -1"));
    }
    let (want, got) = both_replies(&commands).await;
    support::redis_server::assert_same_replies(seed, &commands, &want, &got);
}

/// DUMP of a list is xsite's payload of its type, and RESTORE brings it back whole
/// under another key: the same elements in the same order (duplicates, an empty
/// one and one of binary bytes among them, some put by LINSERT and LSET), a list of
/// its own that takes pushes without touching the original, with the TTL RESTORE
/// gives, over an existing key only with REPLACE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_dumped_restores_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (node, cancel) = support::start_single(dir.path(), "list-test", |_| {}).await;
    let client = redis::Client::open(format!("redis://{}/", node.resp_addr)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let pushed: [&[u8]; 5] = [b"a", b"b\r\n\x00", b"", b"a", b"z"];
    let _: i64 = c.rpush("l", &pushed[..]).await.unwrap();
    let _: i64 = c.linsert_before("l", "z", "y").await.unwrap();
    let () = c.lset("l", 0, "first").await.unwrap();
    let _: i64 = c.lpush("l", "head").await.unwrap();
    let want: Vec<Vec<u8>> =
        [&b"head"[..], b"first", b"b\r\n\x00", b"", b"a", b"y", b"z"].iter().map(|v| v.to_vec()).collect();
    let got: Vec<Vec<u8>> = c.lrange("l", 0, -1).await.unwrap();
    assert_eq!(got, want);
    let dump: Vec<u8> = redis::cmd("DUMP").arg("l").query_async(&mut c).await.unwrap();
    assert!(dump.starts_with(b"XSDU\x01\x04"), "xsite's format, version 1, a list (the type after the sorted set)");
    let () = redis::cmd("RESTORE").arg("l2").arg(0).arg(&dump).query_async(&mut c).await.unwrap();
    let got: Vec<Vec<u8>> = c.lrange("l2", 0, -1).await.unwrap();
    assert_eq!(got, want);
    let kind: String = redis::cmd("TYPE").arg("l2").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "list");
    let ttl: i64 = c.ttl("l2").await.unwrap();
    assert_eq!(ttl, -1);
    // A list of its own.
    let len: i64 = c.rpush("l2", "tail").await.unwrap();
    assert_eq!(len, 8);
    let popped: Option<Vec<u8>> = c.lpop("l2", None).await.unwrap();
    assert_eq!(popped.as_deref(), Some(&b"head"[..]));
    let got: Vec<Vec<u8>> = c.lrange("l", 0, -1).await.unwrap();
    assert_eq!(got, want, "the original is untouched");
    // Over an existing key only with REPLACE; a TTL given.
    let busy = redis::cmd("RESTORE").arg("l2").arg(0).arg(&dump).query_async::<()>(&mut c).await.unwrap_err();
    assert_eq!(busy.code(), Some("BUSYKEY"), "{busy}");
    let () = redis::cmd("RESTORE").arg("l2").arg(5000).arg(&dump).arg("REPLACE").query_async(&mut c).await.unwrap();
    let got: Vec<Vec<u8>> = c.lrange("l2", 0, -1).await.unwrap();
    assert_eq!(got, want);
    let pttl: i64 = c.pttl("l2").await.unwrap();
    assert!((4000..=5000).contains(&pttl), "{pttl}");
    let () = c.set("s", "v").await.unwrap();
    let () = redis::cmd("RESTORE").arg("s").arg(0).arg(&dump).arg("REPLACE").query_async(&mut c).await.unwrap();
    let got: Vec<Vec<u8>> = c.lrange("s", 0, -1).await.unwrap();
    assert_eq!(got, want, "a string replaced by the list");
    let none: Option<Vec<u8>> = redis::cmd("DUMP").arg("nosuch").query_async(&mut c).await.unwrap();
    assert_eq!(none, None);
    support::stop_single(node, cancel).await;
}

/// Lists survive a restart: some written before a snapshot (`SAVE`), some after
/// it (replayed from the WAL), pops, an LSET, an LINSERT, an LTRIM and a delete
/// among them, expiry kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_back_whole_after_a_restart_from_snapshot_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let read_back = |conn: redis::aio::MultiplexedConnection| async move {
        let mut conn = conn;
        let mut out = Vec::new();
        for key in ["a", "b", "c", "gone"] {
            let items: Vec<String> = conn.lrange(key, 0, -1).await.unwrap();
            let ttl: i64 = conn.ttl(key).await.unwrap();
            out.push((key, items, ttl > 0));
        }
        out
    };
    let connect = |node: &RunningNode| {
        let client = redis::Client::open(format!("redis://{}/", node.resp_addr)).unwrap();
        async move { client.get_multiplexed_async_connection().await.unwrap() }
    };
    let (node, cancel) = support::start_single(dir.path(), "list-test", |_| {}).await;
    let mut conn = connect(&node).await;
    let _: i64 = conn.rpush("a", &["1", "2", "3", "4", "5"]).await.unwrap();
    let _: i64 = conn.linsert_after("a", "5", "6").await.unwrap();
    let _: i64 = conn.rpush("b", &["x", "y"]).await.unwrap();
    let _: i64 = conn.rpush("gone", "z").await.unwrap();
    let () = conn.expire("b", 1000).await.unwrap();
    let () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let popped: Option<String> = conn.lpop("a", None).await.unwrap();
    assert_eq!(popped.as_deref(), Some("1"));
    let () = conn.lset("a", 0, "two").await.unwrap();
    let _: i64 = conn.linsert_before("a", "4", "3.5").await.unwrap();
    let () = conn.ltrim("a", 0, -2).await.unwrap();
    let _: i64 = conn.rpush("c", &["p", "q"]).await.unwrap();
    let _: i64 = conn.lpush("b", "w").await.unwrap();
    let _: Vec<String> = conn.rpop("b", std::num::NonZeroUsize::new(1)).await.unwrap();
    let _: i64 = conn.del("gone").await.unwrap();
    let before = read_back(conn).await;
    let list = |items: &[&str]| items.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(
        before,
        [
            ("a", list(&["two", "3", "3.5", "4", "5"]), false),
            ("b", list(&["w", "x"]), true),
            ("c", list(&["p", "q"]), false),
            ("gone", list(&[]), false),
        ]
    );
    support::stop_single(node, cancel).await;
    let (node, cancel) = support::start_single(dir.path(), "list-test", |_| {}).await;
    let after = read_back(connect(&node).await).await;
    assert_eq!(after, before);
    support::stop_single(node, cancel).await;
}

fn site(name: &str) -> SiteId {
    SiteId::new(name).unwrap()
}

async fn lrange(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    conn.lrange(key, 0, -1).await.unwrap()
}

async fn wait_list(conn: &mut redis::aio::MultiplexedConnection, key: &str, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = lrange(conn, key).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {got:?}, waited for {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until both sites show the same list `key`, holding `items` once each in
/// some order; returns it.
async fn wait_same_list(
    a: &mut redis::aio::MultiplexedConnection,
    b: &mut redis::aio::MultiplexedConnection,
    key: &str,
    items: &[&str],
) -> Vec<String> {
    let mut want: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let (at_a, at_b) = (lrange(a, key).await, lrange(b, key).await);
        let mut sorted = at_a.clone();
        sorted.sort();
        if at_a == at_b && sorted == want {
            return at_a;
        }
        assert!(Instant::now() < deadline, "{key}: {at_a:?} at a, {at_b:?} at b, waited for {items:?} at both");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Defects this type exists to avoid (a list replicated as a value, or pushes
/// applied by index): pushes made at two sites at once would be lost at one, or
/// ordered differently at each, and a pop would remove whatever stood at the head
/// when it arrived. Cut from each other, site a appends `a1 a2` to `q` while site
/// b appends `b1 b2` and pops `x`, which both had; healed, both sites show the same
/// list: `y` (older than every push) first, then the four pushes interleaved with
/// each site's in the order it pushed them, without `x`. And site a pushes to
/// `jobs` at both ends while site b deletes it: the delete removes what b had seen,
/// the pushes survive (observed-remove).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sites_cut_from_each_other_interleave_their_pushes_alike() {
    let mesh = support::Mesh::start(2).await;
    for i in 0..2 {
        support::wait_reading(mesh.node(i), xsite_schemas::FORMAT_VERSION_LISTS).await;
    }
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let _: i64 = a.rpush("q", &["x", "y"]).await.unwrap();
    let _: i64 = b.rpush("jobs", &["old1", "old2"]).await.unwrap();
    wait_list(&mut b, "q", &["x", "y"]).await;
    wait_list(&mut a, "jobs", &["old1", "old2"]).await;
    let (ra, rb) = (mesh.node(0).replication.as_ref().unwrap(), mesh.node(1).replication.as_ref().unwrap());
    ra.take_offline(&site("site-b")).await.unwrap();
    rb.take_offline(&site("site-a")).await.unwrap();
    // Concurrent: neither site sees the other's writes until healed.
    let len: i64 = a.rpush("q", &["a1", "a2"]).await.unwrap();
    assert_eq!(len, 4);
    let len: i64 = b.rpush("q", &["b1", "b2"]).await.unwrap();
    assert_eq!(len, 4);
    let popped: Option<String> = b.lpop("q", None).await.unwrap();
    assert_eq!(popped.as_deref(), Some("x"));
    let _: i64 = a.lpush("jobs", "head").await.unwrap();
    let _: i64 = a.rpush("jobs", "tail").await.unwrap();
    let deleted: i64 = b.del("jobs").await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(lrange(&mut a, "q").await, ["x", "y", "a1", "a2"]);
    assert_eq!(lrange(&mut b, "q").await, ["y", "b1", "b2"]);
    assert_eq!(lrange(&mut a, "jobs").await, ["head", "old1", "old2", "tail"]);
    ra.bring_online(&site("site-b")).unwrap();
    rb.bring_online(&site("site-a")).unwrap();
    let q = wait_same_list(&mut a, &mut b, "q", &["y", "a1", "a2", "b1", "b2"]).await;
    assert_eq!(q[0], "y", "the pushes came after y at both sites: {q:?}");
    for (first, second) in [("a1", "a2"), ("b1", "b2")] {
        let at = |item: &str| q.iter().position(|i| i == item).unwrap();
        assert!(at(first) < at(second), "{first} was pushed before {second}: {q:?}");
    }
    for conn in [&mut a, &mut b] {
        wait_list(conn, "jobs", &["head", "tail"]).await;
    }
    let contents = mesh.converged().await;
    assert_eq!(contents.len(), 2, "{contents:?}");
    mesh.shutdown().await;
}

/// A client blocked on an empty list at one site is woken by a push made at the
/// other and gets that element; one blocked on a key nobody pushes to gets a null
/// array once its timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pop_blocked_at_one_site_is_woken_by_a_push_at_the_other() {
    let mesh = support::Mesh::start(2).await;
    for i in 0..2 {
        support::wait_reading(mesh.node(i), xsite_schemas::FORMAT_VERSION_LISTS).await;
    }
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    let blocked = tokio::spawn(async move {
        let got: Option<(String, String)> =
            redis::cmd("BLPOP").arg("jobs").arg(WAIT.as_secs()).query_async(&mut b).await.unwrap();
        (got, b)
    });
    // The push may come before the pop blocks: either way it gets the element.
    let _: i64 = a.rpush("jobs", "from-a").await.unwrap();
    let (got, mut b) = tokio::time::timeout(WAIT, blocked).await.expect("the blocked pop was woken").unwrap();
    assert_eq!(got, Some(("jobs".to_string(), "from-a".to_string())));
    wait_list(&mut a, "jobs", &[]).await;
    let started = Instant::now();
    let none: Option<(String, String)> =
        redis::cmd("BRPOP").arg("nothing").arg("0.2").query_async(&mut b).await.unwrap();
    assert_eq!(none, None);
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited its timeout: {:?}", started.elapsed());
    mesh.shutdown().await;
}

/// redis-py (PyPI) end to end: a work queue pushed at one site and consumed at the
/// other without blocking, in order; pushes at both sites at once ending alike at
/// both, each site's in its order; LINSERT LSET LREM LPOS LMOVE RPOPLPUSH LMPOP
/// LTRIM, a transactional pipeline and a delete, over RESP2 and RESP3; the same
/// script against a redis-server first, as the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_uses_lists_across_two_sites() {
    support::redis_py_across_two_sites("lists_sites.py", 100, xsite_schemas::FORMAT_VERSION_LISTS).await;
}
