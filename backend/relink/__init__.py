"""The re-linkage metric engine: exact expected Recall@K(N) at every pool size, from one blocked pass.

Attack model (DESIGN.md section 3). The attacker holds one de-identified image and a pool of N candidate
reports that contains its true report, and ranks the pool by cosine similarity. Recall@K(N) is the
probability that the true report lands in the top K.

Semantics, precisely:
- Inputs are per image-report pair (n rows). Pairs with the same study_id share one report, so the candidate
  reports are the unique studies (m of them); a study's report embedding, text, patient and label vector
  are those of its first pair. Every pair's image is a query (or those selected by `query_mask`; all studies
  stay candidates). Scores are cosine similarities (embeddings are L2-normalised again, defensively),
  computed in float32.
- Eligible distractors of query i: every other study, except other studies of the same patient
  (included with include_same_patient=True). Among its M_i eligible distractors, b_i "beaters" score
  strictly above the true report and t_i "ties" tie with it: a text-identical report (same report_text,
  whatever the float noise in its embedding) or exactly the same score. Ties are broken uniformly at random.
- Pools. random: N - 1 distractors drawn uniformly without replacement from the M_i eligible ones.
  hard (pathology-matched): only distractors whose 14-label vector equals the true study's (NaN, i.e.
  uncertain or unknown, counts as 0 when matching). full: N = M_i + 1, the whole eligible database.
  Where M_i + 1 < N the pool cannot be filled: that query uses all M_i distractors (effective N = M_i + 1,
  its chance K / (M_i + 1)), stays in the average, and the row reports the mean effective N and the
  fraction of capped queries (capped_frac).
- Expected Recall@K(N), exactly, with no pool sampling: the pool holds X beaters and Y ties (a multivariate
  hypergeometric draw over beaters / ties / others) and P(rank <= K) = sum_{x<K} sum_y P(x, y) min(K-x, y+1)/(y+1);
  with t_i = 0 it is hypergeom.cdf(K - 1, M_i, b_i, N - 1) (see backend.relink.stats.expected_recall). Exact up to
  float64 round-off in log-gamma (about 1e-9 absolute for pools of 400,000).
- Patient level (level="patient"): the pool holds all of the patient's reports plus N - 1 distractors from
  other patients (for hard pools: with the true study's label vector); a hit is any of the patient's
  reports in the top K. That happens exactly when the patient's best-scoring report is in the top K, so
  beaters and ties are counted against it (ties: text-identical to it or the same score; the true report
  is the anchor whenever it shares the best score). The patient's own reports are never distractors here,
  whatever include_same_patient says, so patient level >= study level (with the default exclusion).
  Its chance is 1 - C(N-1, K) / C(N-1+r, K) for a patient with r reports (K / N when r = 1), and its
  effective N counts the distractors + 1.
- Grid: N in 2, 5, 10, 20, 50, 100, ... (1-2-5 steps) up to the largest random pool, which is included.
  "full" rows have one point per K and level, with n = the mean pool size rounded (effective_n: unrounded).
- Chance = K / N (per query with the capped N, averaged); lift = recall / chance (no CI).
- Confidence intervals: 95% percentile bootstrap over patients (patients resampled with replacement,
  n_bootstrap times), by multinomial weights on per-patient sums.
- Rank in the full database: 1 + b_i + t_i / 2 (expected rank, random tie-breaking); its mean and median
  with the same patient bootstrap are in `summary`.
- The counts come from one blocked pass (backend.relink.counts): memory O(block x m), never n x m. Results do not
  depend on the block size (up to float32 round-off in the matmul, which may only matter for scores within
  one ulp of each other).

Modules: curves (relink_curves), normalise (the inputs' L2 normalisation), counts (the blocked pass), stats
(the hypergeometric arithmetic), bootstrap (the patient bootstrap), rows (curve rows, summary, per-query
table), index (faiss top-k); this face re-exports the public names.
"""

from __future__ import annotations

from backend.relink.curves import POOLS, RelinkResult, relink_curves
from backend.relink.index import ReportIndex, build_index, top_k
from backend.relink.normalise import NORMALISE_THREADS, normalised_rows, take_rows_in_place
from backend.relink.rows import CURVE_COLUMNS, ROW_COLUMNS, default_grid

__all__ = ["RelinkResult", "relink_curves", "default_grid", "top_k", "build_index", "ReportIndex", "POOLS",
           "ROW_COLUMNS", "CURVE_COLUMNS", "NORMALISE_THREADS", "normalised_rows", "take_rows_in_place"]
