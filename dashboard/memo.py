"""Results of a page's computations kept per selection, so that a rerun that changes nothing they depend on
(a widget of another part of the page, a tab switch and back, a slider moved back) costs a dictionary lookup.

Keyed by :attr:`dashboard.selection.Selection.key` (database file and version, run, models, method, mask,
stratification, quantile range) plus the function and its other arguments: a finished batch changes the file's
version, so a stale result is never served. Process-wide (every session of the same selection shares it), least
recently used first out. DataFrames come back as shallow copies (pandas copy-on-write: a caller that changes its
copy does not change the kept one); Plotly figures are kept frozen (:func:`dashboard.plots.freeze`: their dict for
``st.plotly_chart`` is built once, not on every rerun; changing one raises); other values come back as they are:
callers must not mutate them.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import pandas as pd
import plotly.graph_objects as go

from dashboard.plots import FrozenFigure, freeze

MAX_ENTRIES = 256

_MEMO: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _frozen(v):
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, set):
        return tuple(sorted(v))
    hash(v)  # anything else must be hashable (a frame as an argument is a caller's mistake: TypeError)
    return v


def _out(v):
    if isinstance(v, pd.DataFrame):
        return v.copy(deep=False)
    if isinstance(v, tuple):
        return tuple(_out(x) for x in v)
    return v


def get(sel, key: tuple, build):
    """The value of ``build()`` for this selection and ``key``, computed once and then kept.

    Args:
        sel: the page's :class:`dashboard.selection.Selection`.
        key: what else the value depends on (names, widget values; lists are frozen to tuples).
        build: a function of no argument computing it.

    Returns:
        the value (frames as shallow copies).
    """
    k = (sel.key, _frozen(key))
    with _LOCK:
        if k in _MEMO:
            _MEMO.move_to_end(k)
            return _out(_MEMO[k])
    value = build()
    if isinstance(value, go.Figure) and not isinstance(value, FrozenFigure):
        value = freeze(value)
    with _LOCK:
        _MEMO[k] = value
        while len(_MEMO) > MAX_ENTRIES:
            _MEMO.popitem(last=False)
    return _out(value)


def per_selection(fn):
    """Decorate ``fn(sel, *args, **kwargs)`` (hashable or list arguments) to keep its results with :func:`get`."""
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(sel, *args, **kwargs):
        return get(sel, (name, args, kwargs), lambda: fn(sel, *args, **kwargs))
    wrapper.uncached = fn
    return wrapper


def clear() -> None:
    """Forget every kept value (tests, the latency bench's cold start)."""
    with _LOCK:
        _MEMO.clear()
