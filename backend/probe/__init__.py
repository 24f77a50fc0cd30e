"""Utility of an embedding: a linear probe and zero-shot classification, per label AUROC and macro AUROC.

- backend.probe.linear: `linear_probe`, one L2 logistic regression per label fitted on the train split and
  scored on the test split, with its solvers (`fit_probe`: scikit-learn; `newton_probes`: torch, on a GPU).
- backend.probe.zero_shot: `zero_shot` against the report tower's embeddings of `ZERO_SHOT_PROMPTS`.
- backend.probe.auroc: `auroc_table` (per-label and macro AUROC, labels that cannot be scored excluded with
  their reason) with patient-bootstrap CIs (`bootstrap_aurocs`, `weighted_auc`).
"""

from __future__ import annotations

from backend.probe.auroc import ROW_COLUMNS, ProbeResult, auroc_table, bootstrap_aurocs, weighted_auc
from backend.probe.linear import SOLVERS, fit_probe, linear_probe, newton_probes, probe_device
from backend.probe.zero_shot import ZERO_SHOT_PROMPTS, zero_shot

__all__ = ["ROW_COLUMNS", "SOLVERS", "ZERO_SHOT_PROMPTS", "ProbeResult", "auroc_table", "bootstrap_aurocs",
           "fit_probe", "linear_probe", "newton_probes", "probe_device", "weighted_auc", "zero_shot"]
