"""Plotly figure builders (pure: DataFrames in, figures out)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

REGIONS = ["WT", "TC", "ET"]
SIDE_BY_SIDE = [
    ("dice_mean", "Dice (mean over patients)", (0, 1)),
    ("auroc_entropy_dataset", "AUROC entropy vs error (pooled voxels)", (0, 1)),
    ("ece_dataset", "ECE (dataset, summed bins)", None),
]


def side_by_side(summary: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Three panels (Dice, AUROC, ECE), x = region, one bar per model."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in SIDE_BY_SIDE], horizontal_spacing=0.07)
    for col, (metric, title, rng) in enumerate(SIDE_BY_SIDE, start=1):
        for model, g in summary.groupby("model", sort=True):
            g = g.set_index("region").reindex(REGIONS)
            fig.add_trace(go.Bar(x=REGIONS, y=g[metric], name=model, marker_color=colours.get(model),
                                 legendgroup=model, showlegend=col == 1,
                                 hovertemplate=f"{model}<br>%{{x}}: %{{y:.3f}}<extra>{title}</extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text="region", row=1, col=col)
        fig.update_yaxes(title_text=metric.split("_")[0].upper() if metric != "dice_mean" else "Dice", row=1, col=col,
                         range=list(rng) if rng else None)
    fig.update_layout(barmode="group", height=380, margin=dict(t=50, b=40, l=50, r=20),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def per_patient_box(df: pd.DataFrame, metric_label: str, colours: dict[str, str], y_range=None) -> go.Figure:
    """Per-patient distribution: df with columns model, region, patient_id, value."""
    fig = go.Figure()
    for model, g in df.groupby("model", sort=True):
        fig.add_trace(go.Box(x=g.region, y=g.value, name=model, marker_color=colours.get(model), boxpoints="all",
                             jitter=0.4, pointpos=0, customdata=g.patient_id,
                             hovertemplate="%{customdata}<br>%{y:.3f}<extra>" + model + "</extra>"))
    fig.update_layout(boxmode="group", height=380, margin=dict(t=30, b=40, l=50, r=20),
                      xaxis=dict(title="region", categoryorder="array", categoryarray=REGIONS),
                      yaxis=dict(title=metric_label, range=y_range), legend=dict(orientation="h", y=-0.2))
    return fig
