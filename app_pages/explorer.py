"""Pair explorer: one image, its true report, the reports an attacker would retrieve, shared words."""

import streamlit as st

from backend.errors import RelinkError
from backend.views import data, explorer
from backend.views.definitions import DEFINITIONS
from ui import job_widgets, loaders, markup, navigation

source, model = navigation.selection()
st.title("Pair explorer")
run_id = loaders.latest("audit", source, model)
if job_widgets.pending_note("audit", source, model, run_id) and not run_id:
    st.stop()
if not run_id:
    st.info(f"No finished audit of {markup.plain(model)} on {markup.plain(source)} yet; run one first (Overview or Models "
            "and jobs).")
    st.stop()
try:
    ps = loaders.pair_set(run_id)
except RelinkError as exc:
    markup.show_error(exc)
    st.stop()

f1, f2, f3, f4 = st.columns([3, 3, 2, 1])
labels = f1.multiselect("Labels (all must be positive)", list(data.LABELS), help="Filter images by their 14 labels.")
search = f2.text_input("Search reports or ids", help="Case-insensitive substring of the report, pair or patient id.")
easy_first = f3.toggle("Most re-linkable first", value=True, help="Order by the true report's rank (1 = found first).")
k = f4.number_input("Top k", 1, 50, 5, help="How many retrieved reports to show (1 to 50).")
options = explorer.choices(ps, labels, search, easy_first)
if not len(options):
    st.info("No image matches these filters.")
    st.stop()
captions = {r.pair_id: f"{r.pair_id} · rank {r.rank_full:g} of the true report · {r.report[:70]}" for r in options.itertuples()}
pair_id = st.selectbox(f"Image ({len(options)} shown)", list(captions), format_func=captions.get, key="pair_choice")
hit = explorer.retrieve(ps, pair_id, k=int(k))
row = hit["row"]

left, right = st.columns([1, 1])
with left:
    try:
        image = loaders.pair_image(run_id, row["image_path"])
        st.image(image, caption=markup.plain(f"{pair_id} · {row['view']} · patient {row['patient_id']}"), width="stretch")
        if loaders.data_changed_since(run_id):
            st.warning("The dataset changed since this run was computed: this image may not be the one it embedded. "
                       "Run the audit again to see the current data.")
    except RelinkError as exc:
        st.caption(markup.plain(f"Image unavailable: {exc}"))
    st.caption("Labels: " + (", ".join(lbl for lbl in data.LABELS if row[lbl] == 1) or "none positive"))
with right:
    st.metric("Rank of the true report", f"{hit['true_rank']:g} of {hit['n_candidates']:,}",
              help=DEFINITIONS["rank"])
    rival = explorer.top_rival(hit)
    shared = explorer.shared_words(row["report"], rival["report"], ps.doc_freq) if rival is not None else set()
    st.markdown(f"**True report** (distinctive words shared with the top-ranked other report, "
                f"#{rival['rank'] if rival is not None else '-'}, highlighted: words in at most 5% of all reports)")
    markup.text_block(row["report"], shared)

st.subheader(f"Top {int(k)} retrieved reports")
for r in hit["top"].itertuples():
    tag = " · **TRUE REPORT**" if r.is_true else ""
    with st.container(border=True):
        st.markdown(f"#{r.rank} · score {r.score:.4f} · study {markup.plain(r.study_id)}{tag}",
                    help="Score: cosine similarity between the image and report embeddings.")
        markup.text_block(r.report, explorer.shared_words(row["report"], r.report, ps.doc_freq))

others = explorer.same_patient(ps, pair_id)
st.subheader("The same patient's other studies")
if len(others):
    st.dataframe(others, hide_index=True, column_config={
        "rank_full": st.column_config.NumberColumn("rank of its true report", help=DEFINITIONS["rank"])})
else:
    st.caption("None in this split.")
