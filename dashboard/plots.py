"""Plotly figure builders (pure: DataFrames in, figures out)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.store.schema import REGIONS

WEBGL_POINTS = 5000  # above this many points a scatter is drawn with WebGL
ALL_POINTS = 3000  # above this many patients a box shows its outliers only, not every patient
SIDE_BY_SIDE = [
    ("dice_mean", "Dice (mean over patients)", (0, 1), ("dice_lo", "dice_hi")),
    ("auroc_entropy_dataset", "AUROC entropy vs error (pooled voxels)", (0, 1), None),
    ("ece_dataset", "ECE (dataset, summed bins)", None, ("ece_dataset_lo", "ece_dataset_hi")),
]


def side_by_side(summary: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Three panels (Dice, AUROC, ECE), x = region, one bar per model, with bootstrap error bars where known.

    The three panels' axes are laid out by hand (what plotly's make_subplots would make, without its per-trace
    layout validation, which is where make_subplots spends its time).

    Args:
        summary: one row per (model, region) with the :data:`SIDE_BY_SIDE` metric columns (dice_mean,
            auroc_entropy_dataset, ece_dataset); where it carries bootstrap intervals (columns dice_lo/hi,
            ece_dataset_lo/hi), they are drawn as error bars.
        colours: model -> hex colour.

    Returns:
        the figure: one bar per model and region in each panel, regions in :data:`REGIONS` order (a region
        missing from a model's rows is a gap); the Dice and AUROC axes span [0, 1].
    """
    gap = 0.07
    width = (1 - 2 * gap) / 3
    layout = dict(barmode="group", height=380, margin=dict(t=50, b=40, l=50, r=20),
                  legend=dict(orientation="h", y=-0.25), annotations=[])
    traces = []
    by_model = {m: g.set_index("region").reindex(REGIONS) for m, g in summary.groupby("model", sort=True)}
    for col, (metric, title, rng, ci) in enumerate(SIDE_BY_SIDE):
        sfx = str(col + 1) if col else ""
        left = col * (width + gap)
        layout[f"xaxis{sfx}"] = dict(domain=[left, left + width], anchor=f"y{sfx}", title=dict(text="region"))
        layout[f"yaxis{sfx}"] = dict(domain=[0, 1], anchor=f"x{sfx}", range=list(rng) if rng else None,
                                     title=dict(text="Dice" if metric == "dice_mean" else metric.split("_")[0].upper()))
        layout["annotations"].append(dict(text=title, x=left + width / 2, y=1, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=16)))
        for model, g in by_model.items():
            bar = dict(type="bar", x=REGIONS, y=g[metric].tolist(), name=model, marker=dict(color=colours.get(model)),
                       legendgroup=model, showlegend=col == 0, xaxis=f"x{sfx}", yaxis=f"y{sfx}",
                       hovertemplate=f"{model}<br>%{{x}}: %{{y:.3f}}<extra>{title}</extra>")
            if ci and ci[0] in g and ci[1] in g:
                bar["error_y"] = dict(type="data", symmetric=False, thickness=1.2, width=4, color="#333",
                                      array=(g[ci[1]] - g[metric]).clip(lower=0).tolist(),
                                      arrayminus=(g[metric] - g[ci[0]]).clip(lower=0).tolist())
            traces.append(bar)
    return go.Figure(data=traces, layout=layout)


def box_stats(x, y, ids) -> tuple[dict, pd.DataFrame]:
    """Box statistics per category, as plotly draws them, and the points outside the whiskers.

    Quartiles by linear interpolation, whiskers at the most extreme values within 1.5 IQR of the box.

    Args:
        x: (n,) category per value.
        y: (n,) values; NaN (any non-finite value) skipped.
        ids: (n,) label per value (e.g. the patient id).

    Returns:
        (stats, outliers): stats = dict(x, q1, median, q3, lowerfence, upperfence, mean) of lists, one entry
        per non-empty category (at least one finite value), in first-seen order; outliers = DataFrame(x, y, id)
        of the values outside the whiskers (empty, with those columns, when there are none).
    """
    codes, cats = pd.factorize(pd.Series(np.asarray(x, dtype=object)), sort=False)  # first-seen order
    y, ids = np.asarray(y, np.float64), np.asarray(ids, dtype=object)
    stats = {k: [] for k in ("x", "q1", "median", "q3", "lowerfence", "upperfence", "mean")}
    outs = []
    finite = np.isfinite(y)
    for i, cat in enumerate(cats):
        sel = (codes == i) & finite
        v = y[sel]
        if not v.size:
            continue
        q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
        iqr = q3 - q1
        lo, hi = v[v >= q1 - 1.5 * iqr].min(), v[v <= q3 + 1.5 * iqr].max()
        for k, val in zip(stats, (cat, q1, med, q3, lo, hi, v.mean())):
            stats[k].append(val)
        out = (v < lo) | (v > hi)
        outs.append(pd.DataFrame({"x": cat, "y": v[out], "id": ids[sel][out]}))
    return stats, (pd.concat(outs, ignore_index=True) if outs else pd.DataFrame(columns=["x", "y", "id"]))


def _box_traces(x, y, ids, name: str, colour: str | None, hover: str, all_points: bool, **kw) -> list[dict]:
    """One box per category, as trace dicts; every point when ``all_points``, else statistics computed here and
    only the outliers sent to the browser (a box of 10,000 patients otherwise ships every value and id)."""
    if all_points:
        return [dict(type="box", x=np.asarray(x, dtype=object), y=np.asarray(y, np.float64), name=name,
                     marker=dict(color=colour), boxpoints="all", jitter=0.4, pointpos=0,
                     customdata=np.asarray(ids, dtype=object), hovertemplate=hover, **kw)]
    st, out = box_stats(x, y, ids)
    return [dict(type="box", name=name, marker=dict(color=colour), boxpoints=False, offsetgroup=name, **st, **kw),
            dict(type="scatter", x=out.x.to_numpy(object), y=out.y.to_numpy(np.float64),
                 customdata=out.id.to_numpy(object), mode="markers", name=name, offsetgroup=name,
                 marker=dict(color=colour, size=4), showlegend=False, hovertemplate=hover,
                 **{k: v for k, v in kw.items() if k == "legendgroup"})]


def _model_boxes(df: pd.DataFrame, x: str, y: str, colours: dict[str, str], hover_value: str, x_title: str,
                 categories: list[str], y_title: str, y_range, legend_y: float) -> go.Figure:
    """Boxes of ``y`` per category ``x`` and model (df: model, patient_id, x, y), grouped side by side; above
    :data:`ALL_POINTS` rows only the statistics and outliers are sent (:func:`_box_traces`)."""
    data = [t for model, g in df.groupby("model", sort=True)
            for t in _box_traces(g[x], g[y], g.patient_id, model, colours.get(model),
                                 "%{customdata}<br>" + hover_value + "<extra>" + model + "</extra>",
                                 len(df) <= ALL_POINTS, legendgroup=model)]
    return go.Figure(data=data, layout=dict(
        boxmode="group", scattermode="group", height=380, margin=dict(t=30, b=40, l=50, r=20),
        xaxis=dict(title=dict(text=x_title), categoryorder="array", categoryarray=categories),
        yaxis=dict(title=dict(text=y_title), range=y_range), legend=dict(orientation="h", y=legend_y)))


def per_patient_box(df: pd.DataFrame, metric_label: str, colours: dict[str, str], y_range=None) -> go.Figure:
    """Per-patient distribution of one metric: one box per region and model, grouped side by side.

    Above :data:`ALL_POINTS` rows the boxes are computed here and only outliers are drawn as points
    (:func:`box_stats`); up to it every patient is drawn.

    Args:
        df: columns model, region, patient_id, value.
        metric_label: the y-axis title.
        colours: model -> hex colour.
        y_range: [lo, hi] of the y axis (None: automatic).

    Returns:
        the figure, regions in :data:`REGIONS` order.
    """
    return _model_boxes(df, "region", "value", colours, "%{y:.3f}", "region", REGIONS, metric_label, y_range, -0.2)


def reliability_diagram(curves: dict, band: dict | None, colours: dict[str, str], title: str) -> go.Figure:
    """Reliability diagram: per model a dataset-level curve and, in ``band``, the patients' spread.

    The curve is mean confidence vs accuracy per bin (from summed bins); the band is the 10-90 % spread of
    per-patient accuracy per bin, drawn as a shaded area. A dashed diagonal marks perfect calibration.

    Args:
        curves: model -> DataFrame(conf, acc, n), one row per bin (n: voxels in the bin, shown on hover).
        band: model -> DataFrame(centre, lo, hi), or None; a model missing from it (or with no rows) gets no band.
        colours: model -> hex colour.
        title: the figure title.

    Returns:
        the figure, both axes on [0, 1].
    """
    data = [dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(color="grey", dash="dash"),
                 name="perfect calibration", hoverinfo="skip")]
    for model, c in curves.items():
        col = colours.get(model)
        if band and model in band and len(band[model]):
            b = band[model]
            data.append(dict(type="scatter", x=np.r_[b.centre.to_numpy(), b.centre.to_numpy()[::-1]],
                             y=np.r_[b.hi.to_numpy(), b.lo.to_numpy()[::-1]], fill="toself",
                             fillcolor=_rgba(col, 0.15), line=dict(width=0), hoverinfo="skip",
                             name=f"{model}: patients 10-90 %", legendgroup=model))
        data.append(dict(type="scatter", x=c.conf.to_numpy(), y=c.acc.to_numpy(), mode="lines+markers",
                         name=f"{model}: dataset", line=dict(color=col), legendgroup=model, customdata=c.n.to_numpy(),
                         hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{customdata:,} voxels<extra>"
                                       + model + "</extra>"))
    return go.Figure(data=data, layout=dict(
        title=dict(text=title), height=420, margin=dict(t=50, b=40, l=50, r=20),
        xaxis=dict(title=dict(text="mean predicted probability (bin)"), range=[0, 1]),
        yaxis=dict(title=dict(text="observed tumour frequency"), range=[0, 1]), legend=dict(orientation="h", y=-0.2)))


def reliability_histogram(matrix, n_bins: int, title: str) -> go.Figure:
    """Dataset reliability histogram (paper 004) as a heatmap with a dashed diagonal.

    x = confidence bin, y = per-patient accuracy bin, colour = share of patients (columns normalised to 1).

    Args:
        matrix: (n_bins, n_bins) shares in [0, 1], rows = accuracy bins, columns = confidence bins.
        n_bins: bins per axis (cells centred at (k + 0.5) / n_bins).
        title: the figure title.

    Returns:
        the figure, both axes on [0, 1], colour scale [0, 1].
    """
    centres = [(k + 0.5) / n_bins for k in range(n_bins)]
    # traces and layout given to the constructor at once: 4-5x faster than add_trace + update_layout
    return go.Figure(
        data=[dict(type="heatmap", z=matrix, x=centres, y=centres, colorscale="Viridis", zmin=0, zmax=1,
                   colorbar=dict(title=dict(text="share of<br>patients")),
                   hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>share %{z:.2f}<extra></extra>"),
              dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(color="white", dash="dash"),
                   showlegend=False, hoverinfo="skip")],
        layout=dict(title=dict(text=title), height=420, margin=dict(t=50, b=40, l=50, r=20),
                    xaxis=dict(title=dict(text="confidence bin (predicted probability)"), range=[0, 1]),
                    yaxis=dict(title=dict(text="per-patient accuracy in the bin"), range=[0, 1])))


def histogram(df: pd.DataFrame, column: str, colours: dict[str, str], label: str) -> go.Figure:
    """Overlaid histograms of ``column`` per model, 30 bins.

    Args:
        df: columns model and ``column`` (one row per patient).
        column: the values to count.
        colours: model -> hex colour.
        label: the x-axis title.

    Returns:
        the figure (y axis: patients).
    """
    return go.Figure(
        data=[dict(type="histogram", x=g[column].to_numpy(), name=model, marker=dict(color=colours.get(model)),
                   opacity=0.6, nbinsx=30) for model, g in df.groupby("model", sort=True)],
        layout=dict(barmode="overlay", height=340, margin=dict(t=30, b=40, l=50, r=20),
                    xaxis=dict(title=dict(text=label)), yaxis=dict(title=dict(text="patients")),
                    legend=dict(orientation="h", y=-0.25)))


def _rgba(hex_colour: str | None, alpha: float) -> str:
    h = (hex_colour or "#888888").lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def budget_curves(curves: pd.DataFrame, column: str, label: str, colours: dict[str, str]) -> go.Figure:
    """Review-budget curves: x = % of voxels reviewed, y = ``column``; colour per model, dash per method.

    Args:
        curves: columns model, method, budget (% of the voxel set) and ``column``, as the curves of
            :func:`core.analysis.summaries.budget_table`.
        column: the curve's value, e.g. ``captured`` or ``ueo`` (the y axis spans [0, 1]).
        label: the y-axis title.
        colours: model -> hex colour.

    Returns:
        the figure, one line per (model, method).
    """
    dashes = {m: d for m, d in zip(sorted(curves.method.unique()), ["solid", "dash", "dot", "dashdot"] * 4)}
    fig = go.Figure()
    for (model, method), g in curves.groupby(["model", "method"]):
        fig.add_trace(go.Scatter(x=g.budget, y=g[column], mode="lines", name=f"{model} · {method}",
                                 line=dict(color=colours.get(model), dash=dashes[method]),
                                 hovertemplate="budget %{x:.2f} %<br>%{y:.3f}<extra>" + f"{model} · {method}</extra>"))
    fig.update_layout(height=360, margin=dict(t=30, b=40, l=50, r=20), xaxis=dict(title="voxels reviewed (% of the voxel set)"),
                      yaxis=dict(title=label, range=[0, 1]), legend=dict(orientation="h", y=-0.25))
    return fig


def strata_box(df: pd.DataFrame, labels: list[str], colours: dict[str, str], x_title: str, y_title: str) -> go.Figure:
    """Dice per stratum: one box per stratum and model, grouped side by side.

    Above :data:`ALL_POINTS` rows the boxes are computed here and only their outliers are sent
    (:func:`box_stats`), as :func:`per_patient_box`.

    Args:
        df: columns model, stratum, dice, patient_id.
        labels: the strata in display order (the x categories).
        colours: model -> hex colour.
        x_title: the x-axis title.
        y_title: the y-axis title (the y axis spans [0, 1.02]).

    Returns:
        the figure.
    """
    return _model_boxes(df, "stratum", "dice", colours, "Dice %{y:.3f}", x_title, labels, y_title, [0, 1.02], -0.25)


def predicted_vs_true(df: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Scatter of predicted vs true Dice per patient, one trace per model, with the line y = x.

    Args:
        df: columns model, patient_id, dice, predicted_dice, flagged (bool; a flagged patient is drawn as x).
        colours: model -> hex colour.

    Returns:
        the figure, both axes on [-0.02, 1.02].
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dash"),
                             name="perfect prediction", hoverinfo="skip"))
    for model, g in df.groupby("model", sort=True):
        fig.add_trace(go.Scatter(
            x=g.dice, y=g.predicted_dice, mode="markers", name=model, customdata=g.patient_id,
            marker=dict(color=colours.get(model), size=9, symbol=["x" if f else "circle" for f in g.flagged],
                        line=dict(width=0.5, color="white")),
            hovertemplate="%{customdata}<br>true %{x:.3f} · predicted %{y:.3f}<extra>" + model + "</extra>"))
    fig.update_layout(height=420, margin=dict(t=30, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.2),
                      xaxis=dict(title="true Dice", range=[-0.02, 1.02]),
                      yaxis=dict(title="predicted Dice (out-of-fold)", range=[-0.02, 1.02]))
    fig.add_annotation(x=0.02, y=0.98, xref="paper", yref="paper", showarrow=False, xanchor="left",
                       text="× flagged for review", font=dict(color="#555"))
    return fig


class FrozenFigure(go.Figure):
    """A ``go.Figure`` whose :meth:`to_dict` is computed once, when it is frozen (:func:`freeze`).

    ``st.plotly_chart`` calls ``to_dict()`` (a deep copy of every trace) on every rerun; for a memoised figure of
    tens of thousands of points that copy is the largest part of a rerun that changes nothing (40,000 points with
    patient-id customdata: ~15 ms of ~60 ms). The dict is shared: neither the figure nor the dict may be changed
    after freezing: the figure's update / add methods raise (the cached dict would go stale); an attribute assignment
    such as ``fig.layout.height = ...`` is not caught, so do not."""

    def to_dict(self):  # noqa: D102 - see the class docstring
        d = self.__dict__.get("_frozen_dict")
        if d is None:  # first call (also after a copy or an unpickle, which rebuild the figure)
            d = go.Figure.to_dict(self)
            object.__setattr__(self, "_frozen_dict", d)
        return d

    def _frozen(self, *_a, **_k):
        raise TypeError("a FrozenFigure cannot be changed (dashboard.plots.freeze): build a new figure")

    update = update_layout = update_traces = update_xaxes = update_yaxes = for_each_trace = _frozen
    add_trace = add_traces = add_shape = add_annotation = add_hline = add_vline = add_hrect = add_vrect = _frozen


def freeze(fig: go.Figure) -> FrozenFigure:
    """``fig`` as a :class:`FrozenFigure` (the same traces and layout; ``fig`` itself is left as it is)."""
    out = FrozenFigure(fig)
    out.to_dict()
    return out


def patient_scatter(df: pd.DataFrame, x: str, y: str, x_label: str, y_label: str, colours: dict[str, str]) -> go.Figure:
    """Per-patient scatter, one trace per model (named and legend-grouped by the model), box / lasso selection on.

    Each point's customdata is its patient id (a flat list of str: a 2-D [patient, model] array costs much
    more to serialise at tens of thousands of points, and a numpy object array is deep-copied element by element
    on every ``st.plotly_chart`` call, 2.5x the time of a list); a selection event's point carries it with its trace's
    legendgroup and curve_number, which :func:`selected_keys` turns back into (patient_id, model). Above
    :data:`WEBGL_POINTS` rows the traces are drawn with WebGL.

    Args:
        df: columns model, patient_id, ``x`` and ``y`` (one row per patient and model).
        x, y: the column names of the axes.
        x_label, y_label: the axis titles (also in the hover text).
        colours: model -> hex colour.

    Returns:
        the figure, traces in sorted model order, frozen (:func:`freeze`: it is memoised and drawn on every rerun).
    """
    fig = go.Figure()
    trace = go.Scattergl if len(df) > WEBGL_POINTS else go.Scatter  # WebGL keeps 10,000s of points responsive
    for model, g in df.groupby("model", sort=True):
        fig.add_trace(trace(
            x=g[x].to_numpy(np.float64), y=g[y].to_numpy(np.float64), mode="markers", name=model, legendgroup=model,
            customdata=g.patient_id.tolist(),
            marker=dict(color=colours.get(model), size=8, line=dict(width=0.5, color="white")),
            hovertemplate="%{customdata}<br>" + x_label + " %{x:.3f}<br>" + y_label + " %{y:.3f}<extra>"
                          + model + "</extra>"))
    fig.update_layout(height=430, margin=dict(t=30, b=40, l=60, r=20), dragmode="select", clickmode="event+select",
                      xaxis=dict(title=x_label), yaxis=dict(title=y_label), legend=dict(orientation="h", y=-0.2))
    return freeze(fig)


def selected_keys(selection, trace_names: list[str] | None = None) -> list[tuple[str, str]]:
    """(patient_id, model) of the points of a Streamlit plotly selection (``event.selection``), in order, unique.

    A point's customdata is its patient id and its model is its legendgroup, else the name of trace
    ``curve_number`` in ``trace_names`` (:func:`patient_scatter`); a [patient_id, model] customdata also works.

    Args:
        selection: the selection, a dict or an object with ``points`` (None: nothing selected).
        trace_names: the figure's trace names in order, for points that carry no legendgroup.

    Returns:
        the keys as strings, first-seen order, without duplicates; points without customdata, or whose model
        cannot be told, are left out (empty when nothing is selected).
    """
    points = (selection or {}).get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for pt in points or []:
        if not isinstance(pt, dict) or pt.get("customdata") is None:
            continue
        cd = pt["customdata"]
        if isinstance(cd, (list, tuple)) and len(cd) >= 2:
            key = (str(cd[0]), str(cd[1]))
        else:
            pid = cd[0] if isinstance(cd, (list, tuple)) and cd else cd
            model = pt.get("legendgroup")
            curve = pt.get("curve_number")
            if model is None and trace_names is not None and isinstance(curve, int) and 0 <= curve < len(trace_names):
                model = trace_names[curve]
            if model is None:
                continue
            key = (str(pid), str(model))
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def paired_differences(df: pd.DataFrame, label: str, a: str, b: str) -> go.Figure:
    """Per-patient paired differences of two models as one box per region, and a zero line.

    Above zero, model ``a`` has the higher value. Up to :data:`ALL_POINTS` rows every point is drawn; above,
    only the outliers (:func:`box_stats`).

    Args:
        df: columns region, patient_id, diff (= a - b).
        label: the metric's name (in the y-axis title).
        a, b: the two models' names.

    Returns:
        the figure, regions in :data:`REGIONS` order.
    """
    data = []
    for region in REGIONS:
        g = df[df.region == region]
        data += _box_traces(np.full(len(g), region, dtype=object), g["diff"], g.patient_id, region, "#555",
                            "%{customdata}<br>difference %{y:.3f}<extra>" + region + "</extra>",
                            len(df) <= ALL_POINTS, showlegend=False)
    return go.Figure(data=data, layout=dict(
        shapes=[dict(type="line", xref="x domain", x0=0, x1=1, y0=0, y1=0, line=dict(color="#d62728", dash="dash"))],
        height=360, margin=dict(t=30, b=40, l=60, r=20),
        xaxis=dict(title=dict(text="region"), categoryorder="array", categoryarray=REGIONS),
        yaxis=dict(title=dict(text=f"{label}: {a} − {b} (per patient)"))))
