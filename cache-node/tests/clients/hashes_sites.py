"""redis-py's hash commands as applications use them, across two sites.

Usage: hashes_sites.py <port of site a> <port of site b> <increments per worker>

Both ports may be the same server (a redis-server, as the reference). For RESP2
and then RESP3 it writes a session hash at site a and reads it at site b, runs one
thread per site that adds 1 to the same field <n> times (HINCRBY) and 0.5 to
another (HINCRBYFLOAT), and checks that both sites end with exactly the sum of
every increment; then it removes a field at b, reads the hash back with HSCAN at a,
runs a transactional pipeline of hash commands, and deletes the hash at a. Every
wait for the other site is bounded. It prints `ok <protocol>` per protocol and exits
non-zero on any failure.
"""

import sys
import threading

import redis

from sites_common import WAIT_S, eventually


def worker(port, protocol, n, errors):
    try:
        r = redis.Redis(port=port, **protocol)
        for _ in range(n):
            r.hincrby("stats", "hits", 1)
            r.hincrbyfloat("stats", "score", 0.5)
        r.close()
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


def run(port_a, port_b, protocol, n):
    a = redis.Redis(port=port_a, decode_responses=True, **protocol)
    b = redis.Redis(port=port_b, decode_responses=True, **protocol)
    a.delete("session", "stats", "copy")
    eventually("deletes reach b", lambda: b.exists("session", "stats") == 0 or b.exists("session", "stats"))

    assert a.hset("session", mapping={"user": "ada", "cart": "3", "lang": "en"}) == 3
    want = {"user": "ada", "cart": "3", "lang": "en"}
    eventually("the session at b", lambda: b.hgetall("session") == want or b.hgetall("session"))
    assert b.type("session") == "hash"
    assert b.hget("session", "user") == "ada"
    assert b.hmget("session", ["user", "nosuch"]) == ["ada", None]
    assert b.hlen("session") == 3 and b.hexists("session", "cart")

    # Counters in one hash, incremented at both sites at once.
    errors = []
    threads = [threading.Thread(target=worker, args=(p, protocol, n, errors)) for p in (port_a, port_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 4)
    assert not errors, errors
    workers = 2
    hits, score = str(workers * n), repr(workers * n * 0.5).removesuffix(".0")
    for site, c in (("a", a), ("b", b)):
        eventually(f"the counters at {site}", lambda c=c: c.hmget("stats", ["hits", "score"]) == [hits, score]
                   or c.hmget("stats", ["hits", "score"]))

    # A field removed at b; the whole hash read back at a, by HSCAN.
    assert b.hdel("session", "lang") == 1
    eventually("the removal at a", lambda: not a.hexists("session", "lang") or a.hgetall("session"))
    assert dict(a.hscan_iter("session")) == {"user": "ada", "cart": "3"}

    # A transactional pipeline of hash commands.
    with a.pipeline() as pipe:
        pipe.hset("session", "step", "pay").hincrby("session", "cart", 2).hgetall("session")
        assert pipe.execute() == [1, 5, {"user": "ada", "cart": "5", "step": "pay"}]
    try:
        a.get("session")
        raise AssertionError("GET of a hash answered")
    except redis.ResponseError as e:
        assert "WRONGTYPE" in str(e), e

    # Deleted at a: gone at b.
    assert a.copy("session", "copy") and a.delete("session") == 1
    eventually("the delete at b", lambda: b.exists("session") == 0 or b.hgetall("session"))
    eventually("the copy at b", lambda: b.hget("copy", "step") == "pay" or b.hgetall("copy"))
    a.close()
    b.close()


def main():
    port_a, port_b, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for name, protocol in (("resp2", {"protocol": 2}), ("resp3", {"protocol": 3})):
        run(port_a, port_b, protocol, n)
        print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main()
