"""Entry point: `streamlit run app.py`. Shared sidebar (database, run, models, method, mask, entropy filter)
then the selected page. Pages live in app_pages/ and stay thin (widgets + plots)."""
import streamlit as st

from dashboard import errors
from dashboard.sidebar import DatabaseBusy, run_in_progress, sidebar

st.set_page_config(page_title="Tumour QA: uncertainty & calibration", page_icon=":material/neurology:", layout="wide")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/compare.py", title="Compare models", icon=":material/compare_arrows:", url_path="compare"),
    st.Page("app_pages/reliability.py", title="Reliability", icon=":material/stacked_line_chart:", url_path="reliability"),
    st.Page("app_pages/strata.py", title="Patient strata", icon=":material/filter_alt:", url_path="strata"),
    st.Page("app_pages/budget.py", title="Review budget", icon=":material/rule:", url_path="budget"),
    st.Page("app_pages/viewer.py", title="Patient viewer", icon=":material/visibility:", url_path="viewer"),
    st.Page("app_pages/review.py", title="Review worklist", icon=":material/checklist:", url_path="review"),
    st.Page("app_pages/quality.py", title="Quality prediction", icon=":material/fact_check:", url_path="quality"),
    st.Page("app_pages/glossary.py", title="Glossary", icon=":material/menu_book:", url_path="glossary"),
]
DEBUG = errors.configure()  # TUMOURQA_DEBUG=1 or `-- --debug`: tracebacks in the browser
page = st.navigation(PAGES)
try:
    selection = sidebar()
    st.session_state["_selection"] = selection
    page.run()
except DatabaseBusy:  # a batch took the write lock between the sidebar's queries and the page's
    run_in_progress(st.session_state.get("db", "the database"))
except Exception as exc:  # noqa: BLE001 - one message naming the log file instead of a traceback
    errors.page_failed(exc, page.title, DEBUG)
