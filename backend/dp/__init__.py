"""Differentially private projection heads (DESIGN.md section 4): train, audit, probe, sweep.

Both encoders are frozen; only the linear projection heads are (re)trained, on the train split's cached
pre-projection features. epsilon = inf is the non-private retraining with the same schedule (the
baseline that separates the effect of DP from the effect of retraining); the "original" reference
evaluates the model's own heads.

Every run records its privacy dict: epsilon (achieved, from Opacus's accountant for the steps actually
run), target_epsilon, delta, noise_multiplier, sample_rate, steps, max_grad_norm, accountant, objective,
privacy_unit and guarantee: "certified" for public-negatives (per-example gradients depend on one
pair/patient and public data only), "nominal" for in-batch (the in-batch negatives couple examples, so
clipping does not bound one pair's influence; arXiv 2310.03104), "none" without DP.
How: exact manual DP-SGD for linear heads (backend.dp.train: Poisson sampling, rank-one/Gram per-unit
norms, Opacus's clipping and noise; equal to Opacus's DPOptimizer step in tests), Opacus's accountant.

Modules: heads (train_heads, privacy_units), result (DPResult, headline_rows), sweep (run_dp, run_sweep,
original_result, run_members, model_probe), train and sgd (the training loops), objectives, accounting,
eval (prepare, evaluate), members (members against non-members); this face re-exports the public names.
"""

from __future__ import annotations

from backend.dp.heads import TrainedHeads, privacy_units, train_heads
from backend.dp.result import DPResult, headline_rows
from backend.dp.sweep import model_probe, original_result, run_dp, run_members, run_sweep, sweep_members

__all__ = ["DPResult", "TrainedHeads", "headline_rows", "model_probe", "original_result", "privacy_units", "run_dp",
           "run_members", "run_sweep", "sweep_members", "train_heads"]
