"""The definition of every metric and term, shown beside the numbers on the pages, in the HTML report and in the
export's README (plain text; no Streamlit)."""

from __future__ import annotations

from typing import Any

from backend.specs import MATCH_PREFIX, pool_name

DEFINITIONS: dict[str, str] = {
    "recall": "Recall@K(N): probability that the true report is among the K most similar of a pool of N "
              "candidate reports that contains it (exact expectation over random pools).",
    "chance": "Chance: K/N, the recall of an attacker who ranks the pool at random.",
    "lift": "Lift: Recall@K(N) divided by chance K/N; 1 means no re-linkage beyond guessing.",
    "effective_n": "Effective N: the pool size actually used; pathology-matched pools are capped where too "
                   "few studies share the query's 14-label vector.",
    "random": "Random pool: distractor reports drawn from all other studies (other studies of the same patient "
              "excluded).",
    "hard": "Pathology-matched pool: distractors only from studies with the same 14 labels, which removes the "
            "disease-label shortcut.",
    "study": "Study level: the exact report of the query image must be retrieved.",
    "patient": "Patient level: any report of the same patient in the top K counts (linkage to the person).",
    "epsilon": "Epsilon: the differential-privacy budget of the projection-head training (smaller = more "
               "private); inf = retrained without DP.",
    "certified": "Certified: the loss is per-example decomposable, so the accountant's epsilon is a real "
                 "guarantee for the stated privacy unit.",
    "nominal": "Nominal: in-batch contrastive loss couples examples, so per-sample clipping does not bound one "
               "example's influence; the epsilon is what the accountant reports, not a proven guarantee.",
    "auroc": "AUROC: area under the ROC curve of a per-label classifier on the projected image embeddings "
             "(0.5 = chance, 1 = perfect); macro = mean over labels with enough positives.",
    "reduction": "Re-linkage cut: 1 - Recall@1(DP heads) / Recall@1(heads retrained without DP, the baseline), at the "
                 "pool size N named beside it (random pool, study level); its 95% CI is a paired bootstrap: the same "
                 "patient resamples for both heads.",
    "auroc_cost": "AUROC cost: the heads retrained without DP's linear-probe macro AUROC minus the DP heads' (positive "
                  "is utility lost); its 95% CI is a paired bootstrap over the same patient resamples.",
    "members": "Members: a seeded random subset of the train split's patients (their pairs trained the heads); "
               "non-members: as many test-split patients. Each group is audited on its own reports with the same pool "
               "sizes N (random pool, study level, Recall@1); the gap is member minus non-member Recall@1, its 95% CI "
               "from resampling the patients of both groups independently.",
    "rank": "Rank of the true report among all candidate reports (1 = the attacker's first guess): 1 + the reports "
            "scored higher + half the reports scored equal (ties broken at random, on average); the same patient's "
            "other studies are left out, as in the audit.",
}


# The study's real-data figures (arXiv 2606.02276, MIMIC-CXR): lift of Recall@1 over chance at pool size N, random
# pool. Shown as reference markers beside the demo's curve, always labelled as the study's.
STUDY_LIFT: tuple[tuple[int, float], ...] = ((100, 15.0), (10_000, 50.0))
STUDY_LABEL = "the study's real-data figures (arXiv 2606.02276, MIMIC-CXR)"


def coverage_notes(counts: dict[str, Any]) -> list[str]:
    """What an audit left out or could not tell apart, as sentences (the command's output, the Overview and the
    report word it alike): the source's drops before the split by reason (counts["dropped"]), per side-information
    pool the pairs left out because an attribute is unknown for them (counts["matched_pools"],
    schema.match_coverage), and data without any finding label (counts["labelled_pairs"] == 0)."""
    notes = []
    dropped = {k: int(v) for k, v in (counts.get("dropped") or {}).items() if v}
    if dropped:
        notes.append("Left out by the source before the split: " + "; ".join(
            f"{n:,} pair(s) with {reason.replace('_', ' ')}" for reason, n in dropped.items()) + ".")
    for match, c in (counts.get("matched_pools") or {}).items():
        if int(c.get("left_out") or 0):
            notes.append(f"The pool {pool_name(MATCH_PREFIX + match)} leaves out {int(c['left_out']):,} of "
                         f"{int(c['left_out']) + int(c['pairs']):,} pairs whose {match.replace('+', ' or ')} is "
                         "unknown (every other pool keeps them).")
    if counts.get("labelled_pairs") == 0:
        notes.append("No pair of this data has a finding label: the pathology-matched pool is the random pool here "
                     "(add the 14 CheXpert label columns to compare them).")
    return notes
