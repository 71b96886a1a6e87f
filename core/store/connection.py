"""Connections: a writer per write, shared read-only readers for the app, transactions."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb

from core.store.schema import HIST_INSERT, HIST_VIEW, LEGACY_TS_METHOD, SCHEMA, TEMPERATURE_COLUMNS


class DatabaseBusy(RuntimeError):
    """The database file is locked by a writer (a batch is running) and stayed locked while we retried."""


def connect(path: str | Path, read_only: bool = False, retries: int = 20, wait_s: float = 0.25):
    """Open the database; a writer creates the schema. Opens retry while another process holds the lock.

    A write connection first closes this process's shared readers of the file (:func:`release_readers`).

    Args:
        path: the DuckDB file (a writer creates it when missing).
        read_only: open read-only (the file must exist).
        retries: attempts while the file is locked by another process.
        wait_s: seconds between two attempts.

    Returns:
        the DuckDB connection.

    Raises:
        FileNotFoundError: for a read-only open of a missing file.
        DatabaseBusy: when the file stayed locked through every attempt.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no results database at {path}")
    if not read_only:  # this process's shared readers of the file would refuse a writer (other configuration)
        release_readers(path)
    last = None
    for _ in range(max(1, retries)):
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            if not read_only:
                con.execute(SCHEMA)
                migrate(con)
            return con
        except duckdb.IOException as e:  # lock held by another process
            last = e
            time.sleep(wait_s)
    raise DatabaseBusy(f"{path} is locked by another process (a batch is writing?): {last}")


def migrate(con) -> None:
    """Bring a writer's older tables to the current schema, each in one transaction:

    * a ``temperatures`` table without ``method`` (one temperature set per model, fitted on its deterministic
      logits) is rebuilt with the column, its rows marked :data:`core.store.schema.LEGACY_TS_METHOD` (what they
      were fitted for);
    * an ``uncertainty_bins`` / ``calibration_bins`` table (one row per bin, before ``uncertainty_hist`` /
      ``calibration_hist``) is moved into the list table and replaced by the view of that name
      (:data:`core.store.schema.UNCERTAINTY_VIEW`, :data:`core.store.schema.CALIBRATION_VIEW`).
    """
    for name in HIST_INSERT:
        _migrate_bin_table(con, name)
    cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'temperatures' AND table_schema = current_schema()").fetchall()]
    if "method" in cols:
        return
    old = [c for c in TEMPERATURE_COLUMNS if c != "method"]
    sel = ", ".join("?::VARCHAR AS method" if c == "method" else c for c in TEMPERATURE_COLUMNS)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"CREATE TEMP TABLE _old_temperatures AS SELECT {', '.join(old)} FROM temperatures")
        con.execute("DROP TABLE temperatures")
        con.execute(SCHEMA)  # the current temperatures table (the others exist: untouched)
        con.execute(f"INSERT INTO temperatures SELECT {sel} FROM _old_temperatures", [LEGACY_TS_METHOD])
        con.execute("DROP TABLE _old_temperatures")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _migrate_bin_table(con, name: str) -> None:
    kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = ? "
                       "AND table_schema = current_schema()", [name]).fetchone()
    if kind is None or kind[0] != "BASE TABLE":
        return
    if name == "uncertainty_bins":  # n_error is not stored: it must be n_fp + n_fn
        bad = con.execute("SELECT count(*) FROM uncertainty_bins WHERE n_error IS DISTINCT FROM n_fp + n_fn").fetchone()[0]
        if bad:
            raise ValueError(f"cannot migrate uncertainty_bins: {bad} rows have n_error != n_fp + n_fn")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(HIST_INSERT[name](name))  # names from core.store.schema, never input
        con.execute(f"DROP TABLE {name}")
        con.execute(HIST_VIEW[name])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


# ---- shared read-only connections (the app's cached queries) ----------------------------------------------
READER_IDLE_S = 1.0  # a shared reader unused this long is closed, so a batch in another process can write


class _Reader:
    __slots__ = ("con", "users", "last", "memo")

    def __init__(self, con):
        # memo: answers about the file that cannot change while it is open read-only (no writer can open it),
        # e.g. whether a run's derived tables are current (:func:`_use_derived`)
        self.con, self.users, self.last, self.memo = con, 0, time.monotonic(), {}


_READERS: dict[str, _Reader] = {}


_READERS_CV = threading.Condition()


_CLOSER: list[threading.Thread] = []


_TLS = threading.local()  # the shared reader whose cursor this thread is using (for its memo)


def _reader_key(path) -> str:
    return str(Path(path).resolve())


@contextmanager
def shared_reader(path: str | Path):
    """A read-only cursor on the one connection this process keeps open per database file (context manager).

    Opening a large DuckDB file reads its catalog each time; a cursor on an open connection costs next to
    nothing, so the many cached queries of one page run share a connection instead of opening the file each.
    The connection stays open only while in use and :data:`READER_IDLE_S` after: DuckDB lets no other
    process write while a reader holds the file, and the batch (:func:`writer`, which retries for a minute)
    writes between two patients. A write connection of this process (:func:`connect` with
    ``read_only=False``) first closes it (:func:`release_readers`). Each cursor is for one thread (DuckDB
    cursors are not shared).

    Args:
        path: the database file.

    Yields:
        a DuckDB cursor, closed on exit.

    Raises:
        FileNotFoundError: when the file does not exist.
        DatabaseBusy: as :func:`connect`, when a writer holds the file.
    """
    key = _reader_key(path)
    with _READERS_CV:
        r = _READERS.get(key)
        if r is None:
            r = _READERS[key] = _Reader(connect(path, read_only=True))
            _start_closer()
        r.users += 1
        try:
            cur = r.con.cursor()
        except BaseException:
            r.users -= 1
            raise
    outer = getattr(_TLS, "reader", None)
    _TLS.reader = r
    try:
        yield cur
    finally:
        _TLS.reader = outer
        cur.close()
        with _READERS_CV:
            r.users -= 1
            r.last = time.monotonic()
            _READERS_CV.notify_all()


def release_readers(path: str | Path | None = None, timeout: float = 60.0) -> None:
    """Close this process's shared reader of ``path`` (every file's when None).

    Args:
        path: the database file, or None for every file.
        timeout: seconds to wait for the queries running on a reader to finish; a reader still in use
            after it is left open.
    """
    keys = None if path is None else {_reader_key(path)}
    deadline = time.monotonic() + timeout
    with _READERS_CV:
        for key in [k for k in _READERS if keys is None or k in keys]:
            r = _READERS[key]
            while r.users > 0 and time.monotonic() < deadline:
                _READERS_CV.wait(0.05)
            if r.users == 0 and _READERS.get(key) is r:
                del _READERS[key]
                r.con.close()


def _start_closer() -> None:
    """One daemon thread that closes shared readers idle for :data:`READER_IDLE_S` (called holding the lock)."""
    if _CLOSER and _CLOSER[0].is_alive():
        return

    def loop():
        while True:
            time.sleep(READER_IDLE_S / 4)
            with _READERS_CV:
                now = time.monotonic()
                for key, r in list(_READERS.items()):
                    if r.users == 0 and now - r.last >= READER_IDLE_S:
                        del _READERS[key]
                        r.con.close()

    t = threading.Thread(target=loop, name="tumourqa-reader-closer", daemon=True)
    _CLOSER[:] = [t]
    t.start()


@contextmanager
def writer(path: str | Path, retries: int = 240, wait_s: float = 0.25):
    """A short-lived write connection (context manager): open, yield, close.

    The batch opens one per write, so between two patients nobody holds the lock and the app reads the last
    committed state.

    Args:
        path: the database file (created, with the schema, when missing).
        retries: attempts while a reader or another writer holds the file.
        wait_s: seconds between two attempts (the default waits up to a minute).

    Yields:
        the connection, closed on exit.

    Raises:
        DatabaseBusy: when the file stayed locked through every attempt.
    """
    con = connect(path, read_only=False, retries=retries, wait_s=wait_s)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con):
    """A transaction on ``con`` (context manager): committed on exit, rolled back (and re-raised) on any error."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")
