"""Figure builders and the scatter-selection glue of dashboard.plots."""
from dashboard import plots


def test_selection_keys_from_plotly_event():
    import pandas as pd

    df = pd.DataFrame({"model": ["A", "A", "B"], "patient_id": ["p1", "p2", "p1"], "dice": [0.9, 0.5, 0.7],
                       "ece": [0.01, 0.05, 0.02]})
    fig = plots.patient_scatter(df, "dice", "ece", "Dice", "ECE", {"A": "#111111", "B": "#222222"})
    assert fig.layout.dragmode == "select" and len(fig.data) == 2
    assert [list(c) for c in fig.data[1].customdata] == [["p1", "B"]]
    # what Streamlit's plotly selection returns: points carrying their customdata (duplicates possible with lasso)
    event = {"points": [{"customdata": ["p2", "A"], "x": 0.5}, {"customdata": ["p1", "B"]},
                        {"customdata": ["p2", "A"]}, {"x": 1.0}], "box": [], "lasso": []}
    assert plots.selected_keys(event) == [("p2", "A"), ("p1", "B")]
    assert plots.selected_keys(None) == [] and plots.selected_keys({"points": []}) == []
