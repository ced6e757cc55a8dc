"""redis-py's scripts as applications use them, across two sites.

Usage: scripts_sites.py <port of site a> <port of site b> <rounds>

Both ports may be the same server (a redis-server, as the reference). For RESP2
and then RESP3: a `Lock` taken, extended and released at site a (each a script),
a second client's non-blocking acquire refused while it is held, the lock's key
gone at site b once released; a fixed-window rate limiter made with
`register_script` (INCR, then PEXPIRE on the first hit) called <rounds> times at
site a and <rounds> at site b, whose counts add up at both sites; a script in a
transactional pipeline. Every wait for the other site is bounded. It prints
`ok <protocol>` per protocol and exits non-zero on any failure.
"""

import sys

import redis

from sites_common import WAIT_S, eventually


LIMITER = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then return 0 end
return n
"""


def run(port_a, port_b, rounds, protocol):
    a = redis.Redis(port=port_a, **protocol)
    b = redis.Redis(port=port_b, **protocol)
    other = redis.Redis(port=port_a, **protocol)
    tag = protocol.get("protocol", 2)

    lock = a.lock(f"lock:{tag}", timeout=30)
    assert lock.acquire(blocking=False), "the lock is free"
    assert other.lock(f"lock:{tag}", timeout=30).acquire(blocking=False) is False, "a second client waits"
    assert lock.owned()
    lock.extend(10)
    assert a.pttl(f"lock:{tag}") > 30_000, a.pttl(f"lock:{tag}")
    lock.release()
    assert a.exists(f"lock:{tag}") == 0
    eventually("the released lock at b", lambda: b.exists(f"lock:{tag}") == 0 or b.exists(f"lock:{tag}"))

    limit_a = a.register_script(LIMITER)
    limit_b = b.register_script(LIMITER)
    key = f"hits:{tag}"
    for i in range(rounds):
        assert limit_a(keys=[key], args=[600_000, 10 * rounds]) >= 1
    eventually("a's hits at b", lambda: b.get(key) == str(rounds).encode() or b.get(key))
    for i in range(rounds):
        assert limit_b(keys=[key], args=[600_000, 10 * rounds]) >= 1
    total = str(2 * rounds).encode()
    eventually("every hit at a", lambda: a.get(key) == total or a.get(key))
    assert 0 < b.pttl(key) <= 600_000, b.pttl(key)

    pipe = a.pipeline()
    pipe.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, f"piped:{tag}", 5)
    pipe.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, f"piped:{tag}", 6)
    assert pipe.execute() == [5, 11]
    eventually("the pipeline's script at b", lambda: b.get(f"piped:{tag}") == b"11" or b.get(f"piped:{tag}"))
    for c in (a, b, other):
        c.close()
    print(f"ok resp{tag}")


def main():
    port_a, port_b, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    run(port_a, port_b, rounds, {})
    run(port_a, port_b, rounds, {"protocol": 3})


if __name__ == "__main__":
    main()
