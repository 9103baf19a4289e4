import logging

from data.remote import progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_at_most_every_interval_and_always_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    meter = progress.Progress(100, "server", clock=clock)
    clock.now += 1.0
    meter.update(10, 3)  # too soon
    clock.now += progress.INTERVAL
    meter.update(60, 3)
    clock.now += 1.0
    meter.update(70, 3)  # too soon again
    clock.now += 2.0
    meter.update(100, 50)
    assert [r.getMessage() for r in caplog.records] == [
        "server: 60/100 records, 10.0 records/s, 3 cache hits, ETA 4 s",
        "server: 100/100 records, 11.1 records/s, 50 cache hits, ETA 0 s",
    ]


def test_long_etas_read_in_minutes_and_hours():
    clock = Clock()
    meter = progress.Progress(100_000, "s", clock=clock)
    clock.now += 10.0
    assert meter.line(10, 0).endswith("1.0 records/s, 0 cache hits, ETA 27 h 46 min")
    assert meter.line(1000, 0).endswith("ETA 16 min 30 s")
    assert meter.line(0, 0).endswith("ETA unknown")
