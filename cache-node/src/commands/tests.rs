//! Command tests against the store directly, with the wall clock given: Redis's
//! replies and errors, and a model-based property test.

use super::*;
use crate::store::MemoryGauge;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use xsite_consumer::merge::LastWriteWins;
use xsite_schemas::CacheName;

const T0: u64 = 1_700_000_000_000;

struct Harness {
    site: SiteId,
    clock: HlcClock,
    store: CacheStore,
    now_ms: u64,
    log: Vec<LogEntry>,
}

impl Harness {
    fn new() -> Harness {
        Harness::at_site("a", 0)
    }

    fn at_site(site: &str, limit: u64) -> Harness {
        Harness {
            site: SiteId::new(site).unwrap(),
            clock: HlcClock::new(Hlc::ZERO, 60_000),
            store: CacheStore::new(
                CacheName::new("c").unwrap(),
                Box::new(LastWriteWins),
                Arc::new(MemoryGauge::new(limit)),
            ),
            now_ms: T0,
            log: Vec::new(),
        }
    }

    fn run(&mut self, args: &[&str]) -> Frame {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
        self.run_bytes(&args)
    }

    fn run_bytes(&mut self, args: &[Bytes]) -> Frame {
        let mut ctx = Ctx::new(&self.site, &self.clock, &self.store, 0, self.now_ms);
        let reply = run(&mut ctx, args).expect("a cache command");
        self.log.append(&mut ctx.pending);
        reply
    }

    fn contents(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.store.live_contents(self.now_ms)
    }
}

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn int(n: i64) -> Frame {
    Frame::Integer(n)
}

fn error(s: &str) -> Frame {
    Frame::Error(s.to_string())
}

#[test]
fn get_and_set() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GET", "k"]), Frame::Null);
    assert_eq!(h.run(&["set", "k", "v"]), Frame::ok());
    assert_eq!(h.run(&["get", "k"]), bulk("v"));
    assert_eq!(h.run(&["SET", "k", "w", "GET"]), bulk("v"));
    assert_eq!(h.run(&["SET", "new", "w", "GET"]), Frame::Null);
    assert_eq!(h.run(&["SET", "k", "x", "NX"]), Frame::Null);
    assert_eq!(h.run(&["SET", "k", "x", "NX", "GET"]), bulk("w"));
    assert_eq!(h.run(&["SET", "nope", "x", "XX"]), Frame::Null);
    assert_eq!(h.run(&["SET", "k", "x", "XX"]), Frame::ok());
    assert_eq!(h.run(&["GET", "k"]), bulk("x"));
    assert_eq!(h.run(&["GET"]), error("ERR wrong number of arguments for 'get' command"));
    assert_eq!(h.run(&["SET", "k"]), error("ERR wrong number of arguments for 'set' command"));
    assert_eq!(h.log.len(), 4, "one entry per write that happened");
    assert!(h.log.iter().all(|e| e.origin == h.site && e.cache.as_str() == "c"));
}

#[test]
fn set_options_and_their_errors() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SET", "k", "v", "NX", "XX"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SET", "k", "v", "EX", "10", "PX", "100"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SET", "k", "v", "EX", "10", "KEEPTTL"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SET", "k", "v", "EX"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SET", "k", "v", "PERSIST"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SET", "k", "v", "EX", "ten"]), error(ERR_NOT_INTEGER));
    assert_eq!(h.run(&["SET", "k", "v", "EX", "0"]), error("ERR invalid expire time in 'set' command"));
    assert_eq!(h.run(&["SET", "k", "v", "PX", "-1"]), error("ERR invalid expire time in 'set' command"));
    assert_eq!(
        h.run(&["SET", "k", "v", "EX", "9223372036854775807"]),
        error("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        h.run(&["SET", "k", "v", "EX", "10", "EX", "20"]),
        Frame::ok(),
        "the same option twice: the last counts"
    );
    assert_eq!(h.run(&["PTTL", "k"]), int(20_000));
    assert_eq!(h.run(&["SET", "k", "v", "px", "1500"]), Frame::ok());
    assert_eq!(h.run(&["TTL", "k"]), int(2), "TTL rounds");
    let at = (T0 / 1000 + 100).to_string();
    assert_eq!(h.run(&["SET", "k", "v", "EXAT", &at]), Frame::ok());
    assert_eq!(h.run(&["EXPIRETIME", "k"]), int(T0 as i64 / 1000 + 100));
    assert_eq!(h.run(&["SET", "k", "v2", "KEEPTTL"]), Frame::ok());
    assert_eq!(h.run(&["EXPIRETIME", "k"]), int(T0 as i64 / 1000 + 100));
    assert_eq!(h.run(&["SET", "k", "v3"]), Frame::ok());
    assert_eq!(h.run(&["TTL", "k"]), int(-1), "a plain SET drops the TTL");
    let past = (T0 - 10).to_string();
    assert_eq!(h.run(&["SET", "k", "v", "PXAT", &past]), Frame::ok());
    assert_eq!(h.run(&["GET", "k"]), Frame::Null, "already expired");
    assert_eq!(h.run(&["SET", "fresh", "v", "KEEPTTL"]), Frame::ok());
    assert_eq!(h.run(&["TTL", "fresh"]), int(-1));
}

#[test]
fn set_keepttl_on_an_expired_key_does_not_keep_the_old_expiry() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v", "PX", "100"]);
    h.now_ms += 200;
    assert_eq!(h.run(&["SET", "k", "w", "KEEPTTL"]), Frame::ok());
    assert_eq!(h.run(&["GET", "k"]), bulk("w"));
    assert_eq!(h.run(&["APPEND", "gone", "x"]), int(1));
    h.run(&["SET", "e", "v", "PX", "100"]);
    h.now_ms += 200;
    assert_eq!(h.run(&["APPEND", "e", "x"]), int(1));
    assert_eq!(h.run(&["GET", "e"]), bulk("x"));
    assert_eq!(h.run(&["TTL", "e"]), int(-1));
}

#[test]
fn setnx_setex_psetex() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SETNX", "k", "1"]), int(1));
    assert_eq!(h.run(&["SETNX", "k", "2"]), int(0));
    assert_eq!(h.run(&["SETEX", "k", "10", "v"]), Frame::ok());
    assert_eq!(h.run(&["PTTL", "k"]), int(10_000));
    assert_eq!(h.run(&["SETEX", "k", "0", "v"]), error("ERR invalid expire time in 'setex' command"));
    assert_eq!(h.run(&["PSETEX", "k", "-5", "v"]), error("ERR invalid expire time in 'psetex' command"));
    assert_eq!(h.run(&["PSETEX", "k", "x", "v"]), error(ERR_NOT_INTEGER));
    assert_eq!(h.run(&["PSETEX", "k", "250", "v"]), Frame::ok());
    assert_eq!(h.run(&["PTTL", "k"]), int(250));
}

#[test]
fn multi_key_strings() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["MSET", "a", "1", "b", "2", "a", "3"]), Frame::ok());
    assert_eq!(h.run(&["MGET", "a", "b", "c"]), Frame::Array(vec![bulk("3"), bulk("2"), Frame::Null]));
    assert_eq!(h.run(&["MSET", "a", "1", "b"]), error("ERR wrong number of arguments for 'mset' command"));
    assert_eq!(h.run(&["MSETNX", "x", "1", "a", "9"]), int(0));
    assert_eq!(h.run(&["GET", "x"]), Frame::Null);
    assert_eq!(h.run(&["MSETNX", "x", "1", "y", "2"]), int(1));
    assert_eq!(h.run(&["MSETNX", "x"]), error("ERR wrong number of arguments for 'msetnx' command"));
    assert_eq!(h.run(&["GETSET", "x", "new"]), bulk("1"));
    assert_eq!(h.run(&["GETSET", "none", "new"]), Frame::Null);
    assert_eq!(h.run(&["GETDEL", "x"]), bulk("new"));
    assert_eq!(h.run(&["GETDEL", "x"]), Frame::Null);
    assert_eq!(h.run(&["EXISTS", "x"]), int(0));
}

#[test]
fn getex_changes_only_the_ttl() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GETEX", "k", "EX", "10"]), Frame::Null);
    h.run(&["SET", "k", "v"]);
    let before = h.log.len();
    assert_eq!(h.run(&["GETEX", "k"]), bulk("v"));
    assert_eq!(h.run(&["GETEX", "k", "PERSIST"]), bulk("v"));
    assert_eq!(h.log.len(), before, "nothing to write");
    assert_eq!(h.run(&["GETEX", "k", "EX", "10"]), bulk("v"));
    assert!(matches!(h.log.last().unwrap().op, Op::Expire { expire_at_ms: Some(at), .. } if at == T0 + 10_000));
    assert_eq!(h.run(&["TTL", "k"]), int(10));
    assert_eq!(h.run(&["GETEX", "k", "PERSIST"]), bulk("v"));
    assert_eq!(h.run(&["TTL", "k"]), int(-1));
    assert_eq!(h.run(&["GETEX", "k", "EX", "0"]), error("ERR invalid expire time in 'getex' command"));
    assert_eq!(h.run(&["GETEX", "k", "EX", "1", "PERSIST"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["GETEX", "k", "KEEPTTL"]), error(ERR_SYNTAX));
    let past = (T0 / 1000 - 1).to_string();
    assert_eq!(h.run(&["GETEX", "k", "EXAT", &past]), bulk("v"));
    assert!(matches!(h.log.last().unwrap().op, Op::Delete { .. }));
    assert_eq!(h.run(&["GET", "k"]), Frame::Null);
}

#[test]
fn append_strlen_getrange_setrange() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["APPEND", "k", "Hello"]), int(5));
    h.run(&["EXPIRE", "k", "100"]);
    assert_eq!(h.run(&["APPEND", "k", " World"]), int(11));
    assert_eq!(h.run(&["TTL", "k"]), int(100), "APPEND keeps the TTL");
    assert_eq!(h.run(&["STRLEN", "k"]), int(11));
    assert_eq!(h.run(&["STRLEN", "none"]), int(0));
    assert_eq!(h.run(&["SETRANGE", "k", "6", "Redis"]), int(11));
    assert_eq!(h.run(&["GET", "k"]), bulk("Hello Redis"));
    assert_eq!(h.run(&["TTL", "k"]), int(100), "SETRANGE keeps the TTL");
    assert_eq!(h.run(&["SETRANGE", "k2", "6", "Redis"]), int(11));
    assert_eq!(h.run(&["GET", "k2"]), Frame::Bulk(Bytes::from_static(b"\0\0\0\0\0\0Redis")));
    assert_eq!(h.run(&["SETRANGE", "k3", "6", ""]), int(0));
    assert_eq!(h.run(&["EXISTS", "k3"]), int(0));
    assert_eq!(h.run(&["SETRANGE", "k", "0", ""]), int(11));
    assert_eq!(h.run(&["SETRANGE", "k", "-1", "x"]), error(ERR_OFFSET_RANGE));
    assert_eq!(h.run(&["SETRANGE", "k", "536870912", "x"]), error(ERR_STRING_TOO_LONG));
    assert_eq!(h.run(&["SETRANGE", "k", "536870911", ""]), int(11));
    h.run(&["SET", "s", "This is a string"]);
    for (start, end, want) in [
        ("0", "3", "This"),
        ("-3", "-1", "ing"),
        ("0", "-1", "This is a string"),
        ("10", "100", "string"),
        ("5", "3", ""),
        ("-1", "-5", ""),
        ("-100", "3", "This"),
    ] {
        assert_eq!(h.run(&["GETRANGE", "s", start, end]), bulk(want), "{start} {end}");
    }
    assert_eq!(h.run(&["SUBSTR", "s", "0", "3"]), bulk("This"));
    assert_eq!(h.run(&["GETRANGE", "none", "0", "3"]), bulk(""));
    assert_eq!(h.run(&["GETRANGE", "s", "a", "3"]), error(ERR_NOT_INTEGER));
}

#[test]
fn counters() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["INCR", "n"]), int(1));
    assert_eq!(h.run(&["INCRBY", "n", "10"]), int(11));
    assert_eq!(h.run(&["DECR", "n"]), int(10));
    assert_eq!(h.run(&["DECRBY", "n", "3"]), int(7));
    assert_eq!(h.run(&["GET", "n"]), bulk("7"));
    assert_eq!(h.run(&["TYPE", "n"]), Frame::Simple("string".into()));
    assert_eq!(h.run(&["STRLEN", "n"]), int(1));
    assert_eq!(h.run(&["APPEND", "n", "0"]), int(2));
    assert_eq!(h.run(&["INCR", "n"]), int(71), "a counter edited as text is a plain value again");
    h.run(&["SET", "s", "abc"]);
    assert_eq!(h.run(&["INCR", "s"]), error(ERR_NOT_INTEGER));
    h.run(&["SET", "s", "010"]);
    assert_eq!(h.run(&["INCR", "s"]), error(ERR_NOT_INTEGER));
    assert_eq!(h.run(&["INCRBY", "s", "1.5"]), error(ERR_NOT_INTEGER));
    h.run(&["SET", "big", "9223372036854775806"]);
    assert_eq!(h.run(&["INCR", "big"]), int(i64::MAX));
    assert_eq!(h.run(&["INCR", "big"]), error(ERR_OVERFLOW));
    assert_eq!(h.run(&["DECRBY", "big", "-9223372036854775808"]), error("ERR decrement would overflow"));
    h.run(&["SET", "t", "5", "EX", "100"]);
    assert_eq!(h.run(&["INCR", "t"]), int(6));
    assert_eq!(h.run(&["TTL", "t"]), int(100), "INCR keeps the TTL");
    h.now_ms += 200_000;
    assert_eq!(h.run(&["INCR", "t"]), int(1), "an expired counter starts again");
    assert_eq!(h.run(&["TTL", "t"]), int(-1));
}

#[test]
fn incrbyfloat() {
    let mut h = Harness::new();
    h.run(&["SET", "mykey", "10.50"]);
    assert_eq!(h.run(&["INCRBYFLOAT", "mykey", "0.1"]), bulk("10.6"));
    assert_eq!(h.run(&["INCRBYFLOAT", "mykey", "-5"]), bulk("5.6"));
    h.run(&["SET", "mykey", "5.0e3"]);
    assert_eq!(h.run(&["INCRBYFLOAT", "mykey", "2.0e2"]), bulk("5200"));
    assert_eq!(h.run(&["INCRBYFLOAT", "new", "1.5"]), bulk("1.5"));
    assert_eq!(h.run(&["INCRBYFLOAT", "new", "x"]), error(ERR_NOT_FLOAT));
    assert_eq!(h.run(&["INCRBYFLOAT", "new", "inf"]), error(ERR_NAN_OR_INFINITY));
    h.run(&["SET", "s", "abc"]);
    assert_eq!(h.run(&["INCRBYFLOAT", "s", "1"]), error(ERR_NOT_FLOAT));
    h.run(&["INCRBY", "c", "3"]);
    assert_eq!(h.run(&["INCRBYFLOAT", "c", "0.5"]), bulk("3.5"), "works on a counter's text");
}

#[test]
fn keyspace_commands() {
    let mut h = Harness::new();
    h.run(&["MSET", "a", "1", "b", "2", "c", "3"]);
    assert_eq!(h.run(&["EXISTS", "a", "a", "z"]), int(2));
    assert_eq!(h.run(&["TOUCH", "a", "z"]), int(1));
    assert_eq!(h.run(&["DEL", "a", "z", "a"]), int(1));
    assert_eq!(h.run(&["UNLINK", "b"]), int(1));
    assert_eq!(h.run(&["TYPE", "a"]), Frame::Simple("none".into()));
    assert_eq!(h.run(&["DBSIZE"]), int(1));
    assert_eq!(h.run(&["RANDOMKEY"]), bulk("c"));
    assert_eq!(h.run(&["RENAME", "zz", "y"]), error(ERR_NO_SUCH_KEY));
    h.run(&["EXPIRE", "c", "50"]);
    assert_eq!(h.run(&["RENAME", "c", "d"]), Frame::ok());
    assert_eq!((h.run(&["GET", "c"]), h.run(&["GET", "d"]), h.run(&["TTL", "d"])), (Frame::Null, bulk("3"), int(50)));
    assert_eq!(h.run(&["RENAME", "d", "d"]), Frame::ok());
    h.run(&["SET", "e", "5"]);
    assert_eq!(h.run(&["RENAMENX", "d", "e"]), int(0));
    assert_eq!(h.run(&["RENAMENX", "d", "f"]), int(1));
    assert_eq!(h.run(&["FLUSHDB", "ASYNC"]), Frame::ok());
    assert_eq!(h.run(&["FLUSHDB", "maybe"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["DBSIZE"]), int(0));
    assert_eq!(h.run(&["RANDOMKEY"]), Frame::Null);
}

#[test]
fn expire_family() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["EXPIRE", "k", "10"]), int(0));
    h.run(&["SET", "k", "v"]);
    assert_eq!(h.run(&["TTL", "k"]), int(-1));
    assert_eq!(h.run(&["TTL", "none"]), int(-2));
    assert_eq!(h.run(&["EXPIRE", "k", "10", "XX"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "10", "GT"]), int(0), "no TTL counts as infinite");
    assert_eq!(h.run(&["EXPIRE", "k", "10", "NX"]), int(1));
    assert_eq!(h.run(&["EXPIRE", "k", "20", "NX"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "20", "LT"]), int(0));
    assert_eq!(h.run(&["EXPIRE", "k", "5", "LT"]), int(1));
    assert_eq!(h.run(&["EXPIRE", "k", "30", "GT", "XX"]), int(1));
    assert_eq!(h.run(&["PTTL", "k"]), int(30_000));
    assert_eq!(
        h.run(&["EXPIRE", "k", "1", "NX", "XX"]),
        error("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        h.run(&["EXPIRE", "k", "1", "GT", "LT"]),
        error("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(h.run(&["EXPIRE", "k", "1", "YY"]), error("ERR Unsupported option YY"));
    assert_eq!(h.run(&["EXPIRE", "k", "x"]), error(ERR_NOT_INTEGER));
    assert_eq!(h.run(&["EXPIRE", "k", "9223372036854775807"]), error("ERR invalid expire time in 'expire' command"));
    assert_eq!(h.run(&["PEXPIRE", "k", "9223372036854775807"]), error("ERR invalid expire time in 'pexpire' command"));
    assert_eq!(h.run(&["PEXPIRE", "k", "1500"]), int(1));
    assert_eq!(h.run(&["TTL", "k"]), int(2));
    let at = (T0 / 1000 + 60).to_string();
    assert_eq!(h.run(&["EXPIREAT", "k", &at]), int(1));
    assert_eq!(h.run(&["EXPIRETIME", "k"]), int(T0 as i64 / 1000 + 60));
    assert_eq!(h.run(&["PEXPIRETIME", "k"]), int(T0 as i64 + 60_000));
    assert_eq!(h.run(&["PEXPIREAT", "k", &(T0 + 5).to_string()]), int(1));
    assert_eq!(h.run(&["PEXPIRETIME", "k"]), int(T0 as i64 + 5));
    assert_eq!(h.run(&["PERSIST", "k"]), int(1));
    assert_eq!(h.run(&["PERSIST", "k"]), int(0));
    assert_eq!(h.run(&["EXPIRETIME", "k"]), int(-1));
    assert_eq!(h.run(&["EXPIRE", "k", "-1"]), int(1), "a past time deletes");
    assert!(matches!(h.log.last().unwrap().op, Op::Delete { .. }));
    assert_eq!(h.run(&["EXISTS", "k"]), int(0));
    h.run(&["SET", "k", "v", "PX", "100"]);
    h.now_ms += 100;
    assert_eq!((h.run(&["GET", "k"]), h.run(&["TTL", "k"]), h.run(&["PERSIST", "k"])), (Frame::Null, int(-2), int(0)));
}

#[test]
fn keys_and_scan() {
    let mut h = Harness::new();
    for k in ["hello", "hallo", "hxllo", "world", "h*llo"] {
        h.run(&["SET", k, "v"]);
    }
    let sorted = |f: Frame| -> Vec<Frame> {
        let Frame::Array(mut v) = f else { panic!("not an array") };
        v.sort_by_key(|f| format!("{f:?}"));
        v
    };
    assert_eq!(sorted(h.run(&["KEYS", "h[ae]llo"])), vec![bulk("hallo"), bulk("hello")]);
    assert_eq!(sorted(h.run(&["KEYS", "h\\*llo"])), vec![bulk("h*llo")]);
    assert_eq!(sorted(h.run(&["KEYS", "*"])).len(), 5);
    let mut found = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Frame::Array(reply) = h.run(&["SCAN", &cursor, "MATCH", "h?llo", "COUNT", "2"]) else { panic!() };
        let [Frame::Bulk(next), Frame::Array(keys)] = &reply[..] else { panic!("{reply:?}") };
        found.extend(keys.iter().cloned());
        cursor = String::from_utf8(next.to_vec()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    found.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(found, vec![bulk("h*llo"), bulk("hallo"), bulk("hello"), bulk("hxllo")]);
    let Frame::Array(reply) = h.run(&["SCAN", "0", "TYPE", "hash", "COUNT", "100"]) else { panic!() };
    assert_eq!(reply[1], Frame::Array(vec![]));
    assert_eq!(h.run(&["SCAN", "x"]), error("ERR invalid cursor"));
    assert_eq!(h.run(&["SCAN", "0", "COUNT", "0"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SCAN", "0", "COUNT"]), error(ERR_SYNTAX));
    assert_eq!(h.run(&["SCAN", "0", "BOGUS", "1"]), error(ERR_SYNTAX));
}

#[test]
fn binary_keys_and_values() {
    let mut h = Harness::new();
    let key = Bytes::from_static(b"\x00k\xff\r\n");
    let value = Bytes::from_static(b"\xc3\x28\x00");
    assert_eq!(h.run_bytes(&[Bytes::from("SET"), key.clone(), value.clone()]), Frame::ok());
    assert_eq!(h.run_bytes(&[Bytes::from("GET"), key]), Frame::Bulk(value));
}

#[test]
fn oom_refuses_growth_and_allows_deletes() {
    let mut h = Harness::at_site("a", 1_000);
    assert_eq!(h.run(&["SET", "k", "small"]), Frame::ok());
    let big = "x".repeat(2_000);
    let oom = error("OOM command not allowed when used memory > 'maxmemory'.");
    assert_eq!(h.run(&["SET", "big", &big]), oom);
    assert_eq!(h.run(&["MSET", "a", "1", "big", &big]), oom);
    assert_eq!(h.run(&["GET", "a"]), Frame::Null, "MSET is all or nothing");
    assert_eq!(h.run(&["APPEND", "k", &big]), oom);
    assert_eq!(h.run(&["DEL", "k"]), int(1));
}

#[test]
fn unknown_and_node_commands_are_not_cache_commands() {
    let mut h = Harness::new();
    let mut ctx = Ctx::new(&h.site, &h.clock, &h.store, 0, h.now_ms);
    assert_eq!(run(&mut ctx, &[Bytes::from("NOSUCH")]), None);
    assert_eq!(run(&mut ctx, &[Bytes::from("INFO")]), None);
    assert_eq!(run(&mut ctx, &[Bytes::from("x".repeat(100))]), None);
    drop(ctx);
    assert_eq!(h.run(&["dbsize", "extra"]), error("ERR wrong number of arguments for 'dbsize' command"));
    assert!(lookup(b"FlushAll").is_some_and(|s| s.write));
}

/// Applies `log` to a fresh store in the given order, with every entry twice.
fn replay(log: &[LogEntry], order: &[usize], now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let h = Harness::new();
    for &i in order.iter().chain(order.iter().rev()) {
        h.store.apply(&log[i].version(), &log[i].op);
    }
    h.store.live_contents(now_ms)
}

#[test]
fn counters_from_two_sites_add_up() {
    let (mut a, mut b) = (Harness::at_site("a", 0), Harness::at_site("b", 0));
    a.run(&["SET", "n", "100"]);
    for e in &a.log {
        b.store.apply(&e.version(), &e.op);
    }
    a.run(&["INCRBY", "n", "5"]);
    b.run(&["INCRBY", "n", "7"]);
    b.run(&["INCR", "n"]);
    a.run(&["INCR", "never-set-before"]);
    b.run(&["INCR", "never-set-before"]);
    for e in a.log.clone() {
        b.store.apply(&e.version(), &e.op);
    }
    for e in b.log.clone() {
        a.store.apply(&e.version(), &e.op);
    }
    assert_eq!(a.run(&["GET", "n"]), bulk("113"));
    assert_eq!(a.contents(), b.contents());
    // First increments of a key nobody wrote count on the same base.
    assert_eq!(a.run(&["GET", "never-set-before"]), bulk("2"));
    // So do first increments after a delete both sites saw.
    a.run(&["DEL", "n"]);
    let del = a.log.last().unwrap().clone();
    b.store.apply(&del.version(), &del.op);
    let (a_mark, b_mark) = (a.log.len(), b.log.len());
    a.run(&["INCRBY", "n", "2"]);
    b.run(&["INCRBY", "n", "3"]);
    for e in &a.log[a_mark..] {
        b.store.apply(&e.version(), &e.op);
    }
    for e in &b.log[b_mark..] {
        a.store.apply(&e.version(), &e.op);
    }
    assert_eq!((a.run(&["GET", "n"]), b.run(&["GET", "n"])), (bulk("5"), bulk("5")));
}

#[test]
fn concurrent_decrements_and_increments_add_up() {
    let (mut a, mut b) = (Harness::at_site("a", 0), Harness::at_site("b", 0));
    a.run(&["INCRBY", "n", "10"]);
    for e in a.log.clone() {
        b.store.apply(&e.version(), &e.op);
    }
    let seen_by_b = a.log.len();
    assert_eq!(a.run(&["DECRBY", "n", "3"]), int(7));
    assert!(matches!(a.log.last().unwrap().op, Op::Incr { delta: -3, total: 7, .. }));
    assert_eq!(b.run(&["INCRBY", "n", "5"]), int(15));
    for e in a.log[seen_by_b..].iter() {
        b.store.apply(&e.version(), &e.op);
    }
    for e in b.log.clone() {
        a.store.apply(&e.version(), &e.op);
    }
    assert_eq!(a.run(&["GET", "n"]), bulk("12"));
    assert_eq!(b.run(&["GET", "n"]), bulk("12"));
    assert_eq!(b.run(&["DECR", "fresh"]), int(-1));
}

#[derive(Debug, Clone)]
enum Step {
    Set(u8, u8, Option<u64>),
    Del(u8),
    IncrBy(u8, i64),
    Append(u8, u8),
    PExpire(u8, i64),
    Persist(u8),
    Get(u8),
    Pttl(u8),
    Advance(u64),
    ExpireCycle,
}

const VALUES: [&str; 5] = ["0", "41", "-7", "abc", "9223372036854775800"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4, 0u8..5, proptest::option::of(1u64..300)).prop_map(|(k, v, t)| Step::Set(k, v, t)),
        (0u8..4).prop_map(Step::Del),
        (0u8..4, prop_oneof![-3i64..4, Just(i64::MAX), Just(i64::MIN + 1)]).prop_map(|(k, d)| Step::IncrBy(k, d)),
        (0u8..4, 0u8..5).prop_map(|(k, v)| Step::Append(k, v)),
        (0u8..4, -10i64..300).prop_map(|(k, ms)| Step::PExpire(k, ms)),
        (0u8..4).prop_map(Step::Persist),
        (0u8..4).prop_map(Step::Get),
        (0u8..4).prop_map(Step::Pttl),
        (0u64..200).prop_map(Step::Advance),
        Just(Step::ExpireCycle),
    ]
}

/// The model: key → (value, absolute expiry).
#[derive(Default)]
struct Model {
    keys: HashMap<String, (Vec<u8>, Option<u64>)>,
}

impl Model {
    fn live(&mut self, k: &str, now: u64) -> Option<&mut (Vec<u8>, Option<u64>)> {
        if self.keys.get(k).is_some_and(|(_, at)| at.is_some_and(|at| at <= now)) {
            self.keys.remove(k);
        }
        self.keys.get_mut(k)
    }

    /// The reply Redis would give, and the model updated.
    fn step(&mut self, s: &Step, now: u64) -> Frame {
        let key = |k: &u8| format!("k{k}");
        match s {
            Step::Set(k, v, ttl) => {
                self.keys.insert(key(k), (VALUES[*v as usize].as_bytes().to_vec(), ttl.map(|t| now + t)));
                Frame::ok()
            }
            Step::Del(k) => int(i64::from(self.live(&key(k), now).is_some() && self.keys.remove(&key(k)).is_some())),
            Step::IncrBy(k, d) => {
                let current = self.live(&key(k), now).map(|e| e.0.clone());
                let parsed = match &current {
                    None => Some(0),
                    Some(v) => crate::resp::parse_integer(v),
                };
                let Some(n) = parsed else {
                    return error(ERR_NOT_INTEGER);
                };
                let Some(sum) = n.checked_add(*d) else {
                    return error(ERR_OVERFLOW);
                };
                let at = self.live(&key(k), now).and_then(|e| e.1);
                self.keys.insert(key(k), (sum.to_string().into_bytes(), at));
                int(sum)
            }
            Step::Append(k, v) => {
                let add = VALUES[*v as usize].as_bytes();
                let e = match self.live(&key(k), now) {
                    Some(e) => e,
                    None => self.keys.entry(key(k)).or_insert((Vec::new(), None)),
                };
                e.0.extend_from_slice(add);
                int(e.0.len() as i64)
            }
            Step::PExpire(k, ms) => match self.live(&key(k), now) {
                None => int(0),
                Some(_) if *ms <= 0 => {
                    self.keys.remove(&key(k));
                    int(1)
                }
                Some(e) => {
                    e.1 = Some(now + *ms as u64);
                    int(1)
                }
            },
            Step::Persist(k) => match self.live(&key(k), now) {
                Some(e) if e.1.is_some() => {
                    e.1 = None;
                    int(1)
                }
                _ => int(0),
            },
            Step::Get(k) => self.live(&key(k), now).map_or(Frame::Null, |e| Frame::Bulk(Bytes::from(e.0.clone()))),
            Step::Pttl(k) => match self.live(&key(k), now) {
                None => int(-2),
                Some((_, None)) => int(-1),
                Some((_, Some(at))) => int((*at - now) as i64),
            },
            Step::Advance(_) | Step::ExpireCycle => Frame::ok(),
        }
    }

    fn contents(&mut self, now: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        keys.iter().filter_map(|k| self.live(k, now).map(|e| (k.as_bytes().to_vec(), e.0.clone()))).collect()
    }
}

fn command(s: &Step) -> Option<Vec<String>> {
    let key = |k: &u8| format!("k{k}");
    let v = |v: &u8| VALUES[*v as usize].to_string();
    Some(match s {
        Step::Set(k, val, None) => vec!["SET".into(), key(k), v(val)],
        Step::Set(k, val, Some(t)) => {
            vec!["SET".into(), key(k), v(val), "PX".into(), t.to_string()]
        }
        Step::Del(k) => vec!["DEL".into(), key(k)],
        Step::IncrBy(k, d) => vec!["INCRBY".into(), key(k), d.to_string()],
        Step::Append(k, val) => vec!["APPEND".into(), key(k), v(val)],
        Step::PExpire(k, ms) => vec!["PEXPIRE".into(), key(k), ms.to_string()],
        Step::Persist(k) => vec!["PERSIST".into(), key(k)],
        Step::Get(k) => vec!["GET".into(), key(k)],
        Step::Pttl(k) => vec!["PTTL".into(), key(k)],
        Step::Advance(_) | Step::ExpireCycle => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random commands on a few keys reply as a plain map would, and the log they
    /// write rebuilds the same contents in any order, with duplicates.
    #[test]
    fn commands_match_a_model(steps in proptest::collection::vec(step(), 1..120), seed in any::<u64>()) {
        let mut h = Harness::new();
        let mut model = Model::default();
        for s in &steps {
            let want = model.step(s, h.now_ms);
            match s {
                Step::Advance(ms) => h.now_ms += ms,
                Step::ExpireCycle => { h.store.expire_cycle(h.now_ms, 3, h.now_ms.is_multiple_of(2)); }
                _ => {
                    let args = command(s).unwrap();
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    prop_assert_eq!(h.run(&args), want, "{:?}", s);
                }
            }
        }
        let contents = h.contents();
        prop_assert_eq!(&contents, &model.contents(h.now_ms));
        let mut order: Vec<usize> = (0..h.log.len()).collect();
        let mut rng = seed;
        for i in (1..order.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (rng >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(replay(&h.log, &order, h.now_ms), contents);
    }
}
