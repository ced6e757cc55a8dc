"""redis-py's set commands as applications use them, across two sites.

Usage: sets_sites.py <port of site a> <port of site b> <adds per worker>

Both ports may be the same server (a redis-server, as the reference). For RESP2
and then RESP3 it adds tags at site a and reads them at site b, runs one thread per
site that adds <n> members of its own to one set (SADD), and checks that both sites
end with every member; then SREM at b, SISMEMBER SMISMEMBER SCARD at a, SPOP of
every member, SMOVE, the algebra commands and their STOREs, SSCAN, a transactional
pipeline of set commands, WRONGTYPE, and a delete at a. Every wait for the other
site is bounded. It prints `ok <protocol>` per protocol and exits non-zero on any
failure.
"""

import sys
import threading

import redis

from sites_common import WAIT_S, eventually


def worker(port, protocol, name, n, errors):
    try:
        r = redis.Redis(port=port, **protocol)
        for i in range(n):
            r.sadd("members", f"{name}{i}")
        r.close()
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


def run(port_a, port_b, protocol, n):
    a = redis.Redis(port=port_a, decode_responses=True, **protocol)
    b = redis.Redis(port=port_b, decode_responses=True, **protocol)
    a.delete("tags", "members", "other", "dst", "moved", "str")
    eventually("deletes reach b", lambda: b.exists("tags", "members", "other", "dst", "moved") == 0
               or b.keys("*"))

    assert a.sadd("tags", "red", "green", "blue") == 3
    assert a.sadd("tags", "red") == 0
    eventually("the tags at b", lambda: b.smembers("tags") == {"red", "green", "blue"} or b.smembers("tags"))
    assert b.type("tags") == "set"
    assert b.sismember("tags", "red") and not b.sismember("tags", "pink")
    assert b.smismember("tags", ["red", "pink"]) == [1, 0]
    assert b.scard("tags") == 3

    # Adds at both sites at once: every one arrives everywhere.
    errors = []
    threads = [threading.Thread(target=worker, args=(p, protocol, name, n, errors))
               for p, name in ((port_a, "a"), (port_b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 4)
    assert not errors, errors
    want = {f"{name}{i}" for name in "ab" for i in range(n)}
    for site, c in (("a", a), ("b", b)):
        eventually(f"the members at {site}", lambda c=c: c.smembers("members") == want or len(c.smembers("members")))

    # A removal at b seen at a; the algebra at a.
    assert b.srem("tags", "green", "pink") == 1
    eventually("the removal at a", lambda: a.smembers("tags") == {"red", "blue"} or a.smembers("tags"))
    assert a.sadd("other", "blue", "pink") == 2
    assert a.sinter("tags", "other") == {"blue"}
    assert a.sunion("tags", "other") == {"red", "blue", "pink"}
    assert a.sdiff("tags", "other") == {"red"}
    assert a.sunionstore("dst", ["tags", "other"]) == 3
    assert a.sintercard(2, ["tags", "other"]) == 1
    assert a.smove("other", "moved", "pink") and a.smembers("moved") == {"pink"}
    assert set(a.sscan_iter("dst")) == {"red", "blue", "pink"}
    assert set(a.sscan_iter("dst", match="p*")) == {"pink"}
    eventually("the store at b", lambda: b.smembers("dst") == {"red", "blue", "pink"} or b.smembers("dst"))

    # SPOP of every member, at b.
    popped = b.spop("dst", 10)
    assert set(popped) == {"red", "blue", "pink"}, popped
    assert b.exists("dst") == 0
    eventually("the pops at a", lambda: a.exists("dst") == 0 or a.smembers("dst"))

    # A transactional pipeline of set commands.
    with a.pipeline() as pipe:
        pipe.sadd("tags", "white").srem("tags", "red").scard("tags").smembers("tags")
        assert pipe.execute() == [1, 1, 2, {"blue", "white"}]
    a.set("str", "v")
    try:
        a.sadd("str", "x")
        raise AssertionError("SADD to a string answered")
    except redis.ResponseError as e:
        assert "WRONGTYPE" in str(e), e

    # Deleted at a: gone at b.
    assert a.delete("tags") == 1
    eventually("the delete at b", lambda: b.exists("tags") == 0 or b.smembers("tags"))
    a.delete("members", "other", "moved", "str")
    a.close()
    b.close()


def main():
    port_a, port_b, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for name, protocol in (("resp2", {"protocol": 2}), ("resp3", {"protocol": 3})):
        run(port_a, port_b, protocol, n)
        print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main()
