//! Replication lag of each (origin, partition), measured from offsets and this
//! node's own clock only — never from another site's clock, so clock skew between
//! sites does not enter it.
//!
//! Every health check (see [`super::health`]) reads each partition's end offset (the
//! high watermark: the offset the next entry will get). The lag in entries is that
//! end minus the next offset to apply here (after the last offset applied and
//! durable, at least the partition's first offset still held). The lag in time is
//! how long ago, by this node's monotonic clock, the oldest entry not applied yet
//! reached the broker: the node keeps, per partition, the times at which it saw the
//! end offset move (at most [`SAMPLES_MAX`] of them, the oldest always kept), and
//! interpolates between the two checks around that entry's offset. A caught-up
//! partition lags 0; the resolution is the check interval, finer by interpolation.
//! The lag of the first check after a start is a lower bound (what was there
//! before was seen first then).
//!
//! Exposed per (origin, partition) as `xsite_replication_lag_ms`,
//! `xsite_replication_lag_entries` and the histogram `xsite_replication_lag_seconds`
//! (one observation per check).

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xsite_schemas::SiteId;

/// Times the end offset of a partition was seen to move, kept at most (the oldest
/// not yet applied is always kept; the ones after it are thinned).
pub const SAMPLES_MAX: usize = 64;

/// Upper bounds of the lag histogram's buckets, in seconds.
pub const LAG_BUCKETS_SECONDS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Labels of a lag metric: `origin` and `partition`.
pub type LagLabels = Vec<(String, String)>;

fn new_histogram() -> Histogram {
    Histogram::new(LAG_BUCKETS_SECONDS)
}

/// `xsite_replication_lag_seconds`, one series per (origin, partition).
pub type LagHistogram = Family<LagLabels, Histogram, fn() -> Histogram>;

pub fn lag_histogram() -> LagHistogram {
    Family::new_with_constructor(new_histogram)
}

/// One partition's offsets: the first still held and the end (the next offset to
/// be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub low: i64,
    pub high: i64,
}

/// What status and metrics show of one partition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The end offset at the last successful check.
    pub end_offset: i64,
    /// The next offset to apply here.
    pub next_offset: i64,
    pub lag_entries: u64,
    pub lag_ms: u64,
}

/// An end offset, when a check first saw it and when one last did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    end: i64,
    first_seen: Instant,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Partition {
    /// Oldest first, ends increasing.
    samples: VecDeque<Sample>,
    /// The first offset still held, at the last successful check.
    low: i64,
    shown: Option<PartitionLag>,
}

impl Partition {
    fn saw(&mut self, now: Instant, o: Offsets) {
        self.low = o.low;
        match self.samples.back_mut() {
            Some(last) if last.end == o.high => {
                last.last_seen = now;
                return;
            }
            // The topic was re-created: what was seen of it says nothing anymore.
            Some(last) if last.end > o.high => self.samples.clear(),
            _ => {}
        }
        if self.samples.len() >= SAMPLES_MAX {
            self.samples.remove(1);
        }
        self.samples.push_back(Sample { end: o.high, first_seen: now, last_seen: now });
    }

    /// When offset `next` reached the broker — between the last check that did not
    /// see it and the first that did, interpolated by offset — or None when no
    /// check saw it yet.
    fn arrival(&self, next: i64) -> Option<Instant> {
        let k = self.samples.iter().position(|s| s.end > next)?;
        let after = self.samples[k];
        let Some(before) = k.checked_sub(1).and_then(|i| self.samples.get(i)) else { return Some(after.first_seen) };
        let fraction = (next + 1 - before.end) as f64 / (after.end - before.end) as f64;
        let span = after.first_seen.saturating_duration_since(before.last_seen);
        Some(before.last_seen + span.mul_f64(fraction.clamp(0.0, 1.0)))
    }

    /// Forgets the samples `next` has passed, but the last of them (the start of
    /// the interval the next entry arrived in).
    fn forget_below(&mut self, next: i64) {
        while self.samples.get(1).is_some_and(|s| s.end <= next) {
            self.samples.pop_front();
        }
    }
}

/// The lag of one origin's partitions.
#[derive(Debug)]
pub struct LagBook {
    origin: SiteId,
    partitions: Mutex<BTreeMap<i32, Partition>>,
    histogram: LagHistogram,
}

impl LagBook {
    pub fn new(origin: SiteId, histogram: LagHistogram) -> LagBook {
        LagBook { origin, partitions: Mutex::new(BTreeMap::new()), histogram }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Partition>> {
        self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in a check made at `now`: the partitions' offsets if the probe
    /// succeeded, and the last offset applied (durably) here per partition.
    pub fn record(&self, now: Instant, offsets: Option<&[Offsets]>, applied: &BTreeMap<i32, i64>) {
        let mut partitions = self.lock();
        for (p, o) in offsets.unwrap_or_default().iter().enumerate() {
            partitions.entry(p as i32).or_default().saw(now, *o);
        }
        for (&p, part) in partitions.iter_mut() {
            let Some(end) = part.samples.back().map(|s| s.end) else { continue };
            let next = applied.get(&p).map_or(0, |a| a + 1).max(part.low);
            let lag_ms = part.arrival(next).map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64);
            part.forget_below(next);
            let lag_entries = end.saturating_sub(next).max(0) as u64;
            let labels =
                vec![("origin".to_string(), self.origin.to_string()), ("partition".to_string(), p.to_string())];
            self.histogram.get_or_create(&labels).observe(lag_ms as f64 / 1000.0);
            part.shown = Some(PartitionLag { partition: p, end_offset: end, next_offset: next, lag_entries, lag_ms });
        }
    }

    /// Every partition's lag as of the last check.
    pub fn partitions(&self) -> Vec<PartitionLag> {
        self.lock().values().filter_map(|p| p.shown.clone()).collect()
    }

    /// The largest lag in ms and the sum of the lags in entries over partitions
    /// (None before the first successful check).
    pub fn total(&self) -> Option<(u64, u64)> {
        let parts = self.partitions();
        if parts.is_empty() {
            return None;
        }
        Some((parts.iter().map(|p| p.lag_ms).max().unwrap_or(0), parts.iter().map(|p| p.lag_entries).sum()))
    }
}

/// A long-lived client that reads a topic's metadata and offsets for the health
/// checks and the lag: one per remote site, every request bounded.
pub struct Probe {
    client: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

/// How long the probe's client waits at most before it tries a broker again.
const PROBE_RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;
/// Events drained from the probe's client queue after each probe at most.
const PROBE_EVENTS_DRAINED_MAX: usize = 1_000;

impl Probe {
    pub fn new(client: &ClientConfig, topic: String, timeout: Duration) -> Result<Probe, String> {
        let mut client = client.clone();
        client.set("reconnect.backoff.max.ms", PROBE_RECONNECT_BACKOFF_MAX_MS.to_string());
        let client: BaseConsumer = client.create().map_err(|e| format!("creating a kafka client: {e}"))?;
        Ok(Probe { client: Arc::new(client), topic, timeout })
    }

    /// Every partition's offsets now, or why they cannot be read (asked on a
    /// blocking thread; each request bounded by the timeout).
    pub async fn offsets(&self) -> Result<Vec<Offsets>, String> {
        let (client, topic, timeout) = (self.client.clone(), self.topic.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            let result = read_offsets(&client, &topic, timeout);
            for _ in 0..PROBE_EVENTS_DRAINED_MAX {
                if client.poll(Duration::ZERO).is_none() {
                    break;
                }
            }
            result
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

fn read_offsets(client: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<Offsets>, String> {
    let md = client.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of {topic}: {e}"))?;
    let t = md.topics().first().ok_or_else(|| format!("no metadata for {topic}"))?;
    if let Some(err) = t.error() {
        return Err(format!("metadata of {topic}: {err:?}"));
    }
    if t.partitions().is_empty() {
        return Err(format!("{topic} has no partitions"));
    }
    (0..t.partitions().len() as i32)
        .map(|p| {
            let (low, high) = client
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| format!("offsets of partition {p} of {topic}: {e}"))?;
            Ok(Offsets { low, high })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> LagBook {
        LagBook::new(SiteId::new("site-a").unwrap(), lag_histogram())
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn lag_is_how_long_ago_the_oldest_entry_not_applied_reached_the_broker() {
        let t0 = Instant::now();
        let b = book();
        let one = |high| [Offsets { low: 0, high }];
        b.record(t0, Some(&one(10)), &BTreeMap::from([(0, 9)]));
        assert_eq!(b.total(), Some((0, 0)), "caught up");
        // Offsets 10..20 arrive between 1 s and 2 s; nothing more is applied.
        b.record(at(t0, 1_000), Some(&one(10)), &BTreeMap::from([(0, 9)]));
        b.record(at(t0, 2_000), Some(&one(20)), &BTreeMap::from([(0, 9)]));
        // Offset 10 arrived between the checks at 1 s and 2 s: 1/10 of the way.
        assert_eq!(b.total(), Some((900, 10)));
        b.record(at(t0, 5_000), Some(&one(30)), &BTreeMap::from([(0, 14)]));
        // Offset 15 arrived at 1 s + 6/10 of the second between the two checks.
        assert_eq!(b.total(), Some((5_000 - 1_600, 15)));
        b.record(at(t0, 6_000), None, &BTreeMap::from([(0, 14)]));
        assert_eq!(b.total(), Some((6_000 - 1_600, 15)), "a failed probe still lets the lag grow");
        b.record(at(t0, 7_000), Some(&one(30)), &BTreeMap::from([(0, 29)]));
        assert_eq!(b.total(), Some((0, 0)));
        let p = &b.partitions()[0];
        assert_eq!((p.end_offset, p.next_offset), (30, 30));
    }

    #[test]
    fn entries_below_the_first_offset_held_are_not_counted() {
        let t0 = Instant::now();
        let b = book();
        b.record(t0, Some(&[Offsets { low: 100, high: 150 }, Offsets { low: 0, high: 0 }]), &BTreeMap::new());
        let parts = b.partitions();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].next_offset, parts[0].lag_entries), (100, 50));
        assert_eq!((parts[1].next_offset, parts[1].lag_entries), (0, 0));
    }

    #[test]
    fn samples_stay_bounded_and_the_oldest_is_kept() {
        let t0 = Instant::now();
        let b = book();
        for i in 0..1_000u64 {
            b.record(at(t0, i * 1_000), Some(&[Offsets { low: 0, high: i as i64 + 1 }]), &BTreeMap::new());
        }
        let parts = b.lock();
        let p = &parts[&0];
        assert_eq!(p.samples.len(), SAMPLES_MAX);
        assert_eq!((p.samples[0].end, p.samples[0].first_seen), (1, t0));
        drop(parts);
        assert_eq!(b.total(), Some((999_000, 1_000)), "offset 0 was there at the first check");
    }

    #[test]
    fn a_re_created_topic_starts_the_samples_again() {
        let t0 = Instant::now();
        let b = book();
        b.record(t0, Some(&[Offsets { low: 0, high: 500 }]), &BTreeMap::from([(0, 499)]));
        b.record(at(t0, 1_000), Some(&[Offsets { low: 0, high: 3 }]), &BTreeMap::from([(0, 499)]));
        assert_eq!(b.total(), Some((0, 0)), "the saved offset is past the end: the consumer reports the gap");
        b.record(at(t0, 2_000), Some(&[Offsets { low: 0, high: 5 }]), &BTreeMap::new());
        assert_eq!(b.total(), Some((1_000, 5)));
    }
}
