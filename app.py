"""Entry point: `streamlit run app.py`. Shared sidebar (database, run, models, method, mask, entropy filter)
then the selected page. Pages live in pages/ and stay thin (widgets + plots)."""
import streamlit as st

from dashboard.state import sidebar

st.set_page_config(page_title="Tumour QA: uncertainty & calibration", page_icon=":material/neurology:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/compare.py", title="Compare models", icon=":material/compare_arrows:", url_path="compare"),
]
page = st.navigation(PAGES)
selection = sidebar()
st.session_state["_selection"] = selection
page.run()
