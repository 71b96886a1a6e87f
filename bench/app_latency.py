"""Server-side latency of the dashboard on a large synthetic results database.

Fills a DuckDB file with the real schema (:data:`core.store.SCHEMA`): P patients (default 10,000) x 4 models x
4 methods x 3 regions, every metric name and mask of a real run (the demo's 55 metric names, 90 metric/mask
pairs per region; the one-pass deterministic method 78, without MI / EPKL), 20 calibration bins per (region,
mask), and per (region, mask, measure) an uncertainty histogram with K non-empty bins (default 100, the
issue's baseline; the demo's 56x64x56 patients fill 500-1000 of the 2991 bins, a BraTS-sized one more), three
measures (entropy, MI, EPKL) for the sampling methods and entropy only for deterministic, all values deterministic pseudo-random with a per-patient difficulty so that
Dice, ECE and entropy correlate as in a real cohort. Then, with ``streamlit.testing.v1.AppTest`` (the
script run on the server, no browser), measures for every page:

* first render: a new session opening the page with the caches cleared and the database file closed (cold),
  seconds (the one-off scan of installed Streamlit components that a server does at start-up is done before);
* rerun: the same view rerun with nothing changed, after ``--think`` seconds (median of 3): the fixed cost of
  every rerun; "at once": the same right after the first render, while the page's background prefetch runs;
* a filter change: the entropy quantile range moved to N random ranges (5 % steps, as the slider allows),
  seconds per rerun, median and p95 (on the pages that depend on the filter).

Targets of the dashboard issues: first render <= 1.5 s, filter change <= 250 ms (p95), unchanged rerun <= 50 ms.
Prints a table and the ratio of each figure to its target; ``--reference REV`` also measures the code of another
git revision in a child process (the same machine and load) and prints the ratios; ``--load N`` runs N busy
processes meanwhile; ``--build-only`` reports the database's size per (patient, model, method) and build time.

    python bench/app_latency.py [--patients 10000] [--unc-bins 100] [--db /tmp/tumourqa_latency/results.duckdb]
                                [--changes 20] [--reuse] [--think 5] [--load 1] [--reference [REV]]
                                [--reference-db LEGACY.duckdb] [--build-only] [--legacy-layout]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# the reference's child process (--code-root DIR) imports that checkout's core / dashboard, not this one's
_CODE = Path(sys.argv[sys.argv.index("--code-root") + 1]) if "--code-root" in sys.argv else ROOT
sys.path.insert(0, str(_CODE))

from core import metrics as M  # noqa: E402
from core import store
from core.store import derived  # noqa: E402

MODELS = ["SegResNet", "UNet-Res", "UNet-Res-ACE", "SwinUNETR-ext"]
METHODS = ["deterministic", "mc_dropout", "tta", "ensemble"]
REGIONS = ["WT", "TC", "ET"]
RUN = "run_latency"
# the Compare page draws only its open tab (?view=, app_pages/compare.py's TABS): each tab is measured as a view
COMPARE_TABS = ["Overview", "Leaderboard", "Patients", "Paired test", "Distributions"]
PAGES = (["home"] + [f"compare:{t}" for t in COMPARE_TABS]
         + ["reliability", "strata", "budget", "viewer", "quality", "glossary"])
FILTER_PAGES = [f"compare:{t}" for t in COMPARE_TABS] + ["reliability", "strata", "budget"]

# every (metric, mask) pair a real run stores per region (the demo database's 90, raters' soft-label metrics and
# lesion-wise metrics included); a one-pass method (deterministic) has no samples, hence no MI / EPKL metrics and
# no MI / EPKL uncertainty histograms (core.metrics.suite stores entropy only), as in a real run
TWO_MASKS = ("ace", "auroc_entropy", "auroc_epkl", "auroc_fn_tn", "auroc_fp_tp", "auroc_mi", "bnf_t50", "brier",
             "budget_capture_auc", "budget_ueo_auc", "cal_gap", "capture_at_5pct", "ece", "mce", "nll",
             "overconfidence", "soft_ace", "soft_brier", "soft_ece", "soft_mce", "soft_nll", "ueo_best",
             "ueo_best_threshold", "ueo_t50", "uncertain_fraction", "underconfidence")
BRAIN_ONLY = ("dice", "hd95", "interrater_dice", "lesion_fn", "lesion_fp", "lesion_pq_dice", "lesion_rq",
              "lesion_sq_dice", "lesion_sq_hd95", "lesion_tp", "nsd", "rater_dice_mean", "vol_crps_ml", "vol_fcrps_ml",
              "vol_in_pi", "vol_pi_hi_ml", "vol_pi_lo_ml", "vol_pi_nominal", "vol_q05_ml", "vol_q95_ml",
              "vol_sample_mean_ml", "vol_sample_sd_ml", "volume_error_ml", "volume_gt_ml", "volume_pred_ml")
METRIC_MASKS = (
    [(m, k) for m in TWO_MASKS for k in ("brain", "roi")]
    + [(m, k) for m in ("mean_entropy", "mean_epkl", "mean_mi") for k in ("brain", "roi", "pred", "boundary")]
    + [(m, "brain") for m in BRAIN_ONLY]
    + [("mean_confidence", "pred")]
)
SAMPLED_ONLY = {"auroc_mi", "auroc_epkl", "mean_mi", "mean_epkl"}  # not stored for the one-pass method (ti = 0)


LEGACY_UNCERTAINTY_BINS = """CREATE TABLE uncertainty_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    measure VARCHAR, bin INTEGER, n_error BIGINT, n_correct BIGINT, n_fp BIGINT, n_fn BIGINT, n_tp BIGINT)"""


LEGACY_CALIBRATION_BINS = """CREATE TABLE calibration_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    bin INTEGER, n BIGINT, sum_prob DOUBLE, sum_true DOUBLE)"""


def build(db: Path, n_patients: int, unc_bins: int, legacy: bool = False) -> dict:
    """Create the synthetic database (with ``legacy``: uncertainty bins one row per bin, the layout before
    ``uncertainty_hist``); returns row counts and seconds."""
    t0 = time.perf_counter()
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute(store.SCHEMA)
    if legacy:  # the layout before uncertainty_hist: one row per bin (what the reference code was written for)
        for view, table in (("uncertainty_bins", "uncertainty_hist"), ("calibration_bins", "calibration_hist")):
            con.execute(f"DROP VIEW {view}")
            con.execute(f"DROP TABLE {table}")
        con.execute(LEGACY_UNCERTAINTY_BINS)
        con.execute(LEGACY_CALIBRATION_BINS)
    con.execute("SET preserve_insertion_order = true")
    con.execute("INSERT INTO runs VALUES (?, now(), 'synthetic', '{}', 'bench', 'cpu')", [RUN])
    card = json.dumps({"arch": "SegResNet", "channels": ["t1", "t1ce", "t2", "flair"], "regions": REGIONS,
                       "spacing_mm": [1.0, 1.0, 1.0], "normalisation": "nonzero_channelwise_zscore"})
    for m in MODELS:
        con.execute("INSERT INTO models VALUES (?, ?, 'synthetic.pt', ?)", [RUN, m, card])
    con.execute("CREATE TEMP TABLE pat AS SELECT i AS pi, 'P' || lpad(i::VARCHAR, 6, '0') AS patient_id, "
                "(hash(i, 'difficulty') % 1000000) / 1e6 AS d FROM range(?) t(i)", [n_patients])
    con.execute("CREATE TEMP TABLE mdl AS SELECT * FROM (VALUES (0, ?), (1, ?), (2, ?), (3, ?)) t(mi, model)", MODELS)
    con.execute("CREATE TEMP TABLE mth AS SELECT * FROM (VALUES (0, ?), (1, ?), (2, ?), (3, ?)) t(ti, method)", METHODS)
    con.execute("CREATE TEMP TABLE reg AS SELECT * FROM (VALUES (0, 'WT'), (1, 'TC'), (2, 'ET')) t(ri, region)")
    con.execute("CREATE TEMP TABLE mm AS SELECT * FROM (SELECT unnest(?::VARCHAR[]) AS metric, unnest(?::VARCHAR[]) AS mask, "
                "unnest(?::BOOLEAN[]) AS sampled)",
                [[m for m, _ in METRIC_MASKS], [k for _, k in METRIC_MASKS], [m in SAMPLED_ONLY for m, _ in METRIC_MASKS]])
    con.execute("""INSERT INTO patients SELECT 'synthetic', patient_id, '/nonexistent/' || patient_id, '[240,240,155]',
                   '[1,1,1]', 'brats2021', 'test', true, '{}' FROM pat""")
    # rows are inserted patient by patient, as the batch writes them (one transaction per patient)
    con.execute("""INSERT INTO evaluations SELECT ?, model, method, patient_id, 'ok', 1.0, NULL, now()
                   FROM pat, mdl, mth ORDER BY pi, mi, ti""", [RUN])
    step = max(1, M.N_UNC_BINS // unc_bins)
    chunk = 250  # patients per INSERT: rows stay grouped by patient (as the batch writes them), memory stays small
    for lo in range(0, n_patients, chunk):
        _fill_chunk(con, lo, min(lo + chunk, n_patients), unc_bins, step, legacy)
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("evaluations", "metrics", "calibration_bins", "uncertainty_bins")}
    con.execute("CHECKPOINT")
    con.close()
    return {"seconds": time.perf_counter() - t0, **counts}


def _fill_chunk(con, p0: int, p1: int, unc_bins: int, step: int, legacy: bool = False) -> None:
    """metrics, calibration_bins and uncertainty_bins of patients p0 .. p1-1."""
    con.execute("CREATE OR REPLACE TEMP TABLE pc AS SELECT * FROM pat WHERE pi >= ? AND pi < ?", [p0, p1])
    # u: uniform noise per (patient, model, method, region, metric); q: the evaluation's quality (0 bad .. 1 good)
    con.execute("""
        INSERT INTO metrics
        WITH x AS (
            SELECT pi, patient_id, mi, model, ti, method, ri, region, metric, mask,
                   (hash(pi, mi, ti, ri, metric, mask) % 1000000) / 1e6 AS u,
                   greatest(0.0, least(1.0, 1.0 - d * (0.6 + 0.25 * ri) - 0.05 * mi + 0.01 * ti)) AS q
            FROM pc, mdl, mth, reg, mm WHERE ti > 0 OR NOT sampled)
        SELECT ?, model, method, patient_id, region, mask, metric,
               CASE metric
                 WHEN 'dice' THEN least(1.0, greatest(0.0, q + 0.1 * (u - 0.5)))
                 WHEN 'hd95' THEN CASE WHEN u < 0.03 THEN NULL ELSE 2 + 40 * (1 - q) * (0.5 + u) END
                 WHEN 'auroc_entropy' THEN CASE WHEN ri = 2 AND u < 0.05 THEN NULL ELSE 0.85 + 0.14 * q * u END
                 WHEN 'ece' THEN 0.002 + 0.03 * (1 - q) * (0.5 + u)
                 WHEN 'mean_entropy' THEN 0.01 + 0.08 * (1 - q) * (0.5 + u)
                 WHEN 'mean_mi' THEN 0.001 + 0.01 * (1 - q) * (0.5 + u)
                 WHEN 'mean_epkl' THEN 0.001 + 0.02 * (1 - q) * (0.5 + u)
                 ELSE u END
        FROM x ORDER BY pi, mi, ti, ri""", [RUN])
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _cb AS
        WITH x AS (
            SELECT pi, patient_id, mi, model, ti, method, ri, region, mask, b,
                   greatest(0.0, least(1.0, 1.0 - d * (0.6 + 0.25 * ri) - 0.05 * mi)) AS q,
                   (hash(pi, mi, ti, ri, mask, b) % 1000000) / 1e6 AS u
            FROM pc, mdl, mth, reg, (VALUES ('brain'), ('roi')) mk(mask), range(20) r(b))
        SELECT ? AS run_id, model, method, patient_id, region, mask, b::INTEGER AS bin,
               n, n * (b + 0.5) / 20.0 AS sum_prob,
               round(n * least(1.0, greatest(0.0, (b + 0.5) / 20.0 + (1 - q) * (u - 0.6) * 0.3))) AS sum_true
        FROM (SELECT *, (CASE WHEN b = 0 THEN 2000000 ELSE 20000 / (b + 1) END * (0.5 + u))::BIGINT AS n FROM x)
        ORDER BY pi, mi, ti, ri""", [RUN])
    con.execute("INSERT INTO calibration_bins SELECT * FROM _cb" if legacy else store.calibration_hist_insert("_cb"))
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ub AS
        WITH x AS (
            SELECT pi, patient_id, mi, model, ti, method, ri, region, mask, measure, k,
                   least(k * ? + (hash(pi, mi, ri, measure) % ?), ? - 1)::INTEGER AS b,
                   greatest(0.0, least(1.0, 1.0 - d * (0.6 + 0.25 * ri) - 0.05 * mi)) AS q,
                   (hash(pi, mi, ti, ri, mask, measure, k) % 1000000) / 1e6 AS u
            FROM pc, mdl, mth, reg, (VALUES ('brain'), ('roi')) mk(mask),
                 (VALUES ('entropy', false), ('mi', true), ('epkl', true)) ms(measure, sampled), range(?) r(k)
            WHERE ti > 0 OR NOT sampled)
        SELECT ? AS run_id, model, method, patient_id, region, mask, measure, b AS bin, ne AS n_error,
               nc AS n_correct, (ne * u)::BIGINT AS n_fp, ne - (ne * u)::BIGINT AS n_fn, (nc * 0.02)::BIGINT AS n_tp
        FROM (SELECT *, ((1 - q + 0.05) * 40 * (k + 1) / ? * (0.5 + u))::BIGINT AS ne,
                        (5000 * (? - k) / ? * (0.5 + u))::BIGINT AS nc FROM x)
        ORDER BY pi, mi, ti, ri""", [step, step, M.N_UNC_BINS, unc_bins, RUN, unc_bins, unc_bins, unc_bins])
    # stored as the batch stores them (store.write_patient): one row per histogram, or the legacy one row per bin
    con.execute("INSERT INTO uncertainty_bins SELECT * FROM _ub" if legacy else store.uncertainty_hist_insert("_ub"))


def _timed_run(at) -> float:
    t = time.perf_counter()
    at.run()
    dt = time.perf_counter() - t
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.value for e in at.exception]}")
    return dt


def _clear_memo() -> None:
    try:  # the app's per-selection results (dashboard.memo; the reference code may not have it)
        from dashboard import memo
    except ImportError:
        return
    memo.clear()


def measure(db: Path, changes: int, seed: int = 0, think: float = 0.0, root: Path = ROOT) -> list[dict]:
    """Time every page of the app under ``root`` (its app_pages/, its core/ and dashboard/ on sys.path first)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["TUMOURQA_DATA"] = str(db.parent)
    rng = np.random.default_rng(seed)
    # a served app imports its modules once at start-up: do that before timing (scipy.stats alone takes seconds)
    import core.analysis.stats, core.analysis.summaries, dashboard.plots, dashboard.sidebar, dashboard.tables, plotly.graph_objects  # noqa
    warm = AppTest.from_file(str(root / "app_pages" / "glossary.py"), default_timeout=600)
    warm.run()
    # a served app scans the installed packages for Streamlit components once, at start-up; a new AppTest scans
    # them on its first run (0.3-1.8 s here, depending on load): share the warm-up's registry, as a server would
    components = getattr(warm, "_bidi_component_manager", None)
    # a server compiles each page script once (the Runtime's one ScriptCache, magic's AST rewrite included); AppTest
    # makes a new ScriptCache on every run, ~20 ms per rerun of compare.py: share one, as a server does
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner
    shared_cache = ScriptCache()
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared_cache
    out = []
    for page in PAGES:
        st.cache_data.clear()
        st.cache_resource.clear()
        _clear_memo()
        store.release_readers()  # cold: the page opens the database file itself
        file, _, view = page.partition(":")
        at = AppTest.from_file(str(root / "app_pages" / f"{file}.py"), default_timeout=600)
        if components is not None:
            at._bidi_component_manager = components
        at.query_params["method"] = "mc_dropout"
        if view:
            at.query_params["view"] = view
        first = _timed_run(at)
        busy = _timed_run(at)  # the same view again at once, while the page's background prefetch may still run
        time.sleep(think)  # a user reads the page (the background work may finish)
        warm = statistics.median(_timed_run(at) for _ in range(3))  # the fixed cost of a rerun that changes nothing
        row = {"page": page, "first": first, "rerun": warm, "rerun_at_once": busy}
        if page in FILTER_PAGES:
            times = []
            for _ in range(changes):
                lo = int(rng.integers(0, 19)) * 5
                hi = int(rng.integers(lo // 5 + 1, 21)) * 5
                at.slider(key="q_range").set_value((lo, hi))
                times.append(_timed_run(at))
            row.update(change_median=statistics.median(times), change_p95=float(np.quantile(times, 0.95)),
                       change_max=max(times), change_first=times[0])
        out.append(row)
        print(f"  {page:22s} first {first:6.2f} s  rerun {warm:6.3f} s (at once {busy:6.3f} s)" + (
            f"  filter change median {row['change_median'] * 1000:6.0f} ms  p95 {row['change_p95'] * 1000:6.0f} ms"
            f"  (first move {row['change_first'] * 1000:6.0f} ms, max {row['change_max'] * 1000:6.0f} ms)"
            if "change_p95" in row else ""), flush=True)
    return out


REFERENCE_REV = "8337c5f"  # the code before the latency / storage issue (its pages, reads and sidebar)


def _busy(n: int) -> list:
    """Start ``n`` processes that spin on one core each (a second user's job); stop them with :func:`_stop`."""
    import subprocess
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _reference_tree(rev: str) -> Path:
    """A checkout of ``rev`` of this repository (``git worktree``, kept for later runs) whose code the reference
    measurement runs."""
    import subprocess
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = Path(f"/tmp/tumourqa_ref_{sha}")
    if not (tree / "app_pages").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(tree), sha], check=True,
                       capture_output=True)
    return tree


def _measure_child(code_root: Path, db: Path, changes: int, think: float) -> list[dict]:
    """Measure the app of ``code_root`` in a new process (its modules, not this checkout's)."""
    import subprocess
    out = db.parent / "reference_timings.json"
    out.unlink(missing_ok=True)
    subprocess.run([sys.executable, __file__, "--measure-only", str(out), "--code-root", str(code_root), "--db", str(db),
                    "--changes", str(changes), "--think", str(think)], check=True)
    return json.loads(out.read_text())


def storage_report(db: Path) -> dict:
    """Bytes of the database file and of its used blocks, per (patient, model, method) evaluation."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM evaluations").fetchone()[0]
        size = con.execute("SELECT block_size, used_blocks, total_blocks FROM pragma_database_size()").fetchone()
    finally:
        con.close()
    file_bytes = db.stat().st_size
    return {"evaluations": n, "file_bytes": file_bytes, "used_bytes": size[0] * size[1],
            "file_bytes_per_eval": file_bytes / max(n, 1), "used_bytes_per_eval": size[0] * size[1] / max(n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--unc-bins", type=int, default=100, help="non-empty uncertainty bins per histogram")
    ap.add_argument("--db", type=Path, default=Path("/tmp/tumourqa_latency/results.duckdb"))
    ap.add_argument("--changes", type=int, default=20, help="filter changes measured per page")
    ap.add_argument("--reuse", action="store_true", help="keep an existing database of the same size")
    ap.add_argument("--build-only", action="store_true", help="build the database (and its derived tables), report its "
                                                                "size and build time, measure nothing")
    ap.add_argument("--no-derived", action="store_true",
                    help="with --build-only: leave the derived tables to another version's code (a reference)")
    ap.add_argument("--legacy-layout", action="store_true",
                    help="build the uncertainty bins one row per bin (the layout before uncertainty_hist)")
    ap.add_argument("--think", type=float, default=0.0,
                    help="seconds between a page's first render (and rerun) and the first filter move: a user reading "
                         "the page; the per-group sums for that move are computed in the background meanwhile")
    ap.add_argument("--load", type=int, default=0,
                    help="busy processes (one core each) the bench starts before measuring and stops after")
    ap.add_argument("--reference", nargs="?", const=REFERENCE_REV, default=None, metavar="REV",
                    help=f"also measure the code of git revision REV (default {REFERENCE_REV}: before the latency "
                         "issue) on the same machine and load, in a child process, and print the ratios")
    ap.add_argument("--reference-db", type=Path, default=None,
                    help="the database the reference code reads (default --db; e.g. one built with --legacy-layout)")
    ap.add_argument("--measure-only", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--code-root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure_only:  # the reference's child process: only the app under --code-root is imported
        rows = measure(a.db, a.changes, think=a.think, root=a.code_root)
        a.measure_only.write_text(json.dumps(rows))
        return
    if not (a.reuse and a.db.exists()):
        print(f"building {a.db}: {a.patients} patients x {len(MODELS)} models x {len(METHODS)} methods x 3 regions, "
              f"{a.unc_bins} non-empty uncertainty bins per histogram"
              f"{' (legacy layout)' if a.legacy_layout else ''} ...", flush=True)
        info = build(a.db, a.patients, a.unc_bins, legacy=a.legacy_layout)
        print(f"  built in {info['seconds']:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in info.items() if k != "seconds"),
              f"({a.db.stat().st_size / 1e9:.2f} GB)", flush=True)
    con = store.connect(a.db) if not a.legacy_layout else duckdb.connect(str(a.db))
    if not a.no_derived and not store.valid(con, RUN):  # what the batch does at its end (core.batch.run_batch)
        out = derived.build(con, RUN)
        print(f"  derived tables (core.derived.build, the batch's last step) in {out['seconds']:.0f} s: "
              + ", ".join(f"{k} {v:,}" for k, v in out["rows"].items()), flush=True)
    con.execute("CHECKPOINT")
    con.close()
    rep = storage_report(a.db)
    print(f"  storage: file {rep['file_bytes'] / 1e9:.3f} GB ({rep['file_bytes_per_eval'] / 1e3:.1f} kB per "
          f"(patient, model, method)), used blocks {rep['used_bytes'] / 1e9:.3f} GB "
          f"({rep['used_bytes_per_eval'] / 1e3:.1f} kB per evaluation)", flush=True)
    if a.build_only:
        return
    procs = _busy(a.load)
    try:
        print(f"measuring (AppTest, server time, {os.cpu_count()} CPU cores, {a.load} busy process(es)) ...", flush=True)
        rows = measure(a.db, a.changes, think=a.think)
        ref = None
        if a.reference:
            tree = _reference_tree(a.reference)
            print(f"reference: the code of {a.reference} ({tree}), same machine and load ...", flush=True)
            ref = _measure_child(tree, a.reference_db or a.db, a.changes, a.think)
    finally:
        _stop(procs)
    if ref:
        print(f"\nratio reference ({a.reference}) / this code (higher = faster now):")
        for r, f in zip(ref, rows):
            print(f"  {f['page']:22s} first {r['first'] / f['first']:6.1f}x  rerun {r['rerun'] / f['rerun']:6.1f}x" + (
                f"  filter-change p95 {r['change_p95'] / f['change_p95']:6.1f}x" if "change_p95" in f else ""))
    worst_first = max(r["first"] for r in rows)
    worst_rerun = max(r["rerun"] for r in rows)
    worst_p95 = max(r.get("change_p95", 0.0) for r in rows)
    print(f"\nworst first render {worst_first:.2f} s = {worst_first / 1.5:.2f} x the 1.5 s target; "
          f"worst unchanged rerun {worst_rerun * 1000:.0f} ms = {worst_rerun / 0.05:.2f} x the 50 ms target; "
          f"worst filter-change p95 {worst_p95 * 1000:.0f} ms = {worst_p95 / 0.25:.2f} x the 250 ms target")


if __name__ == "__main__":
    main()
