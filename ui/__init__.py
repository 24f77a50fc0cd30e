"""The dashboard's shared Streamlit code, one concern per module; with app.py and app_pages/, the only code that
imports streamlit. Data comes from backend.views; no SQL, no ML here.

  loaders      cached reads of backend.views (finished runs cached for good, lists of runs with a short ttl)
  navigation   the pages, the sidebar's dataset and model selectors, the selection a page reads
  widgets      a number with its definition, the slider's points, the DP badge, runs side by side
  markup       data text shown as text, never as markup; errors shown the same way
  job_widgets  submitting a spec, job rows and the job list, live notes while a page's run is computed
  snapshot     the shipped demo snapshot: its import on start and the banner while it is shown
"""
