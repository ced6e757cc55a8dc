"""redis-py's list commands as a work queue uses them, across two sites.

Usage: lists_sites.py <port of site a> <port of site b> <pushes per worker>

Both ports may be the same server (a redis-server, as the reference). For RESP2
and then RESP3 it pushes <n> jobs at site a (RPUSH), waits until they have all
arrived at site b and consumes them there without blocking (LPOP with a count,
then LPOP until nil), in the order they were pushed; runs one thread per site that
pushes <n> items of its own to one list and checks that both sites end with the
same list, every item once and each site's items in the order it pushed them;
then LINSERT LSET LREM at a read at b, LPOS LMOVE RPOPLPUSH LMPOP at b read at
a, LTRIM, a transactional pipeline of list commands, WRONGTYPE, and a delete at
a. Every wait for the other site is bounded. It prints `ok <protocol>` per
protocol and exits non-zero on any failure.
"""

import sys
import threading

import redis

from sites_common import WAIT_S, eventually

KEYS = ("queue", "inbox", "jobs", "done", "t", "str")


def worker(port, protocol, name, n, errors):
    try:
        r = redis.Redis(port=port, **protocol)
        for i in range(n):
            r.rpush("inbox", f"{name}{i}")
        r.close()
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


def run(port_a, port_b, protocol, n):
    a = redis.Redis(port=port_a, decode_responses=True, **protocol)
    b = redis.Redis(port=port_b, decode_responses=True, **protocol)
    a.delete(*KEYS)
    eventually("deletes reach b", lambda: b.exists(*KEYS) == 0 or b.keys("*"))

    # A queue: produced at a, consumed at b once every job has arrived.
    jobs = [f"job{i}" for i in range(n)]
    for i, job in enumerate(jobs):
        assert a.rpush("queue", job) == i + 1
    assert a.llen("queue") == n
    eventually("the queue at b", lambda: b.llen("queue") == n or b.llen("queue"))
    assert b.type("queue") == "list"
    assert b.lrange("queue", 0, -1) == jobs, "the pushes of one site arrive in their order"
    assert b.lindex("queue", 0) == "job0" and b.lindex("queue", -1) == jobs[-1]
    assert b.lindex("queue", n) is None
    consumed = b.lpop("queue", 3)
    assert consumed == jobs[:3], consumed
    while (job := b.lpop("queue")) is not None:
        consumed.append(job)
    assert consumed == jobs
    assert b.exists("queue") == 0 and b.llen("queue") == 0
    assert b.lpop("queue") is None and b.lpop("queue", 2) is None
    eventually("the pops at a", lambda: a.exists("queue") == 0 or a.lrange("queue", 0, -1))

    # Pushes at both sites at once: both end with the same list, every item once,
    # the items of each site in the order that site pushed them.
    errors = []
    threads = [threading.Thread(target=worker, args=(p, protocol, name, n, errors))
               for p, name in ((port_a, "a"), (port_b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 4)
    assert not errors, errors
    want = sorted(f"{name}{i}" for name in "ab" for i in range(n))

    def same_inbox():
        at_a, at_b = a.lrange("inbox", 0, -1), b.lrange("inbox", 0, -1)
        return (at_a == at_b and sorted(at_a) == want) or (len(at_a), len(at_b))

    eventually("the same inbox at both sites", same_inbox)
    inbox = a.lrange("inbox", 0, -1)
    for name in "ab":
        assert [v for v in inbox if v[0] == name] == [f"{name}{i}" for i in range(n)], inbox

    # Edits at a, read at b.
    assert a.rpush("jobs", "a", "b", "c", "b") == 4
    assert a.linsert("jobs", "BEFORE", "c", "x") == 5
    assert a.linsert("jobs", "AFTER", "nosuch", "y") == -1
    assert a.lset("jobs", 0, "A") is True
    try:
        a.lset("jobs", 9, "z")
        raise AssertionError("LSET out of range answered")
    except redis.ResponseError as e:
        assert "index out of range" in str(e), e
    assert a.lrem("jobs", 0, "b") == 2
    assert a.lrange("jobs", 0, -1) == ["A", "x", "c"]
    eventually("the edits at b", lambda: b.lrange("jobs", 0, -1) == ["A", "x", "c"] or b.lrange("jobs", 0, -1))
    assert b.lpos("jobs", "c") == 2
    assert b.lpos("jobs", "nosuch") is None
    assert b.lpos("jobs", "x", count=0) == [1]

    # Moves at b, read at a.
    assert b.lmove("jobs", "done", "LEFT", "RIGHT") == "A"
    assert b.rpoplpush("jobs", "done") == "c"
    assert b.lrange("done", 0, -1) == ["c", "A"]
    eventually("the moves at a", lambda: (a.lrange("jobs", 0, -1), a.lrange("done", 0, -1)) == (["x"], ["c", "A"])
               or (a.lrange("jobs", 0, -1), a.lrange("done", 0, -1)))
    assert list(a.lmpop(2, "nosuch", "jobs", direction="LEFT")) == ["jobs", ["x"]]
    assert a.exists("jobs") == 0
    assert a.lmpop(1, "nosuch", direction="RIGHT", count=2) is None
    assert a.ltrim("done", 0, 0) is True
    eventually("the trim at b", lambda: (b.lrange("done", 0, -1), b.exists("jobs")) == (["c"], 0)
               or (b.lrange("done", 0, -1), b.exists("jobs")))

    # A transactional pipeline of list commands.
    with a.pipeline() as pipe:
        pipe.rpush("t", "1", "2", "3").lpop("t").rpop("t", 1).llen("t").lrange("t", 0, -1)
        assert pipe.execute() == [3, "1", ["3"], 1, ["2"]]
    a.set("str", "v")
    try:
        a.rpush("str", "x")
        raise AssertionError("RPUSH to a string answered")
    except redis.ResponseError as e:
        assert "WRONGTYPE" in str(e), e

    # Deleted at a: gone at b.
    assert a.delete("inbox") == 1
    eventually("the delete at b", lambda: b.exists("inbox") == 0 or b.llen("inbox"))
    a.delete(*KEYS)
    a.close()
    b.close()


def main():
    port_a, port_b, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for name, protocol in (("resp2", {"protocol": 2}), ("resp3", {"protocol": 3})):
        run(port_a, port_b, protocol, n)
        print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main()
