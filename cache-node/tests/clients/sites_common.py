"""What the redis-py scripts that run across two sites share."""

import time

# How long any wait for the other site may take.
WAIT_S = 30


def eventually(what, check):
    """Waits until `check()` returns True (anything else is what it still shows),
    at most WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = check()
        if got is True:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {got!r} after {WAIT_S} s")
        time.sleep(0.01)
