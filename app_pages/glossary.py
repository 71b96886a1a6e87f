"""Glossary: every metric and method with its exact definition (from the README, the one source)."""
import streamlit as st

from dashboard.glossary import search
from dashboard.tables import csv_later

st.title("Glossary")
st.caption("Exact definitions of every stored metric (mask = voxel set it is computed on) and of every uncertainty "
           "method; the same text as the README. Search by name or by a word of the definition.")
q = st.text_input("Search", key="glossary_q", placeholder="e.g. ece, budget, rater")
g = search(q)
if g.empty:
    st.info("Nothing matches this search.")
else:
    st.table(g.set_index("term"))  # a static table wraps long definitions instead of cutting them
    st.download_button("Download glossary (CSV)", csv_later(g), file_name="glossary.csv", mime="text/csv")
