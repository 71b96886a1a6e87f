"""Figure builders and the scatter-selection glue of dashboard.plots."""
import numpy as np
import pandas as pd
import pytest

from dashboard import plots


def test_selection_keys_from_plotly_event():
    import pandas as pd

    df = pd.DataFrame({"model": ["A", "A", "B"], "patient_id": ["p1", "p2", "p1"], "dice": [0.9, 0.5, 0.7],
                       "ece": [0.01, 0.05, 0.02]})
    fig = plots.patient_scatter(df, "dice", "ece", "Dice", "ECE", {"A": "#111111", "B": "#222222"})
    assert fig.layout.dragmode == "select" and len(fig.data) == 2
    assert list(fig.data[1].customdata) == ["p1"] and fig.data[1].legendgroup == "B"
    # what Streamlit's plotly selection returns: points carrying their customdata, curve_number and legendgroup
    # (duplicates possible with lasso)
    event = {"points": [{"customdata": "p2", "curve_number": 0, "legendgroup": "A", "x": 0.5},
                        {"customdata": "p1", "curve_number": 1, "legendgroup": "B"},
                        {"customdata": "p2", "curve_number": 0, "legendgroup": "A"}, {"x": 1.0}],
             "box": [], "lasso": []}
    assert plots.selected_keys(event) == [("p2", "A"), ("p1", "B")]
    no_group = {"points": [{"customdata": "p1", "curve_number": 1}, {"customdata": "p9", "curve_number": 7}]}
    assert plots.selected_keys(no_group, [t.name for t in fig.data]) == [("p1", "B")]  # curve 7: no such trace
    assert plots.selected_keys(no_group) == []  # no way to tell the model
    assert plots.selected_keys({"points": [{"customdata": ["p2", "A"]}]}) == [("p2", "A")]
    assert plots.selected_keys(None) == [] and plots.selected_keys({"points": []}) == []


def test_frozen_scatter_serialises_as_the_plain_figure_and_cannot_change():
    """The scatter is frozen (its to_dict computed once, Streamlit calls it on every rerun): what Streamlit sends is
    the same JSON as the plain figure's, the dict is the same object every time, and a change raises."""
    import pickle

    import plotly.graph_objects as go
    import plotly.io as pio
    import plotly.tools

    df = pd.DataFrame({"model": ["A", "A", "B"], "patient_id": ["p1", "p2", "p1"], "dice": [0.9, 0.5, 0.7],
                       "ece": [0.01, 0.05, 0.02]})
    fig = plots.patient_scatter(df, "dice", "ece", "Dice", "ECE", {"A": "#111111"})
    assert isinstance(fig, plots.FrozenFigure) and fig.to_dict() is fig.to_dict()
    sent = plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True)  # st.plotly_chart's first step
    assert sent is fig.to_dict()
    assert pio.to_json(sent, validate=False) == pio.to_json(go.Figure(fig), validate=False)
    for change in (lambda f: f.update_layout(height=1), lambda f: f.add_trace(go.Scatter(x=[1])),
                   lambda f: f.update_traces(marker_size=1), lambda f: f.update(layout_height=1),
                   lambda f: f.add_hline(y=0), lambda f: f.update_xaxes(range=[0, 1])):
        with pytest.raises(TypeError, match="cannot be changed"):
            change(fig)
    back = pickle.loads(pickle.dumps(fig))
    assert isinstance(back, plots.FrozenFigure)
    assert [t.name for t in back.data] == ["A", "B"] and list(back.data[0].customdata) == ["p1", "p2"]
    assert back.to_dict()["layout"]["dragmode"] == "select"


def test_box_stats_hand_computed_and_large_boxes_ship_only_outliers():
    """Quartiles by linear interpolation, whiskers at the extreme values within 1.5 IQR, the rest outliers;
    above ALL_POINTS rows the figure carries the statistics and the outliers only, never every patient."""
    x = ["WT"] * 11 + ["TC"] * 3
    y = list(range(1, 11)) + [100.0] + [0.5, np.nan, 0.7]
    st, out = plots.box_stats(x, y, [f"P{i}" for i in range(14)])
    assert st["x"] == ["WT", "TC"]
    # WT: 1..10, 100 -> q1 = 3.5, median 6, q3 = 8.5, IQR 5: fences 1 and 10, 100 is an outlier
    assert (st["q1"][0], st["median"][0], st["q3"][0]) == (3.5, 6.0, 8.5)
    assert (st["lowerfence"][0], st["upperfence"][0]) == (1.0, 10.0)
    assert out.to_dict("records") == [{"x": "WT", "y": 100.0, "id": "P10"}]
    assert st["median"][1] == 0.6 and st["mean"][1] == pytest.approx(0.6)  # NaN skipped
    n = plots.ALL_POINTS + 1
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"model": "A", "region": rng.choice(["WT", "TC", "ET"], n), "patient_id": [f"P{i}" for i in range(n)],
                       "value": rng.normal(size=n)})
    fig = plots.per_patient_box(df, "Dice", {"A": "#123456"})
    box, pts = fig.data
    assert box.y is None and len(box.q1) == 3
    assert 0 < len(pts.x) < n / 10
    small = plots.per_patient_box(df.head(50), "Dice", {"A": "#123456"})
    assert len(small.data) == 1 and len(small.data[0].y) == 50
    strata = df.rename(columns={"region": "stratum", "value": "dice"})
    sfig = plots.strata_box(strata, ["WT", "TC", "ET"], {"A": "#123456"}, "stratum", "Dice")
    sbox, spts = sfig.data
    assert sbox.y is None and list(sbox.x) == list(pd.unique(strata.stratum)) and 0 < len(spts.x) < n / 10
    assert len(plots.strata_box(strata.head(50), ["WT"], {}, "s", "d").data[0].y) == 50


def test_viewer_links_encode_ids_once_per_value():
    from urllib.parse import parse_qs, urlsplit

    from dashboard import tables

    pids = pd.Series(["BraTS2021_00001", "odd id/ü&x", "BraTS2021_00001"])
    models = pd.Series(["UNet-Res", "SegResNet", "Seg Res+Net"])
    links = tables.viewer_links("./viewer?db=results.duckdb&run=r1", pids, models)
    assert links[0] == "./viewer?db=results.duckdb&run=r1&patient=BraTS2021_00001&model=UNet-Res"
    for link, p, m in zip(links, pids, models):
        q = parse_qs(urlsplit(link).query)
        assert q["patient"] == [p] and q["model"] == [m] and q["run"] == ["r1"]


def test_arrow_table_keeps_columns_rows_and_order():
    """tables.arrow: what st.dataframe is given for a kept table: same columns, values, order; index dropped."""
    import pandas as pd
    from dashboard.tables import arrow
    df = pd.DataFrame({"patient_id": ["b", "a", "c"], "dice": [0.5, float("nan"), 1.0], "ok": [True, False, True],
                       "open": ["./viewer?p=b", "./viewer?p=a", "./viewer?p=c"]}, index=[7, 3, 9])
    t = arrow(df)
    assert t.column_names == list(df.columns) and t.num_rows == 3
    pd.testing.assert_frame_equal(t.to_pandas(), df.reset_index(drop=True), check_dtype=False)
    assert arrow(df.head(0)).num_rows == 0
