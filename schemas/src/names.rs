//! Validated names: site ids and cache names.
//!
//! Both are 1..=64 bytes of `[a-z0-9_-]`, starting with a letter or digit. Site ids
//! order lexicographically by their bytes; that order breaks HLC ties, so it must be
//! the same at every site (it is: it depends on the name only).

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::sync::Arc;

/// Maximum length of a site id or cache name, in bytes.
pub const NAME_LEN_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} '{name}' is longer than {NAME_LEN_MAX} bytes")]
    TooLong { kind: &'static str, name: String },
    #[error("{kind} '{name}' may only contain a-z, 0-9, '_' and '-', and must start with a letter or digit")]
    BadChar { kind: &'static str, name: String },
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > NAME_LEN_MAX {
        return Err(NameError::TooLong { kind, name: name.to_string() });
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || !name.chars().all(ok_char) {
        return Err(NameError::BadChar { kind, name: name.to_string() });
    }
    Ok(())
}

/// Names of one kind kept for sharing at most; past that a name gets its own copy
/// (a stream of made-up names cannot grow the table without bound).
pub const INTERNED_NAMES_MAX: usize = 4096;

/// Each interned name, by its text.
/// Hashed by foldhash (seeded per process): a decoded entry looks up two names.
type Names = std::collections::HashMap<Box<str>, Arc<Box<str>>, foldhash::fast::RandomState>;

/// One kind's interned names.
struct Interned(std::sync::Mutex<Option<Names>>);

impl Interned {
    const fn new() -> Interned {
        Interned(std::sync::Mutex::new(None))
    }

    /// The shared copy of `name` (allocated only the first time it is seen).
    fn get(&self, name: &str) -> Arc<Box<str>> {
        let mut names = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = names.get_or_insert_with(Default::default);
        if let Some(shared) = names.get(name) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(Box::<str>::from(name));
        if names.len() < INTERNED_NAMES_MAX {
            names.insert(shared.as_ref().clone(), Arc::clone(&shared));
        }
        shared
    }
}

macro_rules! name_type {
    ($ty:ident, $kind:literal) => {
        /// Cheap to clone, and 8 bytes (a pointer to a shared name): records hold one
        /// per version. Names are interned (up to [`INTERNED_NAMES_MAX`] of each
        /// kind), so the records joined from a million remote entries share one name
        /// rather than holding a million copies.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $ty(Arc<Box<str>>);

        impl $ty {
            pub fn new(name: impl AsRef<str>) -> Result<Self, NameError> {
                let name = name.as_ref();
                validate($kind, name)?;
                static NAMES: Interned = Interned::new();
                Ok(Self(NAMES.get(name)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(SiteId, "site id");
name_type!(CacheName, "cache name");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_names() {
        assert!(SiteId::new("site-a").is_ok());
        assert!(SiteId::new("0east_1").is_ok());
        assert_eq!(SiteId::new(""), Err(NameError::Empty { kind: "site id" }));
        assert!(matches!(SiteId::new("Site"), Err(NameError::BadChar { .. })));
        assert!(matches!(SiteId::new("-a"), Err(NameError::BadChar { .. })));
        assert!(matches!(CacheName::new("a".repeat(65)), Err(NameError::TooLong { .. })));
    }

    #[test]
    fn deserialize_validates() {
        let err = serde_json::from_str::<SiteId>("\"A B\"").unwrap_err();
        assert!(err.to_string().contains("site id 'A B'"), "{err}");
    }

    #[test]
    fn site_order_is_bytewise() {
        let a = SiteId::new("a").unwrap();
        let b = SiteId::new("b").unwrap();
        let aa = SiteId::new("aa").unwrap();
        assert!(a < aa && aa < b);
    }

    #[test]
    fn a_name_is_one_pointer_shared_by_every_copy() {
        assert_eq!(std::mem::size_of::<SiteId>(), 8);
        let (a, b) = (SiteId::new("interned-x").unwrap(), SiteId::new(String::from("interned-x")).unwrap());
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let c = CacheName::new("interned-x").unwrap();
        assert_eq!(c.as_str(), a.as_str());
    }
}
