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

macro_rules! name_type {
    ($ty:ident, $kind:literal) => {
        /// Cheap to clone (shared string): records hold one per version.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $ty(Arc<str>);

        impl $ty {
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name.into()))
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
}
