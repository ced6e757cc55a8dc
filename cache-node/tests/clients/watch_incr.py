"""redis-py's transactions as applications write them, against one server.

Usage: watch_incr.py <port> <increments per worker>

For RESP2 and then redis-py's default protocol, it checks a transactional
`pipeline()` (MULTI … EXEC: its replies, a runtime error inside, a queued error),
then runs two threads that each add 1 to `counter` <n> times with the WATCH retry
loop (`watch`, read, `multi`, write, `execute`, again on `WatchError`), and checks
that the counter is exactly 2 × <n>. It prints `ok <protocol> <retries>` per
protocol, and exits non-zero on any failure.
"""

import sys
import threading

import redis

WORKERS = 2


def check_pipeline(r):
    r.delete("a", "s")
    with r.pipeline() as pipe:
        pipe.set("a", 1).incr("a").get("a")
        assert pipe.execute() == [True, 2, b"2"]
    # A runtime error is the command's result; the others still ran.
    r.set("s", "text")
    with r.pipeline() as pipe:
        pipe.incr("s").set("a", 5)
        results = pipe.execute(raise_on_error=False)
        assert isinstance(results[0], redis.ResponseError), results
        assert results[1] is True, results
    assert r.get("a") == b"5"
    # A command refused while queuing aborts the whole transaction.
    with r.pipeline() as pipe:
        pipe.set("a", 6).execute_command("NOSUCHCOMMAND")
        try:
            pipe.execute()
            raise AssertionError("EXEC ran a transaction with a queued error")
        except redis.ResponseError as e:
            assert "unknown command" in str(e) or "EXECABORT" in str(e), e
    assert r.get("a") == b"5"


def incrementer(port, protocol, n, retries, errors):
    try:
        r = redis.Redis(port=port, **protocol)
        with r.pipeline() as pipe:
            for _ in range(n):
                while True:
                    try:
                        pipe.watch("counter")
                        value = int(pipe.get("counter") or 0)
                        pipe.multi()
                        pipe.set("counter", value + 1)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        retries.append(1)
        r.close()
    except Exception as e:  # reported by the main thread
        errors.append(repr(e))


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    for name, protocol in [("resp2", {"protocol": 2}), ("default", {})]:
        r = redis.Redis(port=port, **protocol)
        check_pipeline(r)
        r.delete("counter")
        retries, errors = [], []
        workers = [
            threading.Thread(target=incrementer, args=(port, protocol, n, retries, errors)) for _ in range(WORKERS)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, errors
        count = int(r.get("counter"))
        assert count == WORKERS * n, (count, WORKERS * n)
        print("ok %s %d" % (name, len(retries)), flush=True)
        r.close()


if __name__ == "__main__":
    main()
