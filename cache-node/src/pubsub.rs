//! Publish/subscribe, as Redis has it: channels (`SUBSCRIBE`), glob patterns
//! (`PSUBSCRIBE`, matched as Redis's `stringmatchlen` does) and shard channels
//! (`SSUBSCRIBE`, one shard here: a namespace of their own). One [`Hub`] serves one
//! port: the data port's carries `PUBLISH` and the keyspace notifications
//! ([`crate::notify`]), the Sentinel port's its events. Both are local to the node:
//! nothing published here reaches another site.
//!
//! Each subscribed connection holds a [`Subscriber`]: its subscriptions, kept in the
//! hub's registry, and a mailbox the hub puts the frames Redis would send
//! (`message`, `pmessage`, `smessage`: push frames, which RESP2 sends as arrays)
//! into. Publishing looks the channel up, matches every pattern, and queues one
//! frame per matching subscription, as Redis does; it never waits for a subscriber.
//!
//! Every mailbox is bounded, as Redis bounds a subscriber's output buffer
//! (`client-output-buffer-limit pubsub 32mb 8mb 60`): a subscriber whose frames
//! not yet written pass [`Limits::buffer_bytes_max`], or stay above
//! [`Limits::buffer_soft_bytes_max`] for [`Limits::buffer_soft_ms`], is
//! disconnected (its mailbox is emptied and marked killed; its connection closes),
//! counted in [`HubSnapshot::disconnected`] and logged. A frame costs its channel,
//! pattern and payload bytes plus [`FRAME_OVERHEAD_BYTES`].

use crate::resp::Frame;
use crate::store::glob::stringmatch;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// What a queued frame costs beyond its channel, pattern and payload, in bytes.
pub const FRAME_OVERHEAD_BYTES: usize = 64;

/// How much a subscriber may fall behind (Redis's `client-output-buffer-limit
/// pubsub`; the defaults are Redis's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Past this many bytes queued, the subscriber is disconnected at once.
    pub buffer_bytes_max: usize,
    /// Above this many bytes queued for [`Limits::buffer_soft_ms`], it is too.
    pub buffer_soft_bytes_max: usize,
    pub buffer_soft_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { buffer_bytes_max: 32 * 1024 * 1024, buffer_soft_bytes_max: 8 * 1024 * 1024, buffer_soft_ms: 60_000 }
    }
}

/// What a subscription names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Channel, Kind::Pattern, Kind::Shard];

    fn index(self) -> usize {
        self as usize
    }

    fn subscribe_reply(self) -> &'static str {
        match self {
            Kind::Channel => "subscribe",
            Kind::Pattern => "psubscribe",
            Kind::Shard => "ssubscribe",
        }
    }

    fn unsubscribe_reply(self) -> &'static str {
        match self {
            Kind::Channel => "unsubscribe",
            Kind::Pattern => "punsubscribe",
            Kind::Shard => "sunsubscribe",
        }
    }
}

/// One subscriber's queue of frames.
#[derive(Debug, Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
    ready: tokio::sync::Notify,
    /// Cancelled when the subscriber is disconnected for falling behind.
    kill: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Default)]
struct MailboxState {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Since when `bytes` has been above the soft limit.
    soft_since: Option<Instant>,
    killed: bool,
}

impl Mailbox {
    fn state(&self) -> MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Members = HashMap<u64, (u64, Arc<Mailbox>)>;

/// Who is subscribed to what: per kind, name → subscriber id → (client, mailbox).
#[derive(Debug, Default)]
struct Registry {
    by_kind: [HashMap<Bytes, Members>; 3],
}

#[derive(Debug, Default)]
struct Inner {
    registry: RwLock<Registry>,
    /// Subscriptions of every kind, to skip publishing when there are none.
    subscriptions: AtomicUsize,
    limits: Limits,
    next_id: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    disconnected: AtomicU64,
}

/// Where messages are published and subscribed to. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// The hub at one moment, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubSnapshot {
    /// Channels with a subscriber (`PUBSUB CHANNELS`).
    pub channels: usize,
    /// Patterns with a subscriber (`PUBSUB NUMPAT`).
    pub patterns: usize,
    /// Shard channels with a subscriber (`PUBSUB SHARDCHANNELS`).
    pub shard_channels: usize,
    /// Connections subscribed to anything.
    pub subscribers: usize,
    /// Messages published (`PUBLISH`, `SPUBLISH`, keyspace notifications).
    pub published: u64,
    /// Frames queued for subscribers (one per matching subscription).
    pub delivered: u64,
    /// Subscribers disconnected for falling behind.
    pub disconnected: u64,
}

fn frame_bytes(parts: &[&Bytes]) -> usize {
    parts.iter().map(|p| p.len()).sum::<usize>() + FRAME_OVERHEAD_BYTES
}

impl Hub {
    pub fn new(limits: Limits) -> Hub {
        assert!(limits.buffer_bytes_max > 0, "a subscriber must be able to queue something");
        Hub { inner: Arc::new(Inner { limits, ..Inner::default() }) }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether anything is subscribed to (publishing with nothing subscribed does
    /// nothing; callers may skip building the message).
    pub fn has_subscribers(&self) -> bool {
        self.inner.subscriptions.load(Ordering::Acquire) > 0
    }

    /// `PUBLISH`: queues `payload` for every subscription to `channel` and every
    /// pattern matching it; returns how many (Redis's reply).
    pub fn publish(&self, channel: impl Into<Bytes>, payload: impl Into<Bytes>) -> usize {
        self.send(false, channel.into(), payload.into())
    }

    /// `SPUBLISH`: queues `payload` for every subscription to shard channel `channel`.
    pub fn spublish(&self, channel: impl Into<Bytes>, payload: impl Into<Bytes>) -> usize {
        self.send(true, channel.into(), payload.into())
    }

    fn send(&self, shard: bool, channel: Bytes, payload: Bytes) -> usize {
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        if !self.has_subscribers() {
            return 0;
        }
        let registry = self.registry();
        let mut receivers = 0;
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        if let Some(members) = registry.by_kind[kind.index()].get(&channel) {
            let name = if shard { "smessage" } else { "message" };
            let frame =
                Frame::Push(vec![Frame::bulk(name), Frame::Bulk(channel.clone()), Frame::Bulk(payload.clone())]);
            let bytes = frame_bytes(&[&channel, &payload]);
            for (client, mailbox) in members.values() {
                self.offer(*client, mailbox, &frame, bytes);
                receivers += 1;
            }
        }
        if !shard {
            for (pattern, members) in &registry.by_kind[Kind::Pattern.index()] {
                if !stringmatch(pattern, &channel) {
                    continue;
                }
                let frame = Frame::Push(vec![
                    Frame::bulk("pmessage"),
                    Frame::Bulk(pattern.clone()),
                    Frame::Bulk(channel.clone()),
                    Frame::Bulk(payload.clone()),
                ]);
                let bytes = frame_bytes(&[pattern, &channel, &payload]);
                for (client, mailbox) in members.values() {
                    self.offer(*client, mailbox, &frame, bytes);
                    receivers += 1;
                }
            }
        }
        receivers
    }

    /// Queues `frame` in `mailbox`, or disconnects its subscriber past the limits.
    fn offer(&self, client: u64, mailbox: &Mailbox, frame: &Frame, bytes: usize) {
        let limits = self.inner.limits;
        let mut state = mailbox.state();
        if state.killed {
            return;
        }
        state.bytes += bytes;
        let over_soft = state.bytes > limits.buffer_soft_bytes_max;
        let soft_since = *state.soft_since.get_or_insert_with(Instant::now);
        let soft_expired = over_soft && soft_since.elapsed() >= Duration::from_millis(limits.buffer_soft_ms);
        if !over_soft {
            state.soft_since = None;
        }
        if state.bytes > limits.buffer_bytes_max || soft_expired {
            tracing::warn!(
                client,
                buffer_bytes = state.bytes,
                buffer_bytes_max = limits.buffer_bytes_max,
                buffer_soft_bytes_max = limits.buffer_soft_bytes_max,
                buffer_soft_ms = limits.buffer_soft_ms,
                "pubsub: disconnecting a subscriber that does not read what it is sent"
            );
            state.killed = true;
            state.frames = VecDeque::new();
            state.bytes = 0;
            mailbox.kill.cancel();
            self.inner.disconnected.fetch_add(1, Ordering::Relaxed);
        } else {
            state.frames.push_back(frame.clone());
            self.inner.delivered.fetch_add(1, Ordering::Relaxed);
        }
        drop(state);
        mailbox.ready.notify_one();
    }

    /// A subscriber for client `client` (named in logs), subscribed to nothing yet.
    pub fn subscriber(&self, client: u64) -> Subscriber {
        Subscriber {
            hub: self.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            client,
            mailbox: Arc::new(Mailbox::default()),
            names: Default::default(),
        }
    }

    /// `PUBSUB CHANNELS [pattern]` (`SHARDCHANNELS` with `shard`): the channels
    /// with a subscriber that match `pattern`, sorted.
    pub fn channels(&self, shard: bool, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        let mut out: Vec<Bytes> = self.registry().by_kind[kind.index()]
            .keys()
            .filter(|c| pattern.is_none_or(|p| stringmatch(p, c)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// `PUBSUB NUMSUB` (`SHARDNUMSUB` with `shard`): subscribers of each channel.
    pub fn numsub(&self, shard: bool, channels: &[Bytes]) -> Vec<usize> {
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        let registry = self.registry();
        channels.iter().map(|c| registry.by_kind[kind.index()].get(c).map_or(0, HashMap::len)).collect()
    }

    /// `PUBSUB NUMPAT`: patterns with a subscriber.
    pub fn numpat(&self) -> usize {
        self.registry().by_kind[Kind::Pattern.index()].len()
    }

    pub fn snapshot(&self) -> HubSnapshot {
        let registry = self.registry();
        let [channels, patterns, shards] = &registry.by_kind;
        let subscribers: HashSet<u64> =
            registry.by_kind.iter().flat_map(|by_name| by_name.values().flat_map(|m| m.keys().copied())).collect();
        HubSnapshot {
            channels: channels.len(),
            patterns: patterns.len(),
            shard_channels: shards.len(),
            subscribers: subscribers.len(),
            published: self.inner.published.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            disconnected: self.inner.disconnected.load(Ordering::Relaxed),
        }
    }
}

/// One connection's subscriptions and the frames waiting for it. Dropping it
/// leaves every subscription.
#[derive(Debug)]
pub struct Subscriber {
    hub: Hub,
    id: u64,
    client: u64,
    mailbox: Arc<Mailbox>,
    /// Per kind, the names subscribed to.
    names: [BTreeSet<Bytes>; 3],
}

impl Subscriber {
    /// The count a (un)subscription of `kind` replies with: channels and patterns,
    /// or shard channels, as Redis counts.
    pub fn count(&self, kind: Kind) -> i64 {
        let [channels, patterns, shards] = &self.names;
        match kind {
            Kind::Channel | Kind::Pattern => (channels.len() + patterns.len()) as i64,
            Kind::Shard => shards.len() as i64,
        }
    }

    /// Subscribed to anything: RESP2 clients are then in subscribed mode.
    pub fn is_subscribed(&self) -> bool {
        self.names.iter().any(|n| !n.is_empty())
    }

    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`: one reply per name, in order.
    pub fn subscribe(&mut self, kind: Kind, names: &[Bytes]) -> Vec<Frame> {
        let mut registry = self.hub.inner.registry.write().unwrap_or_else(PoisonError::into_inner);
        let mut replies = Vec::with_capacity(names.len());
        for name in names {
            if self.names[kind.index()].insert(name.clone()) {
                let members = registry.by_kind[kind.index()].entry(name.clone()).or_default();
                members.insert(self.id, (self.client, self.mailbox.clone()));
                self.hub.inner.subscriptions.fetch_add(1, Ordering::AcqRel);
            }
            replies.push(Frame::Push(vec![
                Frame::bulk(kind.subscribe_reply()),
                Frame::Bulk(name.clone()),
                Frame::Integer(self.count(kind)),
            ]));
        }
        replies
    }

    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`: the names given, or every one
    /// of `kind` when none is; one reply per name, and one with a null name when
    /// there was none to leave.
    pub fn unsubscribe(&mut self, kind: Kind, names: &[Bytes]) -> Vec<Frame> {
        let leaving: Vec<Bytes> =
            if names.is_empty() { self.names[kind.index()].iter().cloned().collect() } else { names.to_vec() };
        if leaving.is_empty() {
            return vec![Frame::Push(vec![
                Frame::bulk(kind.unsubscribe_reply()),
                Frame::Null,
                Frame::Integer(self.count(kind)),
            ])];
        }
        let hub = self.hub.clone();
        let mut registry = hub.inner.registry.write().unwrap_or_else(PoisonError::into_inner);
        let mut replies = Vec::with_capacity(leaving.len());
        for name in leaving {
            if self.names[kind.index()].remove(&name) {
                self.leave(&mut registry, kind, &name);
            }
            replies.push(Frame::Push(vec![
                Frame::bulk(kind.unsubscribe_reply()),
                Frame::Bulk(name),
                Frame::Integer(self.count(kind)),
            ]));
        }
        replies
    }

    fn leave(&self, registry: &mut Registry, kind: Kind, name: &Bytes) {
        let by_name = &mut registry.by_kind[kind.index()];
        if let Some(members) = by_name.get_mut(name) {
            if members.remove(&self.id).is_some() {
                self.hub.inner.subscriptions.fetch_sub(1, Ordering::AcqRel);
            }
            if members.is_empty() {
                by_name.remove(name);
            }
        }
    }

    /// The frames queued so far, oldest first.
    pub fn take(&self) -> Vec<Frame> {
        let mut state = self.mailbox.state();
        state.bytes = 0;
        state.soft_since = None;
        state.frames.drain(..).collect()
    }

    /// Whether the hub disconnected this subscriber for falling behind.
    pub fn is_killed(&self) -> bool {
        self.mailbox.state().killed
    }

    /// Resolves when the hub disconnects this subscriber for falling behind.
    pub async fn killed(&self) {
        self.mailbox.kill.cancelled().await
    }

    /// Resolves when frames were queued or the subscriber was killed since the
    /// last [`Subscriber::take`] (at once if that happened already).
    pub async fn ready(&self) {
        loop {
            {
                let state = self.mailbox.state();
                if state.killed || !state.frames.is_empty() {
                    return;
                }
            }
            self.mailbox.ready.notified().await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if !self.is_subscribed() {
            return;
        }
        let hub = self.hub.clone();
        let mut registry = hub.inner.registry.write().unwrap_or_else(PoisonError::into_inner);
        for kind in Kind::ALL {
            for name in std::mem::take(&mut self.names[kind.index()]) {
                self.leave(&mut registry, kind, &name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn push(parts: &[&str]) -> Frame {
        Frame::Push(parts.iter().map(|p| Frame::bulk(p.to_string())).collect())
    }

    #[test]
    fn channels_and_patterns_get_what_they_match_once_each() {
        let hub = Hub::default();
        let mut subs = hub.subscriber(1);
        assert_eq!(
            subs.subscribe(Kind::Channel, &[b("+switch-master")]),
            vec![Frame::Push(vec![Frame::bulk("subscribe"), Frame::bulk("+switch-master"), Frame::Integer(1)])]
        );
        subs.subscribe(Kind::Pattern, &[b("*"), b("+s*")]);
        assert_eq!(subs.count(Kind::Channel), 3);
        assert_eq!(hub.publish("+switch-master", "default a 1 b 2"), 3);
        let got = subs.take();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], push(&["message", "+switch-master", "default a 1 b 2"]));
        assert_eq!(hub.publish("+sdown", "x"), 2);
        assert_eq!(subs.take().len(), 2);
        assert_eq!(subs.unsubscribe(Kind::Pattern, &[]).len(), 2);
        assert_eq!(subs.count(Kind::Pattern), 1);
        assert_eq!(hub.publish("+sdown", "x"), 0);
        assert!(subs.take().is_empty());
        assert_eq!(
            subs.unsubscribe(Kind::Pattern, &[]),
            vec![Frame::Push(vec![Frame::bulk("punsubscribe"), Frame::Null, Frame::Integer(1)])]
        );
    }

    #[test]
    fn shard_channels_are_a_namespace_of_their_own() {
        let hub = Hub::default();
        let mut subs = hub.subscriber(1);
        subs.subscribe(Kind::Channel, &[b("c")]);
        assert_eq!(subs.subscribe(Kind::Shard, &[b("c")])[0], {
            Frame::Push(vec![Frame::bulk("ssubscribe"), Frame::bulk("c"), Frame::Integer(1)])
        });
        assert_eq!(hub.spublish("c", "s"), 1);
        assert_eq!(hub.publish("c", "p"), 1);
        assert_eq!(subs.take(), vec![push(&["smessage", "c", "s"]), push(&["message", "c", "p"])]);
        assert_eq!(hub.channels(true, None), vec![b("c")]);
        assert_eq!(hub.numsub(false, &[b("c"), b("x")]), vec![1, 0]);
    }

    #[test]
    fn dropping_a_subscriber_leaves_everything() {
        let hub = Hub::default();
        let mut one = hub.subscriber(1);
        let mut two = hub.subscriber(2);
        one.subscribe(Kind::Channel, &[b("a"), b("b")]);
        one.subscribe(Kind::Pattern, &[b("a*")]);
        two.subscribe(Kind::Pattern, &[b("a*")]);
        assert_eq!((hub.numpat(), hub.channels(false, Some(b"a")).len()), (1, 1));
        assert_eq!(hub.snapshot().subscribers, 2);
        drop(one);
        assert_eq!(hub.channels(false, None), Vec::<Bytes>::new());
        assert_eq!(hub.numpat(), 1);
        assert_eq!(hub.publish("ab", "x"), 1);
        drop(two);
        assert!(!hub.has_subscribers());
        assert_eq!(hub.snapshot().subscribers, 0);
    }

    #[test]
    fn a_subscriber_past_the_hard_limit_is_disconnected() {
        let limits = Limits { buffer_bytes_max: 10 * 1024, ..Limits::default() };
        let hub = Hub::new(limits);
        let mut slow = hub.subscriber(7);
        let mut fast = hub.subscriber(8);
        slow.subscribe(Kind::Channel, &[b("c")]);
        fast.subscribe(Kind::Channel, &[b("c")]);
        let payload = Bytes::from(vec![b'x'; 1024]);
        for _ in 0..20 {
            hub.publish("c", payload.clone());
            assert!(!fast.take().is_empty());
        }
        assert!(slow.is_killed());
        assert!(!fast.is_killed());
        assert!(slow.take().is_empty(), "a killed mailbox holds nothing");
        assert_eq!(hub.snapshot().disconnected, 1);
    }

    #[test]
    fn a_subscriber_above_the_soft_limit_for_too_long_is_disconnected() {
        let limits = Limits { buffer_bytes_max: 1 << 20, buffer_soft_bytes_max: 100, buffer_soft_ms: 0 };
        let hub = Hub::new(limits);
        let mut slow = hub.subscriber(7);
        slow.subscribe(Kind::Channel, &[b("c")]);
        hub.publish("c", "small");
        assert!(!slow.is_killed(), "below the soft limit");
        hub.publish("c", vec![b'x'; 200]);
        assert!(slow.is_killed());
    }

    #[tokio::test]
    async fn ready_wakes_on_a_frame_and_on_a_kill() {
        let hub = Hub::new(Limits { buffer_bytes_max: 100, ..Limits::default() });
        let mut subs = hub.subscriber(1);
        subs.subscribe(Kind::Channel, &[b("c")]);
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.publish("c", "x") })
        };
        tokio::time::timeout(Duration::from_secs(10), subs.ready()).await.unwrap();
        assert_eq!(publisher.await.unwrap(), 1);
        assert_eq!(subs.take().len(), 1);
        hub.publish("c", vec![b'x'; 200]);
        tokio::time::timeout(Duration::from_secs(10), subs.ready()).await.unwrap();
        assert!(subs.is_killed());
    }
}
