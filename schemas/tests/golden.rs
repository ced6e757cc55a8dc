//! Golden files pin the formats: each file under `golden/v<N>/` decodes to the entry
//! built here, encoding that entry gives the file's bytes exactly (entries are
//! written in the lowest version that can express them), and every file validates
//! against its version's JSON Schema. Regenerate (only for a new format version!)
//! with `XSITE_BLESS=1 cargo test -p xsite-schemas --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use uuid::Uuid;
use xsite_schemas::{decode, encode, CacheName, CounterBase, Hlc, LogEntry, Op, SiteId};

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

fn golden_dir(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("golden/v{version}"))
}

fn all_cases() -> Vec<(u32, &'static str, LogEntry)> {
    let v1 = cases().into_iter().map(|(n, e)| (1, n, e));
    v1.chain(cases_v2().into_iter().map(|(n, e)| (2, n, e))).collect()
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
}
