//! A reader of an older build refuses what it cannot read, clearly: the version-2
//! reader, frozen as it shipped (`old/entry_v2.rs` is `schemas/src/entry.rs` before
//! format version 3, unchanged), decodes every golden file of versions 1 and 2 and
//! refuses every transaction unit by its version, with an error that names the
//! version found and the versions it understands. The consumer dead-letters a
//! message it cannot decode with that error as the reason.

mod hlc {
    pub use xsite_schemas::hlc::*;
}
mod names {
    pub use xsite_schemas::names::*;
}
#[allow(dead_code, clippy::all)]
#[path = "old/entry_v2.rs"]
mod entry_v2;

use std::path::PathBuf;

fn golden(version: u32) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("golden/v{version}"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn the_version_2_reader_reads_versions_1_and_2_and_refuses_units_by_their_version() {
    for version in [1, 2] {
        for (name, bytes) in golden(version) {
            let old = entry_v2::decode(&bytes).unwrap_or_else(|e| panic!("v{version}/{name}: {e}"));
            let new = xsite_schemas::decode(&bytes).unwrap();
            assert_eq!(serde_json::to_value(&old).unwrap(), serde_json::to_value(&new).unwrap(), "v{version}/{name}");
        }
    }
    let units = golden(3);
    assert!(!units.is_empty());
    for (name, bytes) in units {
        let err = entry_v2::decode(&bytes).expect_err(&name);
        assert!(
            matches!(err, entry_v2::DecodeError::UnsupportedVersion { ref found } if found == "3"),
            "{name}: {err}"
        );
        assert_eq!(
            err.to_string(),
            "log entry format version 3 is not supported (this reader understands versions 1 to 2)",
            "{name}"
        );
    }
}

#[test]
fn what_needs_nothing_new_is_still_written_for_the_old_reader() {
    // Every entry that is not a unit is written as before, so a version-2 site
    // reads it: the single entries of a transaction shipped one by one included.
    for (name, bytes) in golden(1).into_iter().chain(golden(2)) {
        let entry = xsite_schemas::decode(&bytes).unwrap();
        let again = xsite_schemas::encode(&entry);
        assert_eq!(again, bytes, "{name}");
        entry_v2::decode(&again).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, bytes) in golden(3) {
        for member in xsite_schemas::decode(&bytes).unwrap().members() {
            entry_v2::decode(&xsite_schemas::encode(&member)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
