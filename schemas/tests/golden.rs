//! Golden files pin the formats: each file under `golden/v<N>/` decodes to the entry
//! built here, encoding that entry gives the file's bytes exactly (entries are
//! written in the lowest version that can express them), and every file validates
//! against its version's JSON Schema. Regenerate (only for a new format version!)
//! with `XSITE_BLESS=1 cargo test -p xsite-schemas --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use uuid::Uuid;
use xsite_schemas::{
    decode, encode, CacheName, CounterBase, FieldBase, FieldValue, Float, FloatBase, Hlc, Ident, ListItem, LogEntry,
    Member, MemberSeen, Op, Place, Score, ScoredMember, SiteId,
};

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn entry(n: u128, op: Op) -> LogEntry {
    LogEntry {
        id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0000 + n),
        origin: site("site-a"),
        seq: 41 + n as u64,
        hlc: Hlc::new(1_733_000_000_000 + n as u64, 3),
        epoch: 2,
        cache: CacheName::new("default").unwrap(),
        op,
    }
}

fn cases() -> Vec<(&'static str, LogEntry)> {
    let put = |key: &[u8], value: &[u8], expire_at_ms, keep_ttl| Op::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        expire_at_ms,
        keep_ttl,
    };
    vec![
        ("put", entry(1, put(b"user:1", b"alice", None, false))),
        ("put-binary-ttl", entry(2, put(&[0, 0xff, b'\n'], &[0xc3, 0x28, 0], Some(1_733_000_060_000), false))),
        ("put-keepttl", entry(3, put(b"k", b"", None, true))),
        ("delete", entry(4, Op::Delete { key: b"user:1".to_vec() })),
        ("expire", entry(5, Op::Expire { key: b"session".to_vec(), expire_at_ms: Some(1_733_000_100_000) })),
        ("persist", entry(6, Op::Expire { key: b"session".to_vec(), expire_at_ms: None })),
        (
            "incr",
            entry(
                7,
                Op::Incr {
                    key: b"visits".to_vec(),
                    delta: -3,
                    total: 12,
                    base: CounterBase {
                        epoch: 2,
                        hlc: Hlc::new(1_732_999_999_000, 0),
                        site: site("site-b"),
                        value: 100,
                        floor: None,
                        dead: false,
                    },
                },
            ),
        ),
        (
            "heartbeat",
            entry(
                8,
                Op::Heartbeat {
                    applied: BTreeMap::from([
                        (site("site-a"), Hlc::new(1_733_000_000_000, 0)),
                        (site("site-b"), Hlc::new(1_732_999_000_000, 7)),
                    ]),
                },
            ),
        ),
    ]
}

/// Entries of format version 2: the ones only it can express.
fn cases_v2() -> Vec<(&'static str, LogEntry)> {
    let incr = |base| Op::Incr { key: b"visits".to_vec(), delta: 1, total: 1, base };
    vec![
        ("incr-after-floor", entry(9, incr(CounterBase::after_floor(Hlc::new(1_732_999_990_000, 0))))),
        (
            "incr-on-delete",
            entry(
                10,
                incr(CounterBase::on_delete(&xsite_schemas::Version::with_epoch(
                    2,
                    Hlc::new(1_732_999_995_000, 1),
                    site("site-b"),
                ))),
            ),
        ),
    ]
}

/// Entries of format version 3: transaction units. A member may use what version 2
/// added (a counter from nothing after a floor), and name another cache.
fn cases_v3() -> Vec<(&'static str, LogEntry)> {
    let member = |n: u64, cache: &str, op| Member {
        id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0100 + u128::from(n)),
        hlc: Hlc::new(1_733_000_000_100 + n, 0),
        epoch: 2,
        cache: CacheName::new(cache).unwrap(),
        op,
    };
    let unit = |n: u128, entries: Vec<Member>| {
        let hlc = entries.iter().map(|m| m.hlc).max().unwrap();
        LogEntry {
            hlc,
            cache: entries[0].cache.clone(),
            op: Op::Multi { entries },
            ..entry(n, Op::Delete { key: vec![] })
        }
    };
    vec![
        (
            "multi",
            unit(
                11,
                vec![
                    member(
                        1,
                        "default",
                        Op::Put { key: b"a".to_vec(), value: b"1".to_vec(), expire_at_ms: None, keep_ttl: false },
                    ),
                    member(2, "default", Op::Delete { key: b"b".to_vec() }),
                    member(3, "default", Op::Expire { key: b"a".to_vec(), expire_at_ms: Some(1_733_000_060_000) }),
                ],
            ),
        ),
        (
            "multi-floor-two-caches",
            unit(
                12,
                vec![
                    member(
                        4,
                        "default",
                        Op::Incr {
                            key: b"visits".to_vec(),
                            delta: 1,
                            total: 1,
                            base: CounterBase::after_floor(Hlc::new(1_732_999_990_000, 0)),
                        },
                    ),
                    member(
                        5,
                        "sessions",
                        Op::Put { key: vec![0, 0xff], value: vec![], expire_at_ms: None, keep_ttl: true },
                    ),
                ],
            ),
        ),
    ]
}

/// Entries of format version 4: hash operations, alone and in a unit.
fn cases_v4() -> Vec<(&'static str, LogEntry)> {
    let seen = BTreeMap::from([
        (site("site-a"), Hlc::new(1_733_000_000_000, 2)),
        (site("site-b"), Hlc::new(1_732_999_000_000, 0)),
    ]);
    let fv = |f: &[u8], v: &[u8]| FieldValue { field: f.to_vec(), value: v.to_vec() };
    vec![
        (
            "hset",
            entry(
                13,
                Op::HSet {
                    key: b"session:1".to_vec(),
                    fields: vec![fv(b"user", b"alice"), fv(&[0, 0xff], b"")],
                    seen: None,
                },
            ),
        ),
        (
            "hset-seen",
            entry(14, Op::HSet { key: b"session:1".to_vec(), fields: vec![fv(b"n", b"1")], seen: Some(seen.clone()) }),
        ),
        ("hdel", entry(15, Op::HDel { key: b"session:1".to_vec(), fields: vec![b"user".to_vec(), vec![]] })),
        (
            "hincr",
            entry(
                16,
                Op::HIncr {
                    key: b"session:1".to_vec(),
                    field: b"hits".to_vec(),
                    delta: -2,
                    total: 5,
                    base: FieldBase {
                        epoch: 2,
                        hlc: Hlc::new(1_732_999_999_000, 0),
                        site: site("site-b"),
                        value: 40,
                        reset: false,
                    },
                    seen: None,
                },
            ),
        ),
        (
            "hincrfloat",
            entry(
                19,
                Op::HIncrFloat {
                    key: b"session:1".to_vec(),
                    field: b"score".to_vec(),
                    delta: Float(0.1),
                    total: Float(-2.5e-7),
                    base: FloatBase {
                        epoch: 2,
                        hlc: Hlc::new(1_732_999_999_000, 0),
                        site: site("site-b"),
                        value: Float(10.5),
                        reset: true,
                    },
                    seen: Some(BTreeMap::from([(site("site-a"), Hlc::new(1_733_000_000_000, 2))])),
                },
            ),
        ),
        ("hclear", entry(17, Op::HClear { key: b"session:1".to_vec(), seen })),
        (
            "multi-hash",
            LogEntry {
                op: Op::Multi {
                    entries: vec![
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0200),
                            hlc: Hlc::new(1_733_000_000_201, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::HDel { key: b"h".to_vec(), fields: vec![b"f".to_vec()] },
                        },
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0201),
                            hlc: Hlc::new(1_733_000_000_202, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::Delete { key: b"k".to_vec() },
                        },
                    ],
                },
                hlc: Hlc::new(1_733_000_000_202, 0),
                ..entry(18, Op::Delete { key: vec![] })
            },
        ),
    ]
}

/// Entries of format version 5: set operations, alone and in a unit.
fn cases_v5() -> Vec<(&'static str, LogEntry)> {
    let seen = BTreeMap::from([
        (site("site-a"), Hlc::new(1_733_000_000_000, 2)),
        (site("site-b"), Hlc::new(1_732_999_000_000, 0)),
    ]);
    let key = || b"tags:1".to_vec();
    vec![
        ("sadd", entry(21, Op::SAdd { key: key(), members: vec![b"red".to_vec(), vec![0, 0xff]], seen: None })),
        ("sadd-seen", entry(22, Op::SAdd { key: key(), members: vec![b"blue".to_vec()], seen: Some(seen.clone()) })),
        (
            "srem",
            entry(
                23,
                Op::SRem {
                    key: key(),
                    members: vec![
                        MemberSeen { member: b"red".to_vec(), seen: seen.clone() },
                        MemberSeen { member: vec![], seen: BTreeMap::new() },
                    ],
                },
            ),
        ),
        ("sclear", entry(24, Op::SClear { key: key(), seen })),
        (
            "multi-set",
            LogEntry {
                op: Op::Multi {
                    entries: vec![
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0300),
                            hlc: Hlc::new(1_733_000_000_301, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::SAdd { key: b"s".to_vec(), members: vec![b"m".to_vec()], seen: None },
                        },
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0301),
                            hlc: Hlc::new(1_733_000_000_302, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::HDel { key: b"h".to_vec(), fields: vec![b"f".to_vec()] },
                        },
                    ],
                },
                hlc: Hlc::new(1_733_000_000_302, 0),
                ..entry(25, Op::Delete { key: vec![] })
            },
        ),
    ]
}

/// Entries of format version 6: sorted set operations, alone and in a unit.
fn cases_v6() -> Vec<(&'static str, LogEntry)> {
    let seen = BTreeMap::from([(site("site-b"), Hlc::new(1_732_999_000_000, 0))]);
    let key = || b"board".to_vec();
    let scored = |m: &[u8], score| ScoredMember { member: m.to_vec(), score: Score(score) };
    vec![
        (
            "zadd",
            entry(31, Op::ZAdd { key: key(), members: vec![scored(b"ada", 1.5), scored(&[0xff], -0.1)], seen: None }),
        ),
        (
            "zadd-seen",
            entry(
                32,
                Op::ZAdd {
                    key: key(),
                    members: vec![
                        scored(b"bob", 1e300),
                        scored(b"top", f64::INFINITY),
                        scored(b"low", f64::NEG_INFINITY),
                    ],
                    seen: Some(seen.clone()),
                },
            ),
        ),
        (
            "zincr",
            entry(
                33,
                Op::ZIncr {
                    key: key(),
                    member: b"ada".to_vec(),
                    delta: Float(2.0),
                    total: Float(4.5),
                    base: FloatBase {
                        epoch: 2,
                        hlc: Hlc::new(1_732_999_999_000, 0),
                        site: site("site-b"),
                        value: Float(1.5),
                        reset: false,
                    },
                    seen: None,
                },
            ),
        ),
        (
            "zrem",
            entry(
                33 + 1,
                Op::ZRem { key: key(), members: vec![MemberSeen { member: b"bob".to_vec(), seen: seen.clone() }] },
            ),
        ),
        ("zclear", entry(35, Op::ZClear { key: key(), seen })),
        (
            "multi-zset",
            LogEntry {
                op: Op::Multi {
                    entries: vec![
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0400),
                            hlc: Hlc::new(1_733_000_000_401, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::ZAdd { key: b"z".to_vec(), members: vec![scored(b"m", 3.0)], seen: None },
                        },
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0401),
                            hlc: Hlc::new(1_733_000_000_402, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::SAdd { key: b"s".to_vec(), members: vec![b"m".to_vec()], seen: None },
                        },
                    ],
                },
                hlc: Hlc::new(1_733_000_000_402, 0),
                ..entry(36, Op::Delete { key: vec![] })
            },
        ),
    ]
}

/// Entries of format version 7: list operations, alone and in a unit. A place's
/// last ident is its element's own id (the put's version and the item's index);
/// the idents before it are steps of other elements (here site-b's).
fn cases_v7() -> Vec<(&'static str, LogEntry)> {
    let seen = BTreeMap::from([
        (site("site-a"), Hlc::new(1_733_000_000_000, 2)),
        (site("site-b"), Hlc::new(1_732_999_000_000, 0)),
    ]);
    let key = || b"queue".to_vec();
    // The id of item `n` of the put `e` (whose version is that of entry `e`).
    let own = |d: i64, e: u64, n: u32| Ident {
        d,
        epoch: 2,
        hlc: Hlc::new(1_733_000_000_000 + e, 3),
        site: site("site-a"),
        n,
    };
    let theirs = |d: i64, n: u32| Ident { d, epoch: 2, hlc: Hlc::new(1_732_999_999_000, 0), site: site("site-b"), n };
    let item = |place: Vec<Ident>, value: &[u8]| ListItem { place: Place(place), value: value.to_vec() };
    vec![
        (
            "lput",
            entry(
                41,
                Op::LPut {
                    key: key(),
                    items: vec![
                        item(vec![own(3, 41, 0)], b"job-1"),
                        item(vec![theirs(1, 0), own(-1, 41, 1)], &[0, 0xff]),
                    ],
                    seen: None,
                },
            ),
        ),
        (
            "lput-seen",
            entry(42, Op::LPut { key: key(), items: vec![item(vec![own(0, 42, 0)], b"")], seen: Some(seen.clone()) }),
        ),
        (
            "lrem",
            entry(
                43,
                Op::LRem {
                    key: key(),
                    places: vec![Place(vec![theirs(1, 0)]), Place(vec![theirs(1, 0), own(-1, 41, 1)])],
                },
            ),
        ),
        ("lclear", entry(44, Op::LClear { key: key(), seen })),
        (
            "multi-list",
            LogEntry {
                op: Op::Multi {
                    entries: vec![
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0500),
                            hlc: Hlc::new(1_733_000_000_501, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::LRem { key: b"src".to_vec(), places: vec![Place(vec![theirs(-4, 2)])] },
                        },
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0501),
                            hlc: Hlc::new(1_733_000_000_502, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::LPut {
                                key: b"dst".to_vec(),
                                items: vec![item(
                                    vec![Ident {
                                        d: 0,
                                        epoch: 2,
                                        hlc: Hlc::new(1_733_000_000_502, 0),
                                        site: site("site-a"),
                                        n: 0,
                                    }],
                                    b"job-7",
                                )],
                                seen: None,
                            },
                        },
                        Member {
                            id: Uuid::from_u128(0x0193_6d3e_8a4b_7c2d_9e1f_0000_0000_0502),
                            hlc: Hlc::new(1_733_000_000_503, 0),
                            epoch: 2,
                            cache: CacheName::new("default").unwrap(),
                            op: Op::ZAdd {
                                key: b"z".to_vec(),
                                members: vec![ScoredMember { member: b"m".to_vec(), score: Score(3.0) }],
                                seen: None,
                            },
                        },
                    ],
                },
                hlc: Hlc::new(1_733_000_000_503, 0),
                ..entry(45, Op::Delete { key: vec![] })
            },
        ),
    ]
}

fn golden_dir(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("golden/v{version}"))
}

fn all_cases() -> Vec<(u32, &'static str, LogEntry)> {
    let v1 = cases().into_iter().map(|(n, e)| (1, n, e));
    let v2 = cases_v2().into_iter().map(|(n, e)| (2, n, e));
    let v3 = cases_v3().into_iter().map(|(n, e)| (3, n, e));
    let v4 = cases_v4().into_iter().map(|(n, e)| (4, n, e));
    let v5 = cases_v5().into_iter().map(|(n, e)| (5, n, e));
    let v6 = cases_v6().into_iter().map(|(n, e)| (6, n, e));
    let v7 = cases_v7().into_iter().map(|(n, e)| (7, n, e));
    v1.chain(v2).chain(v3).chain(v4).chain(v5).chain(v6).chain(v7).collect()
}

#[test]
fn golden_files_pin_every_format_version() {
    let bless = std::env::var_os("XSITE_BLESS").is_some();
    for (version, name, expected) in all_cases() {
        assert_eq!(xsite_schemas::format_version_of(&expected), version, "{name}");
        let path = golden_dir(version).join(format!("{name}.json"));
        if bless {
            std::fs::create_dir_all(golden_dir(version)).unwrap();
        }
        let encoded = encode(&expected);
        if bless {
            std::fs::write(&path, &encoded).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(decode(&bytes).unwrap(), expected, "{name}: old bytes must still decode");
        assert_eq!(String::from_utf8(encoded).unwrap(), String::from_utf8(bytes).unwrap(), "{name}: encoding changed");
    }
}

fn validator(version: u32) -> jsonschema::Validator {
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("log-entry.v{version}.schema.json"));
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn golden_files_match_the_json_schema() {
    for (version, name, _) in all_cases() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden_dir(version).join(format!("{name}.json"))).unwrap()).unwrap();
        let errors: Vec<String> = validator(version).iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    let validator = validator(1);
    // The schema rejects what the decoder rejects.
    let mut bad: serde_json::Value = serde_json::from_slice(&encode(&cases()[0].1)).unwrap();
    bad["version"] = 2.into();
    assert!(!validator.is_valid(&bad));
    let mut floor: serde_json::Value = serde_json::from_slice(&encode(&cases_v2()[0].1)).unwrap();
    floor["version"] = 1.into();
    assert!(!validator.is_valid(&floor), "version 1 has no floor base");
    bad["version"] = 1.into();
    bad["extra"] = true.into();
    assert!(!validator.is_valid(&bad));
    let mut unit: serde_json::Value = serde_json::from_slice(&encode(&cases_v3()[0].1)).unwrap();
    unit["version"] = 2.into();
    assert!(!self::validator(2).is_valid(&unit), "version 2 has no transaction unit");
    unit["version"] = 3.into();
    let v3 = self::validator(3);
    assert!(v3.is_valid(&unit));
    unit["op"]["entries"][0]["origin"] = "site-a".into();
    assert!(!v3.is_valid(&unit), "a member has no origin of its own");
    unit["op"]["entries"][0].as_object_mut().unwrap().remove("origin");
    unit["op"]["entries"].as_array_mut().unwrap().truncate(1);
    assert!(!v3.is_valid(&unit), "a unit has at least two members");
    let mut nested: serde_json::Value = serde_json::from_slice(&encode(&cases_v3()[0].1)).unwrap();
    nested["op"]["entries"][1]["op"] = nested["op"].clone();
    assert!(!v3.is_valid(&nested), "a member is not a unit");
    let mut hash: serde_json::Value = serde_json::from_slice(&encode(&cases_v4()[0].1)).unwrap();
    assert!(
        !v3.is_valid(&{
            let mut h = hash.clone();
            h["version"] = 3.into();
            h
        }),
        "version 3 has no hash operation"
    );
    let v4 = self::validator(4);
    assert!(v4.is_valid(&hash));
    hash["op"]["fields"] = serde_json::json!([]);
    assert!(!v4.is_valid(&hash), "a hash set has at least one field");
    assert!(decode(&serde_json::to_vec(&hash).unwrap()).is_err(), "the decoder refuses it too");
    let mut set: serde_json::Value = serde_json::from_slice(&encode(&cases_v5()[0].1)).unwrap();
    set["version"] = 4.into();
    assert!(!v4.is_valid(&set), "version 4 has no set operation");
    assert!(decode(&serde_json::to_vec(&set).unwrap()).is_err(), "nor does the decoder read one at 4");
    set["version"] = 5.into();
    let v5 = self::validator(5);
    assert!(v5.is_valid(&set));
    set["op"]["members"] = serde_json::json!([]);
    assert!(!v5.is_valid(&set), "a set add has at least one member");
    assert!(decode(&serde_json::to_vec(&set).unwrap()).is_err(), "the decoder refuses it too");
    let mut zset: serde_json::Value = serde_json::from_slice(&encode(&cases_v6()[0].1)).unwrap();
    zset["version"] = 5.into();
    assert!(!v5.is_valid(&zset), "version 5 has no sorted set operation");
    assert!(decode(&serde_json::to_vec(&zset).unwrap()).is_err(), "nor does the decoder read one at 5");
    zset["version"] = 6.into();
    let v6 = self::validator(6);
    assert!(v6.is_valid(&zset));
    zset["op"]["members"][0]["score"] = "1".into();
    assert!(!v6.is_valid(&zset), "a score is a number");
    assert!(decode(&serde_json::to_vec(&zset).unwrap()).is_err(), "the decoder refuses it too");
    let mut list: serde_json::Value = serde_json::from_slice(&encode(&cases_v7()[0].1)).unwrap();
    list["version"] = 6.into();
    assert!(!v6.is_valid(&list), "version 6 has no list operation");
    assert!(decode(&serde_json::to_vec(&list).unwrap()).is_err(), "nor does the decoder read one at 6");
    list["version"] = 7.into();
    let v7 = self::validator(7);
    assert!(v7.is_valid(&list));
    let refused = |f: &dyn Fn(&mut serde_json::Value), why: &str| {
        let mut bad = list.clone();
        f(&mut bad);
        assert!(!v7.is_valid(&bad), "{why}");
        assert!(decode(&serde_json::to_vec(&bad).unwrap()).is_err(), "{why}: the decoder refuses it too");
    };
    refused(&|l| l["op"]["items"][1]["place"] = serde_json::json!([]), "a place has at least one ident");
    refused(&|l| l["op"]["items"][0]["place"][0]["d"] = 1.5.into(), "a digit is an integer");
    refused(&|l| l["op"]["items"][0]["place"][0]["n"] = (-1).into(), "an index is not negative");
    refused(&|l| l["op"]["items"][0]["place"][0]["extra"] = true.into(), "an ident has no other field");
    refused(&|l| l["op"]["items"] = serde_json::json!([]), "a list put has at least one element");
    let mut rem: serde_json::Value = serde_json::from_slice(&encode(&cases_v7()[2].1)).unwrap();
    assert!(v7.is_valid(&rem));
    rem["op"]["places"] = serde_json::json!([]);
    assert!(!v7.is_valid(&rem), "a list remove has at least one place");
    assert!(decode(&serde_json::to_vec(&rem).unwrap()).is_err(), "the decoder refuses it too");
}
