"""A redis-py application that finds its node through Sentinel, as stock code does.

Usage: sentinel_loop.py <master name> <host:port of a sentinel>...

It writes `py:<n>` = n through `Sentinel.master_for(name)` (with redis-py's own
retry on connection errors) and reads it back, one operation after another, and
prints one line per operation to stdout:

    ok <n> <site that served it> <ms the operation took>
    err <n> <error>

Before each operation it asks the sentinels which node to use
(`discover_master`) and prints `master <host> <port>` when the answer changes.
It stops when its stdin closes (or after 10 minutes) and prints
`done <oks> <errors>`.
"""

import sys
import threading
import time

from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError, ReadOnlyError
from redis.retry import Retry
from redis.sentinel import Sentinel

RUN_SECONDS_MAX = 600


def main():
    name = sys.argv[1]
    sentinels = [(hp.rsplit(":", 1)[0], int(hp.rsplit(":", 1)[1])) for hp in sys.argv[2:]]
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    # A sentinel that does not answer is skipped at once (no retries on it): the
    # next one is asked.
    quick = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry": Retry(NoBackoff(), 0)}
    sentinel = Sentinel(sentinels, sentinel_kwargs=quick, socket_timeout=0.5, socket_connect_timeout=0.5)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 60)
    master = sentinel.master_for(
        name,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError, ReadOnlyError],
    )
    seen = None
    oks = errors = 0
    n = 0
    started = time.monotonic()
    while not stop.is_set() and time.monotonic() - started < RUN_SECONDS_MAX:
        try:
            now = sentinel.discover_master(name)
        except Exception:  # every sentinel down or none names a master
            now = None
        if now != seen:
            seen = now
            print("master %s %s" % (now if now else ("-", "-")), flush=True)
        t0 = time.monotonic()
        try:
            master.set("py:%d" % n, n)
            got = master.get("py:%d" % n)
            assert got == str(n).encode(), got
            site = master.info("server")["xsite_site"]
            oks += 1
            print("ok %d %s %d" % (n, site, (time.monotonic() - t0) * 1000), flush=True)
        except Exception as e:  # reported, counted, and the loop goes on
            errors += 1
            print("err %d %s" % (n, repr(e).replace("\n", " ")), flush=True)
        n += 1
        time.sleep(0.01)
    print("done %d %d" % (oks, errors), flush=True)


if __name__ == "__main__":
    main()
