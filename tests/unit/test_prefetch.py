"""The batch's background stages (core/batch/prefetch.py): order, bounded look-ahead, errors handed to the right thread."""
import threading

import pytest

from core.batch.prefetch import OrderedWorker, Prefetcher


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetcher_keeps_order_and_hands_over_load_errors(depth):
    def load(i):
        if i == 3:
            raise ValueError("patient 3 is corrupt")
        return i * 10

    got = list(Prefetcher(range(6), load, depth=depth))
    assert [i for i, _ in got] == list(range(6))
    assert [r for i, r in got if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(got[3][1], ValueError) and "corrupt" in str(got[3][1])


def test_prefetcher_reads_at_most_depth_ahead_and_stops_when_left():
    started = []
    gate = threading.Semaphore(0)

    def load(i):
        started.append(i)
        return i

    it = iter(Prefetcher(range(100), load, depth=2))
    assert next(it) == (0, 0)
    for _ in range(50):  # give the thread time to run ahead as far as it may
        gate.acquire(timeout=0.01)
    # item 0 consumed, 2 waiting in the queue, 1 loaded and blocked on put: never more
    assert len(started) <= 4
    it.close()  # leaving the loop early stops the loader thread
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetcher_reraises_non_exception_in_consumer():
    def load(i):
        if i == 1:
            raise SystemExit("stop")
        return i

    with pytest.raises(SystemExit):
        list(Prefetcher(range(3), load, depth=2))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_ordered_worker_runs_in_order(depth):
    done = []
    w = OrderedWorker(done.append, depth=depth)
    for i in range(20):
        w.submit(i)
    w.close()
    assert done == list(range(20))


def test_ordered_worker_error_reaches_the_caller_and_stops_later_jobs():
    done = []

    def fn(i):
        if i == 2:
            raise SystemExit("killed in the transaction")
        done.append(i)

    w = OrderedWorker(fn, depth=1)
    with pytest.raises(SystemExit):
        for i in range(50):
            w.submit(i)
        w.close()
    w.close()  # closing again after the error is harmless
    assert done == [0, 1]
