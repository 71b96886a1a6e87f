"""Background prefetch of cached values a page will need next (the first move of the entropy filter)."""
from __future__ import annotations

import threading


_PREFETCHED: dict[tuple, threading.Thread] = {}


_QUEUED: list[tuple] = []


def queue_prefetch(fn, args: tuple, n_private: int = 2) -> None:
    """Queue ``fn(*args)`` (a cached function) to run in the background once this page is drawn.

    The queue is started by :func:`start_prefetch`; only the newest 16 entries are kept (a page that stopped
    early never started its queue).

    Args:
        fn: a Streamlit-cached function (``st.cache_data`` / ``st.cache_resource``).
        args: its positional arguments.
        n_private: how many of the last arguments are the large ones that the cache key leaves out
            (underscore-named), whose digest is among the others.
    """
    _QUEUED.append((fn, args, n_private))
    del _QUEUED[:-16]  # a page that stopped early never started its queue: keep the newest only


def start_prefetch() -> None:
    """Start the work queued during this page run, one background thread per entry, and empty the queue.

    The entries come from :func:`queue_prefetch` (:func:`dashboard.subsets.subset_bins`,
    :func:`dashboard.subsets.patient_table`, :func:`dashboard.subsets.subset_summary` and
    :func:`dashboard.tables.leaderboard`). Call at the END of a page, so that the background work does not
    compete with drawing it.
    """
    while _QUEUED:
        _prefetch(*_QUEUED.pop(0))


def _prefetch(fn, args: tuple, n_private: int) -> None:
    """Compute ``fn(*args)`` in a background thread (none while one for the same key still runs; a finished
    key is a cache hit, or recomputed if it was evicted): a page opened on the whole cohort shows the batch's
    totals at once, and the per-group sums that the first move of the quantile filter needs (a pass over every
    patient's bins) are made while the user reads the page. The foreground call with the same arguments waits
    for this one through Streamlit's per-key compute lock and then reads the cache, so nothing is computed
    twice; an error here is left to the foreground call to report."""
    key = (fn.__qualname__,) + args[:len(args) - n_private]
    if len(args[-1]) == 0 or (key in _PREFETCHED and _PREFETCHED[key].is_alive()):
        return  # (a finished key starts again: a cache hit returns at once, an evicted entry is recomputed)
    if len(_PREFETCHED) > 64:
        _PREFETCHED.clear()

    def work():
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the foreground call recomputes and shows the error
            pass

    t = threading.Thread(target=work, name="tumourqa-prefetch", daemon=True)
    try:
        from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

        add_script_run_ctx(t, get_script_run_ctx())
    except ImportError:  # pragma: no cover - older Streamlit
        pass
    _PREFETCHED[key] = t
    t.start()
