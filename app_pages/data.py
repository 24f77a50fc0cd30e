"""Data: the registered sources, counts, label prevalence, and sample pairs (image beside report)."""

import streamlit as st

from backend.errors import RelinkError
from backend.views import catalog, data, launch
from ui import loaders, markup, navigation, widgets

source, model = navigation.selection()
st.title("Data")
st.dataframe(catalog.sources_table(), hide_index=True, row_height=widgets.WRAP_ROW_HEIGHT, column_config={
    "source": st.column_config.TextColumn(width="small"),  # tall rows wrap the descriptions instead of cutting them
    "description": st.column_config.TextColumn(width="large"),
    "needs a folder": st.column_config.CheckboxColumn(width="small", help="Reads a dataset folder you name."),
    "credentialed": st.column_config.CheckboxColumn(width="small", help="Needs a data-use agreement (PhysioNet).")})

st.subheader(f"Dataset: {markup.plain(source)}")
if source == "synthetic":
    st.warning("SYNTHETIC: generated images and reports; no patient data.")
root = None
if launch.needs_root(source):  # the same field (and value) as the launch form on Models and jobs
    root = st.text_input(f"Folder of the {source} dataset", value=launch.default_root(source), key=f"root-{source}",
                         help="The dataset's folder on this machine (the command line's --root).").strip() or None
    if root is None:
        st.info(f"Name the folder of the {source} dataset above to see its counts and sample pairs.")
        st.stop()
try:
    pairs, stats = loaders.source_tables(source, root)
except RelinkError as exc:
    markup.show_error(exc)
    st.stop()
counts, prevalence = data.data_summary(pairs, data.LABELS)
HELP = {"pairs": "Image-report pairs (a study with two views gives two pairs sharing one report).",
        "studies": "Studies: one report each.", "patients": "Distinct patients (splits never share one).",
        "dropped_empty_report": "Pairs dropped because the section policy left no report text."}
cols = st.columns(len(HELP))
for col, (name, definition) in zip(cols, HELP.items(), strict=True):
    col.metric(name.replace("_", " "), f"{stats.get(name, 0):,}", help=definition)
st.caption(data.match_summary(pairs) + (" The synthetic images and reports do not encode sex, age or year: "
           "matching on them only shrinks the pool." if source == "synthetic" else ""))
with st.expander("All counts from the loader"):
    st.dataframe([{"count": k, "value": v} for k, v in stats.items()], hide_index=True)
left, right = st.columns([1, 2])
left.markdown("**Counts per split** (patient-disjoint)")
left.dataframe(counts, hide_index=True)
right.markdown("**Label prevalence** (share of pairs with the label positive; unknown counts as not positive)")
right.bar_chart(prevalence.set_index("label"), horizontal=True, height=460, stack=False)

st.subheader("Sample pairs")
sample = pairs.sample(min(4, len(pairs)), random_state=0)
for _, row in sample.iterrows():
    img_col, text_col = st.columns([1, 2])
    try:
        img_col.image(loaders.run_source_image(source, row["image_path"], root), caption=markup.plain(f"{row['pair_id']} · {row['view']}"),
                      width="stretch")
    except RelinkError as exc:
        img_col.caption(markup.plain(f"image unavailable: {exc}"))
    text_col.markdown(f"**Report** ({'SYNTHETIC · ' if source == 'synthetic' else ''}patient "
                      f"{markup.plain(row['patient_id'])}, study {markup.plain(row['study_id'])}, split {markup.plain(row['split'])})")
    markup.text_block(row["report"], container=text_col)
    text_col.caption("Labels: " + (", ".join(label for label in data.LABELS if row[label] == 1) or "none positive"))
