"""The study report: one self-contained HTML file of a run (``python -m core report``, the app's download button).

Sections: the run's provenance (its ``runs`` row and config), the model comparison with 95 % patient-bootstrap
intervals (the leaderboard), the reliability diagram of each region, the entropy strata, the paired tests of
the first two models and the patients the quality model flags. Figures are Plotly, with plotly.js inlined
once (the first figure), so the file opens offline. Reads only :mod:`core.store` and :mod:`core.analysis`
(never Streamlit, never the dashboard).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core import store
from core.analysis import stats
from core.analysis.strata import strata
from core.store.schema import REGIONS

SECTIONS = ["Provenance", "Model comparison", "Reliability diagrams", "Strata", "Paired tests", "Flagged patients"]
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
LB_METRICS = ["dice", "auroc_entropy"]


def default_method(methods: list[str]) -> str:
    """The app's default method: mc_dropout when the run has it, else the first."""
    return "mc_dropout" if "mc_dropout" in methods else methods[0]


def report_data(con, run_id: str | None = None, method: str | None = None, mask: str = "brain",
                n_strata: int = 3, B: int = stats.DEFAULT_B) -> dict:
    """Everything the report shows, as frames.

    Args:
        con: a read connection.
        run_id: the run (None: the newest).
        method: the method of the reliability diagrams, strata, paired tests and flags (None: mc_dropout or
            the run's first).
        mask: the voxel set of the calibration numbers.
        n_strata: quantile strata of the first model's mean WT entropy.
        B: bootstrap replicates (when the batch's stored leaderboard does not match).

    Returns:
        dict with run (the runs row as a dict, config parsed), method, mask, models, methods, leaderboard,
        reliability (region -> model -> curve frame conf, acc, n), strata (patient strata with Dice), paired
        (summary per metric and region), flagged (patients flagged for review).

    Raises:
        ValueError: when the database has no such run, or the run has no evaluation.
    """
    runs = store.list_runs(con)
    if runs.empty:
        raise ValueError("the database has no runs")
    run_id = run_id or runs.run_id.iloc[0]
    if run_id not in set(runs.run_id):
        raise ValueError(f"no run {run_id!r} in the database (runs: {', '.join(runs.run_id)})")
    row = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df().iloc[0].to_dict()
    row.update(runs.set_index("run_id").loc[run_id, ["ok", "failed", "patients"]].to_dict())
    try:
        row["config"] = json.loads(row.get("config") or "{}")
    except (TypeError, ValueError):
        pass
    models = store.run_models(con, run_id).model.tolist()
    methods = store.run_methods(con, run_id)
    if not models or not methods:
        raise ValueError(f"run {run_id} has no evaluations")
    method = method or default_method(methods)

    lb = store.cohort_leaderboard(con, run_id, mask, methods, models, B=B)
    if lb is None:
        wide = store.metric_wide(con, run_id, LB_METRICS, mask=mask)
        bins = store.calibration_bins_subset(con, run_id, mask=mask)
        lb = stats.leaderboard(wide, bins, B=B)

    summed = store.summed_calibration_bins(con, run_id, mask=mask, methods=[method])
    reliability = {}
    for region in REGIONS:
        reliability[region] = {}
        for model in models:
            g = summed[(summed.model == model) & (summed.region == region)]
            g = g[g.n > 0]
            reliability[region][model] = pd.DataFrame({"conf": g.sum_prob / g.n, "acc": g.sum_true / g.n, "n": g.n})

    values = store.patient_measure(con, run_id, models[0], method, metric="mean_entropy", region="WT", mask="brain")
    dice = store.metric_wide(con, run_id, ["dice", "ece"], mask=mask, method=method)
    strata_rows = pd.DataFrame()
    if len(values):
        st_, labels = strata(values, n_strata)
        merged = dice.merge(st_[["patient_id", "stratum"]], on="patient_id")
        strata_rows = (merged.groupby(["stratum", "model", "region"], as_index=False)
                       .agg(patients=("patient_id", "nunique"), dice_mean=("dice", "mean"),
                            dice_median=("dice", "median"), ece_mean=("ece", "mean")))

    paired = pd.DataFrame()
    if len(models) >= 2:
        a, b = models[0], models[1]
        parts = []
        for metric in ("dice", "ece"):
            summary, _ = stats.paired_table(dice, metric, a, b, B=B)
            parts.append(summary.assign(metric=metric, a=a, b=b))
        paired = pd.concat(parts, ignore_index=True)

    flagged = pd.concat([store.quality_patients(con, run_id, method, r).assign(region=r) for r in REGIONS],
                        ignore_index=True)
    flagged = flagged[flagged.flagged.astype(bool)].sort_values(["region", "predicted_dice"]) if len(flagged) else flagged
    return {"run": row, "run_id": run_id, "method": method, "mask": mask, "models": models, "methods": methods,
            "leaderboard": lb, "reliability": reliability, "strata": strata_rows, "paired": paired,
            "flagged": flagged}


def _colours(models: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(models))}


def comparison_figure(lb: pd.DataFrame, method: str, colours: dict[str, str]) -> go.Figure:
    """Dice and dataset ECE per region and model of one method, with the 95 % intervals as error bars."""
    rows = lb[lb.method == method]
    traces = []
    for col, (metric, label) in enumerate([("dice", "Dice"), ("ece_dataset", "dataset ECE")]):
        for model, g in rows.groupby("model", sort=True):
            traces.append(go.Bar(
                x=g.region, y=g[metric], name=model, legendgroup=model, showlegend=col == 0,
                marker_color=colours.get(model), xaxis=f"x{col + 1}", yaxis=f"y{col + 1}",
                error_y=dict(type="data", symmetric=False, array=g[f"{metric}_hi"] - g[metric],
                             arrayminus=g[metric] - g[f"{metric}_lo"])))
    return go.Figure(traces, layout=dict(
        title=f"Model comparison ({method}): Dice and dataset ECE, 95 % patient-bootstrap intervals",
        barmode="group", height=380, xaxis=dict(domain=[0, 0.46]), xaxis2=dict(domain=[0.54, 1]),
        yaxis=dict(title="Dice", range=[0, 1]), yaxis2=dict(title="dataset ECE", anchor="x2"),
        margin=dict(t=60, l=50, r=20, b=40)))


def reliability_figure(curves: dict[str, pd.DataFrame], colours: dict[str, str], title: str) -> go.Figure:
    """Dataset reliability diagram (accuracy vs confidence of the summed bins) of one region, one line a model."""
    traces = [go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfect")]
    for model, c in curves.items():
        traces.append(go.Scatter(x=c.conf, y=c.acc, mode="lines+markers", name=model,
                                 line=dict(color=colours.get(model))))
    return go.Figure(traces, layout=dict(title=title, height=360, xaxis=dict(title="confidence (region probability)",
                                                                              range=[0, 1]),
                                         yaxis=dict(title="observed frequency", range=[0, 1]),
                                         margin=dict(t=50, l=50, r=20, b=40)))


def strata_figure(rows: pd.DataFrame, colours: dict[str, str], title: str) -> go.Figure:
    """Mean Dice per entropy stratum, one line per model (WT)."""
    g = rows[rows.region == "WT"]
    traces = [go.Scatter(x=s.stratum, y=s.dice_mean, mode="lines+markers", name=m, line=dict(color=colours.get(m)))
              for m, s in g.groupby("model", sort=True)]
    return go.Figure(traces, layout=dict(title=title, height=340, xaxis=dict(title="stratum (Q1 least uncertain)"),
                                         yaxis=dict(title="mean Dice (WT)", range=[0, 1]),
                                         margin=dict(t=50, l=50, r=20, b=40)))


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    if df is None or df.empty:
        return "<p class='none'>None.</p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="-", border=0,
                      classes="tbl", escape=True)


def _fmt_ci(est, lo, hi) -> str:
    if pd.isna(est):
        return "-"
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.tbl{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}.tbl th,.tbl td{padding:.2rem .6rem;text-align:right;
border-bottom:1px solid #eee}.tbl th{background:#f5f5f5}pre{background:#f7f7f7;padding:.6rem;font-size:.8rem;
overflow-x:auto}.none{color:#777}nav a{margin-right:1rem}"""


def build_report(con, run_id: str | None = None, method: str | None = None, mask: str = "brain",
                 B: int = stats.DEFAULT_B) -> str:
    """The study report of one run as one self-contained HTML document (plotly.js inlined once).

    Args:
        con: a read connection. run_id, method, mask, B: as :func:`report_data`.

    Returns:
        the HTML text; one ``<h2 id=...>`` per entry of :data:`SECTIONS`; no external script or stylesheet.
    """
    d = report_data(con, run_id, method, mask, B=B)
    colours = _colours(d["models"])
    figs = [comparison_figure(d["leaderboard"], d["method"], colours)]
    figs += [reliability_figure(d["reliability"][r], colours, f"Reliability diagram, {r}, {d['method']}, mask {mask}")
             for r in REGIONS]
    if not d["strata"].empty:
        figs.append(strata_figure(d["strata"], colours, f"Mean Dice per stratum of {d['models'][0]}'s mean WT entropy"))
    divs = [f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False,
                      config={"displaylogo": False, "responsive": True}) for i, f in enumerate(figs)]

    run = d["run"]
    cfg = run.get("config")
    prov = pd.DataFrame({"field": ["run", "created at", "cohort", "code version", "device", "patients",
                                   "evaluations ok", "evaluations failed", "models", "methods"],
                         "value": [d["run_id"], str(run.get("created_at")), str(run.get("cohort")),
                                   str(run.get("code_version")), str(run.get("device")), str(run.get("patients")),
                                   str(run.get("ok")), str(run.get("failed")), ", ".join(d["models"]),
                                   ", ".join(d["methods"])]})
    lb = d["leaderboard"]
    lb_show = pd.DataFrame({
        "model": lb.model, "method": lb.method, "region": lb.region, "patients": lb.n_patients,
        "Dice [95 % CI]": [_fmt_ci(*x) for x in zip(lb.dice, lb.dice_lo, lb.dice_hi)],
        "AUROC [95 % CI]": [_fmt_ci(*x) for x in zip(lb.auroc_entropy, lb.auroc_entropy_lo, lb.auroc_entropy_hi)],
        "dataset ECE [95 % CI]": [_fmt_ci(*x) for x in zip(lb.ece_dataset, lb.ece_dataset_lo, lb.ece_dataset_hi)],
    }) if len(lb) else lb
    paired = d["paired"]
    if len(paired):
        keep = [c for c in ["metric", "a", "b", "region", "n", "mean_diff", "diff_lo", "diff_hi"] if c in paired.columns]
        paired = stats.format_p_columns(paired[keep + [c for c in paired.columns if c not in keep]])
    flagged = d["flagged"]
    esc = html.escape
    body = [f"<h1>Study report: run {esc(d['run_id'])}</h1>",
            f"<p>Method <b>{esc(d['method'])}</b> for the diagrams, strata, paired tests and flags; calibration in "
            f"the <b>{esc(mask)}</b> voxel set; intervals are 95 % Poisson patient-bootstrap percentile intervals "
            f"(B = {B}).</p>",
            "<nav>" + "".join(f"<a href='#{s.lower().replace(' ', '-')}'>{s}</a>" for s in SECTIONS) + "</nav>",
            "<h2 id='provenance'>Provenance</h2>", _table(prov),
            "<details><summary>Run configuration</summary><pre>"
            + esc(json.dumps(cfg, indent=2, default=str) if not isinstance(cfg, str) else cfg) + "</pre></details>",
            "<h2 id='model-comparison'>Model comparison</h2>", divs[0], _table(lb_show),
            "<h2 id='reliability-diagrams'>Reliability diagrams</h2>", *divs[1:4],
            "<h2 id='strata'>Strata</h2>",
            f"<p>Patients in {d['strata'].stratum.nunique() if len(d['strata']) else 0} quantile strata of {esc(d['models'][0])}'s mean WT entropy (brain).</p>",
            *(divs[4:] or []), _table(d["strata"]),
            "<h2 id='paired-tests'>Paired tests</h2>",
            (f"<p>{esc(d['models'][0])} minus {esc(d['models'][1])} per patient; Wilcoxon signed-rank, Holm over "
             "the three regions.</p>" if len(d["models"]) >= 2 else "<p class='none'>One model only.</p>"),
            _table(paired, 4),
            "<h2 id='flagged-patients'>Flagged patients</h2>",
            f"<p>{flagged.patient_id.nunique() if len(flagged) else 0} patients flagged for review by the quality "
            "model (any model, any region).</p>", _table(flagged)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Study report {esc(d['run_id'])}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>")


def write_report(db: str | Path, out: str | Path, run_id: str | None = None, method: str | None = None,
                 mask: str = "brain") -> Path:
    """Write :func:`build_report` of database ``db`` to ``out`` (read-only connection). Returns ``out``."""
    con = store.connect(db, read_only=True)
    try:
        text = build_report(con, run_id, method, mask)
    finally:
        con.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
