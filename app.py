"""CXR Re-Link Audit dashboard (placeholder until the dashboard issue lands)."""

import streamlit as st

st.set_page_config(page_title="CXR Re-Link Audit", layout="wide")
st.title("CXR Re-Link Audit")
st.write("How easily does a vision-language model re-link de-identified chest radiographs to their reports?")
