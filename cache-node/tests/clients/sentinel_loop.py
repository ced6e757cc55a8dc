"""A redis-py application that finds its node through Sentinel, as stock code does.

Usage: sentinel_loop.py <master name> <host:port of a sentinel>...

It writes `py:<n>` = n through `Sentinel.master_for(name)` (with redis-py's own
retry on connection errors) and reads it back, one operation after another, and
prints one line per operation to stdout:

    ok <n> <site that served it> <ms the operation took> read-back|not-yet-here
    retry <n> <error>   (the first attempt failed; the application tries once more)
    err <n> <error>     (both failed)

(`ok` once the SET was acknowledged; `not-yet-here` when, across a failover, the
site that read it back had not received it yet.)

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
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 8)
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
        for attempt in (1, 2):
            try:
                master.set("py:%d" % n, n)
                # Read back where the client is now: across a failover the write may
                # not have reached the other site yet (it does once its site returns).
                read = "read-back" if master.get("py:%d" % n) == str(n).encode() else "not-yet-here"
                site = master.info("server")["xsite_site"]
                oks += 1
                print("ok %d %s %d %s" % (n, site, (time.monotonic() - t0) * 1000, read), flush=True)
                break
            except Exception as e:  # reported, counted, and the loop goes on
                if attempt == 1:
                    # redis-py 8.1 retries a command on the connection it broke on,
                    # which reconnects to the old master's address: the application
                    # retries once on a fresh connection, which asks the sentinels.
                    print("retry %d %s" % (n, repr(e).replace("\n", " ")), flush=True)
                    continue
                errors += 1
                print("err %d %s" % (n, repr(e).replace("\n", " ")), flush=True)
        n += 1
        time.sleep(0.01)
    print("done %d %d" % (oks, errors), flush=True)


if __name__ == "__main__":
    main()
