"""One progress line for a long capture, at most every INTERVAL seconds (absl logging)."""

import time
from collections.abc import Callable

from absl import logging

INTERVAL = 5.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """update(done, hits) logs "<what>: done/total, records/s, cache hits, ETA" when INTERVAL has
    passed since the last line, and always for the last record."""

    def __init__(self, total: int, what: str, clock: Callable[[], float] = time.monotonic):
        self.total, self.what, self._clock = total, what, clock
        self._start = clock()
        self._last = self._start

    def line(self, done: int, hits: int) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = done / elapsed
        left = self.total - done
        eta = _duration(left / rate) if rate > 0 else "unknown"
        return (
            f"{self.what}: {done}/{self.total} records, {rate:.1f} records/s, {hits} cache hits, "
            f"ETA {eta if left else '0 s'}"
        )

    def update(self, done: int, hits: int) -> None:
        now = self._clock()
        if done < self.total and now - self._last < INTERVAL:
            return
        self._last = now
        logging.info("%s", self.line(done, hits))
