"""The review store (core.review): round trip, append-only history, latest status, validation, concurrency,
and saving while a DuckDB writer holds the results database."""
import threading

import duckdb
import pytest

from core.store import review


def test_round_trip_history_and_latest(tmp_path):
    p = review.review_path(tmp_path / "results.duckdb")
    assert p == (tmp_path / "reviews.sqlite").resolve()
    assert review.current_status(p, "r1").empty  # no file yet: empty, not an error
    a = review.save_review(p, "r1", "M", "P1", "needs correction", "ET missed", "dr a")
    b = review.save_review(p, "r1", "M", "P1", "corrected", "", "dr b")
    review.save_review(p, "r1", "M", "P2", "accepted", "ok", "dr a")
    review.save_review(p, "r1", "N", "P1", "excluded", "", "dr a")
    review.save_review(p, "r2", "M", "P1", "accepted", "", "dr a")
    assert a["status"] == "needs correction" and b["id"] > a["id"]
    h = review.history(p, "r1", "M", "P1")
    assert list(h.status) == ["needs correction", "corrected"] and list(h.reviewer) == ["dr a", "dr b"]
    assert h.note.iloc[0] == "ET missed"
    cur = review.current_status(p, "r1", "M")
    assert dict(zip(cur.patient_id, cur.status)) == {"P1": "corrected", "P2": "accepted"}
    assert len(review.current_status(p, "r1")) == 3 and len(review.all_rows(p)) == 5  # nothing overwritten
    con = review._connect(p)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


@pytest.mark.parametrize("kw", [dict(status="ok"), dict(status="Accepted"), dict(note="x" * 2001),
                                dict(reviewer=""), dict(reviewer="   "), dict(reviewer="r" * 101)])
def test_validation(tmp_path, kw):
    args = dict(status="accepted", note="", reviewer="dr a") | kw
    with pytest.raises(ValueError):
        review.save_review(tmp_path / "reviews.sqlite", "r", "M", "P", **args)
    assert review.all_rows(tmp_path / "reviews.sqlite").empty


def test_sql_injection_is_data(tmp_path):
    p = tmp_path / "reviews.sqlite"
    pid = "P'); DROP TABLE reviews; --"
    review.save_review(p, "r", "M", pid, "accepted", "<script>alert(1)</script>", "dr a")
    assert review.history(p, "r", "M", pid).note.iloc[0] == "<script>alert(1)</script>"


def test_200_interleaved_saves_from_two_threads(tmp_path):
    p = tmp_path / "reviews.sqlite"
    errors = []

    def worker(name):
        try:
            for i in range(100):
                review.save_review(p, "r", "M", f"P{i % 7}", review.STATUSES[i % 5], f"{name}-{i}", name)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    rows = review.all_rows(p)
    assert len(rows) == 200 and set(rows.note) == {f"{n}-{i}" for n in "ab" for i in range(100)}
    assert rows.id.is_unique


def test_save_while_duckdb_writer_holds_results(tmp_path):
    db = tmp_path / "results.duckdb"
    writer = duckdb.connect(str(db))  # a batch's write connection
    writer.execute("CREATE TABLE t AS SELECT 1 AS x")
    try:
        row = review.save_review(review.review_path(db), "r", "M", "P", "accepted", "", "dr a")
        assert review.current_status(review.review_path(db), "r").id.tolist() == [row["id"]]
    finally:
        writer.close()
