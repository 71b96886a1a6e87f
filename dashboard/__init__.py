"""Streamlit helpers shared by the pages: sidebar state, cached read-only queries, Plotly figures."""
