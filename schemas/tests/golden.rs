//! Golden files pin format v1: each file under `golden/v1/` decodes to the entry
//! built here, encoding that entry gives the file's bytes exactly, and every file
//! validates against the JSON Schema. Regenerate (only for a new format version!)
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

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/v1")
}

#[test]
fn golden_files_pin_format_v1() {
    let bless = std::env::var_os("XSITE_BLESS").is_some();
    for (name, expected) in cases() {
        let path = golden_dir().join(format!("{name}.json"));
        let encoded = encode(&expected);
        if bless {
            std::fs::write(&path, &encoded).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(decode(&bytes).unwrap(), expected, "{name}: old bytes must still decode");
        assert_eq!(String::from_utf8(encoded).unwrap(), String::from_utf8(bytes).unwrap(), "{name}: encoding changed");
    }
}

#[test]
fn golden_files_match_the_json_schema() {
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("log-entry.v1.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for (name, _) in cases() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden_dir().join(format!("{name}.json"))).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    // The schema rejects what the decoder rejects.
    let mut bad: serde_json::Value = serde_json::from_slice(&encode(&cases()[0].1)).unwrap();
    bad["version"] = 2.into();
    assert!(!validator.is_valid(&bad));
    bad["version"] = 1.into();
    bad["extra"] = true.into();
    assert!(!validator.is_valid(&bad));
}
