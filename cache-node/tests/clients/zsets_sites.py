"""redis-py's sorted set commands as a leaderboard uses them, across two sites.

Usage: zsets_sites.py <port of site a> <port of site b> <increments per worker>

Both ports may be the same server (a redis-server, as the reference). For RESP2
and then RESP3 it writes a leaderboard at site a and reads it at site b, runs one
thread per site that adds 1 to the same member <n> times (ZINCRBY), and checks
that both sites end with exactly the sum; then ranges by rank and by score, ranks,
counts, a removal at b, pops, ZUNIONSTORE, a transactional pipeline, WRONGTYPE, and
a delete at a. Every wait for the other site is bounded. It prints `ok <protocol>`
per protocol and exits non-zero on any failure.
"""

import sys
import threading

import redis

from sites_common import WAIT_S, eventually


def pairs(reply):
    """Members with scores as tuples: redis-py gives lists of two in RESP3."""
    return [tuple(p) for p in reply]


def worker(port, protocol, n, errors):
    try:
        r = redis.Redis(port=port, **protocol)
        for _ in range(n):
            r.zincrby("board", 1, "hits")
        r.close()
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


def run(port_a, port_b, protocol, n):
    a = redis.Redis(port=port_a, decode_responses=True, **protocol)
    b = redis.Redis(port=port_b, decode_responses=True, **protocol)
    a.delete("board", "other", "sum", "str")
    eventually("deletes reach b", lambda: b.exists("board", "other", "sum") == 0 or b.keys("*"))

    assert a.zadd("board", {"ada": 30, "bob": 10, "cy": 20}) == 3
    want = [("bob", 10.0), ("cy", 20.0), ("ada", 30.0)]
    eventually("the board at b", lambda: pairs(b.zrange("board", 0, -1, withscores=True)) == want
               or b.zrange("board", 0, -1, withscores=True))
    assert b.type("board") == "zset"
    assert b.zscore("board", "ada") == 30.0 and b.zscore("board", "nobody") is None
    assert b.zrank("board", "cy") == 1 and b.zrevrank("board", "cy") == 1
    assert b.zcard("board") == 3 and b.zcount("board", 15, "+inf") == 2
    assert b.zrevrange("board", 0, 1) == ["ada", "cy"]
    assert b.zrangebyscore("board", "(10", 30) == ["cy", "ada"]
    assert b.zmscore("board", ["ada", "nobody"]) == [30.0, None]

    # One member incremented at both sites at once: every increment counts.
    errors = []
    threads = [threading.Thread(target=worker, args=(p, protocol, n, errors)) for p in (port_a, port_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 4)
    assert not errors, errors
    for site, c in (("a", a), ("b", b)):
        eventually(f"the sum at {site}", lambda c=c: c.zscore("board", "hits") == 2.0 * n or c.zscore("board", "hits"))

    # A removal at b seen at a; pops and a store at a.
    assert b.zrem("board", "hits") == 1
    eventually("the removal at a", lambda: a.zscore("board", "hits") is None or a.zscore("board", "hits"))
    assert a.zadd("other", {"bob": 1, "dee": 5}) == 2
    assert a.zunionstore("sum", ["board", "other"]) == 4
    assert pairs(a.zrange("sum", 0, -1, withscores=True)) == [("dee", 5.0), ("bob", 11.0), ("cy", 20.0), ("ada", 30.0)]
    popped = a.zpopmax("sum")
    assert popped in ([("ada", 30.0)], ["ada", 30.0]), popped
    assert pairs(a.zpopmin("sum", 2)) == [("dee", 5.0), ("bob", 11.0)]
    eventually("the store at b", lambda: b.zrange("sum", 0, -1) == ["cy"] or b.zrange("sum", 0, -1))

    # A transactional pipeline of sorted set commands.
    with a.pipeline() as pipe:
        pipe.zadd("board", {"eve": 25}).zincrby("board", 5, "bob").zrange("board", 0, -1, withscores=True)
        got = pipe.execute()
        got[2] = pairs(got[2])
        assert got == [1, 15.0, [("bob", 15.0), ("cy", 20.0), ("eve", 25.0), ("ada", 30.0)]], got
    a.set("str", "v")
    try:
        a.zadd("str", {"x": 1})
        raise AssertionError("ZADD to a string answered")
    except redis.ResponseError as e:
        assert "WRONGTYPE" in str(e), e

    # Deleted at a: gone at b.
    assert a.delete("board") == 1
    eventually("the delete at b", lambda: b.exists("board") == 0 or b.zrange("board", 0, -1))
    a.delete("other", "sum", "str")
    a.close()
    b.close()


def main():
    port_a, port_b, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for name, protocol in (("resp2", {"protocol": 2}), ("resp3", {"protocol": 3})):
        run(port_a, port_b, protocol, n)
        print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main()
