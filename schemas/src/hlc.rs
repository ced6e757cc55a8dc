//! Hybrid logical clock.
//!
//! An [`Hlc`] is one `u64`: the upper 48 bits are wall-clock milliseconds since the
//! Unix epoch, the lower 16 bits a logical counter. Ordering the `u64` orders by
//! `(wall_ms, logical)`. On the wire (JSON) it is that `u64` as a number.
//!
//! Rules ([`HlcClock`]):
//! - local event: `hlc = max(now, last + 1)` — strictly increasing even when the
//!   wall clock stalls or steps back; a logical overflow carries into `wall_ms`.
//! - remote timestamp `r`: `last = max(last, min(r, now + max_skew))`. A remote
//!   timestamp more than `max_skew_ms` ahead of the local wall clock is still
//!   applied by the caller but does not drag this clock forward past the bound;
//!   [`Observed::SkewExceeded`] tells the caller to count and log it.
//! - restart: the node builds the clock with a floor above the highest timestamp in
//!   its WAL and snapshot ([`HlcClock::new`]), so it never reissues a timestamp.

use crate::names::SiteId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// Largest representable wall-clock milliseconds (48 bits).
pub const WALL_MS_MAX: u64 = (1 << 48) - 1;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(u64);

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    pub fn new(wall_ms: u64, logical: u16) -> Self {
        Hlc((wall_ms.min(WALL_MS_MAX) << LOGICAL_BITS) | u64::from(logical))
    }
    pub fn from_u64(raw: u64) -> Self {
        Hlc(raw)
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }
    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
    /// The next timestamp after this one.
    pub fn next(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// A write's place in the one total order every site agrees on: by epoch (raised
/// by each active-passive promotion, always 0 for active-active caches), then by
/// timestamp, then by origin site id. Two different writes never compare equal (one
/// site never issues the same timestamp twice). Putting the epoch first fences a
/// demoted primary: whatever it wrote in the old epoch loses to the new primary.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Version {
    pub epoch: u64,
    pub hlc: Hlc,
    pub site: SiteId,
}

impl Version {
    /// A version in epoch 0 (active-active caches).
    pub fn new(hlc: Hlc, site: SiteId) -> Self {
        Version { epoch: 0, hlc, site }
    }

    pub fn with_epoch(epoch: u64, hlc: Hlc, site: SiteId) -> Self {
        Version { epoch, hlc, site }
    }

    /// The version of "never written": below every real write (whose timestamp is
    /// above zero), and the same at every site.
    pub fn zero() -> Version {
        static ZERO_SITE: std::sync::OnceLock<SiteId> = std::sync::OnceLock::new();
        let site = ZERO_SITE.get_or_init(|| SiteId::new("0").expect("valid site id"));
        Version { epoch: 0, hlc: Hlc::ZERO, site: site.clone() }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch == 0 {
            write!(f, "{}@{}", self.hlc, self.site)
        } else {
            write!(f, "{}@{}#{}", self.hlc, self.site, self.epoch)
        }
    }
}

/// What observing a remote timestamp did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Within the skew bound; the clock is now at least the remote timestamp.
    Accepted,
    /// The remote timestamp is `ahead_ms` beyond `now + max_skew`; the clock moved
    /// only to the bound. The entry is still applied; the caller counts and logs it.
    SkewExceeded { ahead_ms: u64 },
}

/// Issues strictly increasing [`Hlc`]s. Lock-free; shared by all connections.
#[derive(Debug)]
pub struct HlcClock {
    last: AtomicU64,
    max_skew_ms: u64,
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl HlcClock {
    /// A clock that will only issue timestamps above `floor` (the highest timestamp
    /// found in the WAL and snapshot at start-up).
    pub fn new(floor: Hlc, max_skew_ms: u64) -> Self {
        HlcClock { last: AtomicU64::new(floor.as_u64()), max_skew_ms }
    }

    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// The highest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        Hlc(self.last.load(Ordering::Acquire))
    }

    /// A new timestamp for a local event.
    pub fn now(&self) -> Hlc {
        self.now_at(wall_clock_ms())
    }

    /// A new timestamp for a local event, with the wall clock given (for tests).
    pub fn now_at(&self, wall_ms: u64) -> Hlc {
        let physical = Hlc::new(wall_ms, 0).as_u64();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = physical.max(last.saturating_add(1));
            match self.last.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Hlc(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// Never issue a timestamp at or below `floor` again: a reading of this clock
    /// kept from before a restart (a watermark it promised other sites).
    pub fn raise_to(&self, floor: Hlc) {
        self.last.fetch_max(floor.as_u64(), Ordering::AcqRel);
    }

    /// Observe a remote timestamp.
    pub fn observe(&self, remote: Hlc) -> Observed {
        self.observe_at(remote, wall_clock_ms())
    }

    /// Observe a remote timestamp, with the wall clock given (for tests).
    pub fn observe_at(&self, remote: Hlc, wall_ms: u64) -> Observed {
        let bound = Hlc::new(wall_ms.saturating_add(self.max_skew_ms), u16::MAX);
        let target = remote.min(bound);
        self.last.fetch_max(target.as_u64(), Ordering::AcqRel);
        if remote > bound {
            let ahead_ms = remote.wall_ms().saturating_sub(bound.wall_ms());
            Observed::SkewExceeded { ahead_ms: ahead_ms.max(1) }
        } else {
            Observed::Accepted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_packs_wall_and_logical() {
        let h = Hlc::new(1_700_000_000_123, 7);
        assert_eq!(h.wall_ms(), 1_700_000_000_123);
        assert_eq!(h.logical(), 7);
        assert_eq!(h.as_u64(), (1_700_000_000_123 << 16) | 7);
        assert_eq!(format!("{h}"), "1700000000123.7");
    }

    #[test]
    fn clock_does_not_go_back_with_the_wall_clock() {
        let c = HlcClock::new(Hlc::ZERO, 1000);
        let a = c.now_at(10_000);
        let b = c.now_at(9_000);
        assert!(b > a);
        assert_eq!(b.wall_ms(), 10_000);
        assert_eq!(b.logical(), 1);
    }

    #[test]
    fn floor_survives_restart() {
        let c = HlcClock::new(Hlc::new(50_000, 3), 1000);
        assert!(c.now_at(1_000) > Hlc::new(50_000, 3));
    }

    #[test]
    fn logical_overflow_carries_into_wall() {
        let c = HlcClock::new(Hlc::new(5, u16::MAX), 1000);
        assert_eq!(c.now_at(0), Hlc::new(6, 0));
    }

    #[test]
    fn remote_within_skew_moves_clock() {
        let c = HlcClock::new(Hlc::ZERO, 1000);
        assert_eq!(c.observe_at(Hlc::new(10_500, 2), 10_000), Observed::Accepted);
        assert!(c.now_at(10_000) > Hlc::new(10_500, 2));
    }

    #[test]
    fn remote_beyond_skew_is_bounded_and_reported() {
        let c = HlcClock::new(Hlc::ZERO, 1000);
        let r = c.observe_at(Hlc::new(100_000, 0), 10_000);
        assert_eq!(r, Observed::SkewExceeded { ahead_ms: 89_000 });
        assert_eq!(c.last().wall_ms(), 11_000);
    }

    proptest! {
        #[test]
        fn issued_timestamps_strictly_increase(
            steps in proptest::collection::vec((0u64..1_000_000, any::<bool>(), 0u64..2_000_000), 1..200)
        ) {
            let c = HlcClock::new(Hlc::ZERO, 5_000);
            let mut prev = Hlc::ZERO;
            for (wall, remote, rwall) in steps {
                if remote {
                    c.observe_at(Hlc::new(rwall, 0), wall);
                    prop_assert!(c.last() >= prev);
                    prev = c.last();
                } else {
                    let h = c.now_at(wall);
                    prop_assert!(h > prev);
                    prop_assert!(h.wall_ms() >= wall.min(WALL_MS_MAX));
                    prev = h;
                }
            }
        }
    }
}
