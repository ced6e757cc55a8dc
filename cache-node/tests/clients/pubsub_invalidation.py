"""redis-py's pub/sub as applications use it, against one server.

Usage: pubsub_invalidation.py <port>

For RESP2 and then RESP3 it checks `pubsub()`: subscribe and psubscribe
confirmations, `publish` counts, `get_message` of a message and a pmessage, the
PUBSUB introspection helpers, unsubscribing. Then a client-side cache that
invalidates itself from keyspace notifications (`notify-keyspace-events KEA`,
`__keyspace@0__:user:*`): after each write by another connection (set, del,
append, incr, an expiry) the cache drops the key on its notification and reads
the new value. It prints `ok <protocol>` per protocol and exits non-zero on any
failure. Every wait is bounded.
"""

import sys
import time

import redis

TIMEOUT_S = 10


def next_message(p, kind=None):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        m = p.get_message(timeout=1.0)
        if m is not None and (kind is None or m["type"] == kind):
            return m
    raise AssertionError("no %s message within %ss" % (kind or "", TIMEOUT_S))


def check_pubsub(r):
    p = r.pubsub()
    p.subscribe("news")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("subscribe", b"news", 1), m
    p.psubscribe("n*")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("psubscribe", b"n*", 2), m
    assert r.publish("news", "hello") == 2
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("message", b"news", b"hello"), m
    m = next_message(p)
    assert (m["type"], m["pattern"], m["channel"], m["data"]) == ("pmessage", b"n*", b"news", b"hello"), m
    assert r.publish("other", "x") == 0
    assert r.pubsub_numsub("news", "other") == [(b"news", 1), (b"other", 0)]
    assert r.pubsub_numpat() == 1
    assert r.pubsub_channels() == [b"news"]
    p.unsubscribe("news")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("unsubscribe", b"news", 1), m
    p.punsubscribe()
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("punsubscribe", b"n*", 0), m
    assert r.pubsub_numpat() == 0
    p.close()


def check_invalidation(r, writer):
    r.config_set("notify-keyspace-events", "KEA")
    writer.delete("user:1", "user:2", "user:3", "user:4")
    writer.set("user:1", "alice")
    writer.set("user:2", "bob")
    p = r.pubsub()
    p.psubscribe("__keyspace@0__:user:*")
    next_message(p, "psubscribe")
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = r.get(key)
        return cache[key]

    def invalidated(key, event):
        """Drops every key notified until `key`'s `event` comes."""
        while True:
            m = next_message(p, "pmessage")
            notified = m["channel"].split(b":", 1)[1].decode()
            cache.pop(notified, None)
            if (notified, m["data"]) == (key, event):
                return

    assert get("user:1") == b"alice" and get("user:2") == b"bob"
    writer.set("user:1", "alicia")
    invalidated("user:1", b"set")
    assert get("user:1") == b"alicia"
    writer.delete("user:2")
    invalidated("user:2", b"del")
    assert get("user:2") is None
    writer.append("user:1", "!")
    invalidated("user:1", b"append")
    assert get("user:1") == b"alicia!"
    assert get("user:4") is None
    writer.incr("user:4")
    invalidated("user:4", b"incrby")
    assert get("user:4") == b"1"
    writer.set("user:3", "short", px=100)
    invalidated("user:3", b"set")
    assert get("user:3") == b"short"
    invalidated("user:3", b"expired")
    assert get("user:3") is None
    p.close()
    r.config_set("notify-keyspace-events", "")


def main():
    port = int(sys.argv[1])
    for protocol in (2, 3):
        r = redis.Redis(port=port, protocol=protocol, socket_timeout=TIMEOUT_S)
        writer = redis.Redis(port=port, protocol=protocol, socket_timeout=TIMEOUT_S)
        check_pubsub(r)
        check_invalidation(r, writer)
        r.close()
        writer.close()
        print("ok %d" % protocol, flush=True)


if __name__ == "__main__":
    main()
