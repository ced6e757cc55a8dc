"""A redis-py application with client-side geographic failover, as stock code does.

Usage: multidb_loop.py <REST API port> <lag tolerance ms> <host:port:weight[:REST API port]>...

It builds a `MultiDBClient` over one database per `host:port:weight` (its health
check URL `http://<host>`, the REST API on the one port given for all, as
redis-py wants, unless a database names its own: sites behind published container
ports share one host and differ by port), checked by redis-py's
`LagAwareHealthCheck` only. It writes
`mdb:<n>` = n, reads it back and asks which site served it (`INFO server`), one
operation after another, and prints one line per operation to stdout:

    ok <n> <site that served the INFO> <ms the operation took>
    moved <n> <database before> <what the read got>   (it failed over between write and read)
    err <n> <error>

When the database in use changes it prints `active <host> <port>`. It stops when
its stdin closes (or after 10 minutes) and prints `done <oks> <errors>`.

The settings make failover and failback take a second or so instead of minutes:
health checks every 0.2 s with one probe, a breaker that opens after 2 failed
commands, a fallback to the heaviest healthy database tried every 0.5 s, and
commands retried for about 2 s (enough to outlast the breaker opening).

The one thing it adds to redis-py is `OneLagAwareHealthCheckPerDatabase`: redis-py
8.1.0's `LagAwareHealthCheck` keeps one HTTP client and sets its `base_url` to the
database's `health_check_url` at the start of each check, while `MultiDBClient`
checks all databases at once; a check's requests then go to whichever URL was set
last, so every database but the last is asked of the wrong REST API and never
found ("Could not find a matching bdb"), with any server. One stock instance per
database sends the same requests, each to its own database's URL.
"""

import logging
import sys
import threading
import time

from redis.asyncio.multidb.healthcheck import AbstractHealthCheck, LagAwareHealthCheck
from redis.backoff import ExponentialBackoff
from redis.multidb.client import MultiDBClient
from redis.multidb.config import DatabaseConfig, MultiDbConfig
from redis.retry import Retry

RUN_SECONDS_MAX = 600
HEALTH_CHECK_INTERVAL_S = 0.2
AUTO_FALLBACK_INTERVAL_S = 0.5
COMMAND_RETRIES = 20
SOCKET_TIMEOUT_S = 0.5


class OneLagAwareHealthCheckPerDatabase(AbstractHealthCheck):
    """Stock `LagAwareHealthCheck`s, one per database (see the module docs)."""

    def __init__(self, **kwargs):
        self._kwargs = kwargs
        self._checks = {}
        like = LagAwareHealthCheck(**kwargs)
        super().__init__(like.health_check_probes, like.health_check_delay, like.health_check_timeout)

    async def check_health(self, database, hc_client):
        kwargs = database.client.get_connection_kwargs()
        key = (kwargs["host"], kwargs["port"])
        if key not in self._checks:
            mine = dict(self._kwargs)
            if key in REST_PORTS:
                mine["rest_api_port"] = REST_PORTS[key]
            self._checks[key] = LagAwareHealthCheck(**mine)
        return await self._checks[key].check_health(database, hc_client)


# Per database (host, port): its own REST API port, when its spec names one.
REST_PORTS = {}


def database(spec):
    parts = spec.split(":")
    host, port, weight = parts[:3]
    health_check_url = "http://%s" % host
    if len(parts) == 4:
        REST_PORTS[(host, int(port))] = int(parts[3])
    return DatabaseConfig(
        weight=float(weight),
        client_kwargs={
            "host": host,
            "port": int(port),
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
        },
        health_check_url=health_check_url,
    )


def active_address(client):
    active = client.command_executor.active_database
    kwargs = active.client.get_connection_kwargs() if active else None
    return (kwargs["host"], kwargs["port"]) if kwargs else ("-", "-")


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="multidb_loop: %(name)s: %(message)s")
    rest_api_port = int(sys.argv[1])
    tolerance_ms = int(sys.argv[2])
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    config = MultiDbConfig(
        databases_config=[database(spec) for spec in sys.argv[3:]],
        command_retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), COMMAND_RETRIES),
        health_checks=[
            OneLagAwareHealthCheckPerDatabase(
                rest_api_port=rest_api_port,
                lag_aware_tolerance=tolerance_ms,
                http_timeout=SOCKET_TIMEOUT_S,
                health_check_probes=1,
                health_check_timeout=2 * SOCKET_TIMEOUT_S,
            )
        ],
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        min_num_failures=2,
        failure_rate_threshold=0.0,
        failures_detection_window=1.0,
        failover_delay=0.1,
        auto_fallback_interval=AUTO_FALLBACK_INTERVAL_S,
    )
    client = MultiDBClient(config)
    seen = None
    oks = errors = 0
    n = 0
    started = time.monotonic()
    while not stop.is_set() and time.monotonic() - started < RUN_SECONDS_MAX:
        t0 = time.monotonic()
        before = active_address(client)
        try:
            client.set("mdb:%d" % n, n)
            got = client.get("mdb:%d" % n)
            if got != str(n).encode() and active_address(client) != before:
                # The client moved to another site between the write and the read:
                # replication is asynchronous, so the read may not see the write yet.
                print("moved %d %s %s" % (n, before, repr(got)), flush=True)
                n += 1
                continue
            assert got == str(n).encode(), got
            site = client.info("server")["xsite_site"]
            oks += 1
            print("ok %d %s %d" % (n, site, (time.monotonic() - t0) * 1000), flush=True)
        except Exception as e:  # reported, counted, and the loop goes on
            errors += 1
            print("err %d %s" % (n, repr(e).replace("\n", " ")), flush=True)
        now = active_address(client)
        if now != seen:
            seen = now
            print("active %s %s" % now, flush=True)
        n += 1
        time.sleep(0.01)
    client.close()
    print("done %d %d" % (oks, errors), flush=True)


if __name__ == "__main__":
    main()
