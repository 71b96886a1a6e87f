"""The batch's two background stages around the inference loop (which keeps the GPU, or the CPU cores, busy).

* :class:`Prefetcher`: loads, validates and preprocesses the next patients in a background thread, at most
  ``depth`` ahead (a bounded queue), while the current patient is inferred. A load that raises an
  ``Exception`` is handed to the consumer as that item's result (the batch turns it into the patient's
  failed rows, exactly as an inline load would); anything else (``SystemExit``, ...) stops the loader and is
  re-raised in the consumer's thread.
* :class:`OrderedWorker`: runs a function on submitted jobs, in submission order, in one background thread
  with at most ``depth`` jobs waiting: the batch's metric suite, NIfTI maps and the patient's database
  transaction, so the next patient's inference starts while the previous one is being finished. One thread
  means the database writes stay ordered and one transaction per patient. Whatever the function raises
  (any ``BaseException``) stops the worker and is re-raised by the next :meth:`OrderedWorker.submit` or by
  :meth:`OrderedWorker.close` in the caller's thread.

Both take ``depth=0`` for the same work done inline (no thread), which is what a debugger wants.
Threads, not processes: loading (zlib, nibabel), the metric engine (numpy) and torch release the GIL for
their heavy parts, and the arrays stay shared without copies.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """``for item, result in Prefetcher(items, load, depth=2)``: ``result`` is ``load(item)`` or the
    ``Exception`` it raised; items come back in order. Leaving the loop early stops the thread.

    Args:
        items: what to load (materialised as a list).
        load: the loading function, run in the background thread.
        depth: items loaded ahead at most (0: inline, no thread).
        name: the thread's name.
    """

    def __init__(self, items: Iterable, load: Callable[[Any], Any], depth: int = 2, name: str = "prefetch"):
        self.items, self.load, self.depth, self.name = list(items), load, int(depth), name
        self._stop = threading.Event()

    def _call(self, item):
        try:
            return self.load(item)
        except Exception as e:  # the item's own failure: handed to the consumer
            return e

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if self.depth <= 0:
            for item in self.items:
                yield item, self._call(item)
            return
        q: queue.Queue = queue.Queue(maxsize=self.depth)

        def put(x) -> bool:
            while not self._stop.is_set():
                try:
                    q.put(x, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def run():
            try:
                for item in self.items:
                    if not put((item, self._call(item))):
                        return
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
                put(_Raised(e))
                return
            put(_END)

        t = threading.Thread(target=run, name=self.name, daemon=True)
        t.start()
        try:
            while True:
                x = q.get()
                if x is _END:
                    return
                if isinstance(x, _Raised):
                    raise x.exc
                yield x
        finally:
            self._stop.set()
            t.join(timeout=30)


class OrderedWorker:
    """``w = OrderedWorker(fn, depth=1)``; ``w.submit(job)`` ...; ``w.close()``: ``fn(job)`` in order in one thread.

    Args:
        fn: the function run on every job.
        depth: jobs waiting at most (0: ``fn`` runs inline in :meth:`submit`, no thread).
        name: the thread's name.
    """

    def __init__(self, fn: Callable[[Any], None], depth: int = 1, name: str = "finisher"):
        self.fn, self.depth = fn, int(depth)
        self._error: BaseException | None = None  # raised once in the caller's thread
        self._failed = False  # stays set: later jobs are dropped
        self._thread = None
        if self.depth > 0:
            self._q: queue.Queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is _END:
                return
            if self._failed:
                continue  # after a failure: drain without running
            try:
                self.fn(job)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error, self._failed = e, True

    def _raise(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def submit(self, job) -> None:
        """Run ``fn(job)`` (inline with depth 0); blocks while ``depth`` jobs wait; raises an earlier job's error.

    Raises:
        BaseException: the error an earlier job raised (once); RuntimeError on every later call after it.
    """
        if self._thread is None:
            self.fn(job)
            return
        self._raise()
        if self._failed:
            raise RuntimeError("the background worker stopped after an earlier error")
        while True:
            try:
                self._q.put(job, timeout=0.1)
                return
            except queue.Full:
                self._raise()

    def close(self) -> None:
        """Finish every submitted job, stop the thread; raise the first error a job raised."""
        if self._thread is not None and self._thread.is_alive():
            self._q.put(_END)
            self._thread.join()
        self._raise()
