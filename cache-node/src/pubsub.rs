//! Publish/subscribe: channels and glob patterns, as Redis's `SUBSCRIBE` and
//! `PSUBSCRIBE` have them. One [`Hub`] carries every message published on a port;
//! each subscribed connection keeps its [`Subscriptions`] and turns the messages it
//! matches into the frames Redis sends (`message`, `pmessage`): push frames, which
//! RESP2 sends as arrays.
//!
//! The hub is a bounded broadcast ([`Hub::CAPACITY`] messages): a subscriber that
//! falls that far behind has lost messages, and its connection is closed with an
//! error (as Redis closes a subscriber past `client-output-buffer-limit pubsub`),
//! never left to miss messages silently. The Sentinel port publishes its events
//! here.

use crate::resp::Frame;
use crate::store::glob::glob_match;
use bytes::Bytes;
use std::collections::BTreeSet;
use tokio::sync::broadcast;

/// One published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: Bytes,
    pub payload: Bytes,
}

/// Where messages are published and subscribed to.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Message>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// Messages a subscriber may be behind before its connection is closed.
    pub const CAPACITY: usize = 1024;

    pub fn new() -> Hub {
        Hub { tx: broadcast::channel(Hub::CAPACITY).0 }
    }

    /// Publishes `payload` on `channel`; returns how many connections receive it
    /// (those subscribed to anything: each keeps what it matches).
    pub fn publish(&self, channel: impl Into<Bytes>, payload: impl Into<Bytes>) -> usize {
        self.tx.send(Message { channel: channel.into(), payload: payload.into() }).unwrap_or(0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.tx.subscribe()
    }
}

/// The channels and patterns one connection is subscribed to.
#[derive(Debug, Default)]
pub struct Subscriptions {
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
}

impl Subscriptions {
    /// How many channels and patterns, the count Redis replies with.
    pub fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// `SUBSCRIBE`/`PSUBSCRIBE` (`pattern`): one reply per name, in order.
    pub fn subscribe(&mut self, names: &[Bytes], pattern: bool) -> Vec<Frame> {
        let kind = if pattern { "psubscribe" } else { "subscribe" };
        names
            .iter()
            .map(|n| {
                if pattern {
                    self.patterns.insert(n.clone());
                } else {
                    self.channels.insert(n.clone());
                }
                Frame::Push(vec![Frame::bulk(kind), Frame::Bulk(n.clone()), Frame::Integer(self.count())])
            })
            .collect()
    }

    /// `UNSUBSCRIBE`/`PUNSUBSCRIBE`: the names given, or every one when none is; one
    /// reply per name (one with a null name when there was none to leave).
    pub fn unsubscribe(&mut self, names: &[Bytes], pattern: bool) -> Vec<Frame> {
        let kind = if pattern { "punsubscribe" } else { "unsubscribe" };
        let set = if pattern { &mut self.patterns } else { &mut self.channels };
        let leaving: Vec<Bytes> = if names.is_empty() { set.iter().cloned().collect() } else { names.to_vec() };
        if leaving.is_empty() {
            return vec![Frame::Push(vec![Frame::bulk(kind), Frame::Null, Frame::Integer(self.count())])];
        }
        leaving
            .into_iter()
            .map(|n| {
                if pattern {
                    self.patterns.remove(&n);
                } else {
                    self.channels.remove(&n);
                }
                Frame::Push(vec![Frame::bulk(kind), Frame::Bulk(n), Frame::Integer(self.count())])
            })
            .collect()
    }

    /// The frames `message` delivers to this connection: one per matching channel
    /// subscription and one per matching pattern, as Redis sends them.
    pub fn deliveries(&self, message: &Message) -> Vec<Frame> {
        let mut out = Vec::new();
        if self.channels.contains(&message.channel) {
            out.push(Frame::Push(vec![
                Frame::bulk("message"),
                Frame::Bulk(message.channel.clone()),
                Frame::Bulk(message.payload.clone()),
            ]));
        }
        for p in self.patterns.iter().filter(|p| glob_match(p, &message.channel)) {
            out.push(Frame::Push(vec![
                Frame::bulk("pmessage"),
                Frame::Bulk(p.clone()),
                Frame::Bulk(message.channel.clone()),
                Frame::Bulk(message.payload.clone()),
            ]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn channels_and_patterns_get_what_they_match_once_each() {
        let mut subs = Subscriptions::default();
        assert_eq!(
            subs.subscribe(&[b("+switch-master")], false),
            vec![Frame::Push(vec![Frame::bulk("subscribe"), Frame::bulk("+switch-master"), Frame::Integer(1)])]
        );
        subs.subscribe(&[b("*"), b("+s*")], true);
        assert_eq!(subs.count(), 3);
        let m = Message { channel: b("+switch-master"), payload: b("default a 1 b 2") };
        let got = subs.deliveries(&m);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            Frame::Push(vec![Frame::bulk("message"), Frame::Bulk(m.channel.clone()), Frame::Bulk(m.payload.clone())])
        );
        let other = Message { channel: b("+sdown"), payload: b("x") };
        assert_eq!(subs.deliveries(&other).len(), 2);
        let left = subs.unsubscribe(&[], true);
        assert_eq!(left.len(), 2);
        assert_eq!(subs.count(), 1);
        assert!(subs.deliveries(&other).is_empty());
        assert_eq!(
            subs.unsubscribe(&[], true),
            vec![Frame::Push(vec![Frame::bulk("punsubscribe"), Frame::Null, Frame::Integer(1)])]
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_too_far_behind_is_told() {
        let hub = Hub::new();
        let mut rx = hub.subscribe();
        for i in 0..=Hub::CAPACITY {
            hub.publish("c", i.to_string());
        }
        assert!(matches!(rx.recv().await, Err(broadcast::error::RecvError::Lagged(1))));
    }
}
