//! [`SmallBytes`]: a byte string held inline when it is short, in one exact heap
//! allocation when it is not. A hash field's value (and so a sorted set member's
//! 8-byte score register) is one: most are short, and inline they cost no
//! allocation, in the 24 bytes a `Vec<u8>` takes for its pointer alone.
//!
//! Only the memory layout is new: it compares, prints and serializes as the bytes
//! it holds, as a `Vec<u8>` does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::Deref;

/// The longest byte string held inline: what fits beside the variant tag and the
/// length in 24 bytes.
pub const INLINE_BYTES_MAX: usize = 22;

/// A byte string: inline up to [`INLINE_BYTES_MAX`] bytes, else a boxed slice.
/// Every string has one representation (a short one is always inline).
#[derive(Clone)]
pub struct SmallBytes(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_BYTES_MAX] },
    Heap(Box<[u8]>),
}

impl SmallBytes {
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }

    /// The bytes it allocated on the heap (none when inline); what the allocator
    /// hands out for them may be rounded up.
    pub fn heap_len(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(b) => b.len(),
        }
    }
}

impl From<&[u8]> for SmallBytes {
    fn from(b: &[u8]) -> SmallBytes {
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE_BYTES_MAX => {
                let mut bytes = [0; INLINE_BYTES_MAX];
                bytes[..b.len()].copy_from_slice(b);
                SmallBytes(Repr::Inline { len, bytes })
            }
            _ => SmallBytes(Repr::Heap(b.into())),
        }
    }
}

impl From<Vec<u8>> for SmallBytes {
    /// Takes the vector's allocation when it is long (shrunk to fit), copies it
    /// inline when it is short.
    fn from(v: Vec<u8>) -> SmallBytes {
        if v.len() <= INLINE_BYTES_MAX {
            SmallBytes::from(v.as_slice())
        } else {
            SmallBytes(Repr::Heap(v.into_boxed_slice()))
        }
    }
}

impl Deref for SmallBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SmallBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for SmallBytes {
    fn eq(&self, other: &SmallBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SmallBytes {}

impl std::fmt::Debug for SmallBytes {
    /// As a `Vec<u8>` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl Serialize for SmallBytes {
    /// As a `Vec<u8>` serializes: a sequence of bytes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de> Deserialize<'de> for SmallBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SmallBytes, D::Error> {
        Vec::<u8>::deserialize(d).map(SmallBytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_takes_24_bytes_and_lengths_around_the_inline_limit_round_trip() {
        assert_eq!(std::mem::size_of::<SmallBytes>(), 24);
        for len in [0, 1, 8, INLINE_BYTES_MAX - 1, INLINE_BYTES_MAX, INLINE_BYTES_MAX + 1, 300] {
            let v: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            for b in [SmallBytes::from(v.clone()), SmallBytes::from(v.as_slice())] {
                assert_eq!(b.as_slice(), v.as_slice());
                assert_eq!(b.heap_len(), if len <= INLINE_BYTES_MAX { 0 } else { len });
                assert_eq!(format!("{b:?}"), format!("{v:?}"));
            }
        }
    }

    #[test]
    fn it_serializes_as_a_vec_of_bytes() {
        for v in [vec![], b"value:0000000001".to_vec(), vec![7; 40]] {
            let json = serde_json::to_string(&SmallBytes::from(v.clone())).unwrap();
            assert_eq!(json, serde_json::to_string(&v).unwrap());
            assert_eq!(serde_json::from_str::<SmallBytes>(&json).unwrap().as_slice(), v.as_slice());
        }
    }
}
