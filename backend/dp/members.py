"""Members against non-members: do the heads re-link the patients they were trained on better than
patients they never saw? DP-SGD on the heads bounds what one training patient can add to them, so the
re-linkage it can remove is the part that comes from memorising the training set.

Groups. Members: a seeded random subset of the train split's patients (all their pairs; these pairs trained
the heads). Non-members: the test split's patients (a seeded random subset of the same size when the
train split has fewer patients or `max_patients` caps them). Both groups hold the same number of patients
and are disjoint (a test patient who also appears in the train split is never a non-member).

Pools. Each group is audited on its own: its images are the queries and its own studies the candidate
reports (random pool, study level, K = 1), exactly as `backend.audit.audit_embeddings` does for a split.
Both groups use the same pool sizes N: the 1-2-5 grid up to the largest common N, the smaller of the two
groups' largest random pools. Each row carries both groups' mean effective N and capped share.

Confidence intervals. Each group's Recall@1 has the audit's 95% patient-bootstrap CI (members with the
audit's seed, non-members with seed + 1, so that the two resamplings are independent). The gap
(member - non-member) is bootstrapped from the same replicates: replicate b of the gap is replicate b of
the members' mean minus replicate b of the non-members' mean (patients of each group resampled with
replacement, independently); its CI is the percentile interval of those differences.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backend.audit import AuditResult, audit_embeddings
from backend.dp.eval import project
from backend.errors import SpecError
from backend.relink.bootstrap import bootstrap_means, bootstrap_weights, percentile_ci
from backend.relink.rows import default_grid
from backend.relink.stats import expected_recall
from backend.specs import AuditSpec

log = logging.getLogger(__name__)

GROUP_COLUMNS: tuple[str, ...] = ("recall", "ci_low", "ci_high", "effective_n", "capped_frac")
MEMBER_COLUMNS: tuple[str, ...] = ("n", *(f"member_{c}" for c in GROUP_COLUMNS),
                                   *(f"nonmember_{c}" for c in GROUP_COLUMNS), "gap", "gap_ci_low", "gap_ci_high")
POOLS_NOTE = ("Both groups hold the same number of patients and are audited with the same pool sizes N (random pool, "
              "study level, Recall@1); the largest N is the smaller of the two groups' largest random pools.")


@dataclass(frozen=True)
class MemberGroups:
    """members / non_members: EmbeddingSets (train- and test-split pairs of the chosen patients, disjoint, the same
    number of patients); n_grid: the pool sizes both are audited at; seed: the draw of the patients."""

    members: Any
    non_members: Any
    n_patients: int
    n_grid: tuple[int, ...]
    seed: int
    include_same_patient: bool = False

    def describe(self) -> dict[str, Any]:
        def counts(es: Any, split: str) -> dict[str, Any]:
            meta = es.meta
            return {"split": split, "patients": int(meta["patient_id"].nunique()), "studies": int(meta["study_id"].nunique()),
                    "pairs": len(meta), "largest_pool": largest_pool(meta, self.include_same_patient)}

        return {"members": counts(self.members, "train"), "non_members": counts(self.non_members, "test"),
                "n_patients": self.n_patients, "seed": self.seed, "pool_sizes": list(self.n_grid),
                "largest_common_n": int(self.n_grid[-1]), "pools": POOLS_NOTE}


def largest_pool(meta: pd.DataFrame, include_same_patient: bool = False) -> int:
    """The largest random pool N of a split's audit: its studies, less the other studies of the patient with the
    fewest (they are not distractors unless include_same_patient)."""
    studies = meta.drop_duplicates("study_id")
    if include_same_patient:
        return len(studies)
    return len(studies) - int(studies.groupby("patient_id").size().min()) + 1


def member_groups(train: Any, test: Any, *, max_patients: int | None = None, seed: int = 0,
                  include_same_patient: bool = False) -> MemberGroups:
    """Draw the members (train patients) and as many non-members (test patients); see the module docstring.

    Raises SpecError when either group would hold fewer than 2 patients (no pool to draw from)."""
    if max_patients is not None and max_patients < 2:
        raise SpecError(f"max_patients must be at least 2 (a pool needs another patient's report), got {max_patients}.")
    train_pat = pd.unique(train.meta["patient_id"])
    seen = set(train_pat)
    test_pat = np.array([p for p in pd.unique(test.meta["patient_id"]) if p not in seen], dtype=object)
    if len(test_pat) < len(pd.unique(test.meta["patient_id"])):
        log.warning("members: %d test patients also appear in the train split; they are not non-members",
                    len(pd.unique(test.meta["patient_id"])) - len(test_pat))
    n = min(len(train_pat), len(test_pat), *([max_patients] if max_patients is not None else []))
    if n < 2:
        raise SpecError(f"Members against non-members needs at least 2 patients in each group; the train split has "
                        f"{len(train_pat)} and the test split {len(test_pat)} (not in train). Use a larger source.")
    rng = np.random.default_rng(seed)
    chosen_m = set(rng.choice(np.asarray(train_pat, dtype=object), size=n, replace=False))
    chosen_n = set(test_pat) if n == len(test_pat) else set(rng.choice(test_pat, size=n, replace=False))
    members = train.subset(train.meta["patient_id"].isin(chosen_m).to_numpy())
    non_members = test.subset(test.meta["patient_id"].isin(chosen_n).to_numpy())
    common = min(largest_pool(members.meta, include_same_patient), largest_pool(non_members.meta, include_same_patient))
    return MemberGroups(members, non_members, n, tuple(default_grid(max(common, 2))), seed, include_same_patient)


def group_audit_spec(audit: AuditSpec, group: str) -> AuditSpec:
    """The audit of one group: random pool, K = 1, the bootstrap of `audit`; non-members with seed + 1."""
    return AuditSpec(pools=("random",), ks=(1,), include_same_patient=audit.include_same_patient,
                     n_bootstrap=audit.n_bootstrap, seed=audit.seed + (group == "non_members"))


def _projected(heads: dict, es: Any) -> Any:
    return dataclasses.replace(es, image_emb=project(heads, es.image_feat, "image"),
                               report_emb=project(heads, es.text_feat, "text"))


def _replicates(res: AuditResult, grid: tuple[int, ...], n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query expected R@1 (random pool, study level) at every N of grid -> (means (G,), bootstrap replicates
    (B, G)), with the patient weights the audit drew (same patients, same seed)."""
    pq = res.per_query
    elig = pq["eligible"].to_numpy(np.float64)
    values = np.stack([expected_recall(elig, pq["beaters"].to_numpy(np.float64), pq["ties"].to_numpy(np.float64),
                                       np.minimum(n - 1.0, elig), (1,))[:, 0] for n in grid], axis=1)
    patient = pd.factorize(pq["patient_id"])[0]
    weights = bootstrap_weights(int(patient.max()) + 1, n_bootstrap, seed)
    return values.mean(0), bootstrap_means(values, patient, weights)


def members_gap(heads: dict, groups: MemberGroups, audit: AuditSpec) -> pd.DataFrame:
    """Recall@1 of members and non-members through `heads` at every N of groups.n_grid, with their CIs and the
    gap with its CI: one row per N, MEMBER_COLUMNS."""
    out = pd.DataFrame({"n": list(groups.n_grid)})
    reps = {}
    for name, es, prefix in (("members", groups.members, "member"), ("non_members", groups.non_members, "nonmember")):
        spec = group_audit_spec(audit, name)
        res = audit_embeddings(_projected(heads, es), spec, n_grid=groups.n_grid)
        rows = res.rows[(res.rows["pool_kind"] == "random") & (res.rows["level"] == "study") & (res.rows["k"] == 1)]
        rows = rows.set_index("n").loc[list(groups.n_grid)]
        for col in GROUP_COLUMNS:
            out[f"{prefix}_{col}"] = rows[col].to_numpy()
        means, reps[name] = _replicates(res, groups.n_grid, spec.n_bootstrap, spec.seed)
        off = float(np.max(np.abs(means - out[f"{prefix}_recall"].to_numpy())))
        if off > 1e-6:  # one definition (the audit's rows may come from torch on a GPU: float64 round-off only)
            log.warning("members: per-query Recall@1 of %s differs from the audit's rows by %.3g", name, off)
    out["gap"] = out["member_recall"] - out["nonmember_recall"]
    low, high = percentile_ci(reps["members"] - reps["non_members"])
    out["gap_ci_low"], out["gap_ci_high"] = low, high
    return out[list(MEMBER_COLUMNS)]


def members_headline(rows: pd.DataFrame, n_ref: int = 100) -> pd.DataFrame:
    """The rows at N = n_ref (or the largest N below it) and at the largest common N."""
    rows = rows.sort_values("n")
    near = rows[rows["n"] <= n_ref]
    picks = ([near.index[-1]] if len(near) else []) + [rows.index[-1]]
    return rows.loc[list(dict.fromkeys(picks))].reset_index(drop=True)


def gap_contains_zero(rows: pd.DataFrame) -> bool:
    """True when every headline gap's CI contains 0 (no measurable memorisation); False when any excludes it."""
    return bool(((rows["gap_ci_low"] <= 0) & (rows["gap_ci_high"] >= 0)).all())
