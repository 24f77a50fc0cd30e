"""Training the projection heads under a DPSpec: the privacy units, the schedule, DP-SGD or the non-private
baseline (backend.dp.train), and the privacy record of the run (backend.dp.accounting for the noise and the
achieved epsilon)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from backend import settings
from backend.dp.accounting import calibrate_noise, compute_epsilon, resolve_delta
from backend.dp.objectives import GUARANTEE, LinearHeads
from backend.dp.train import TrainConfig, TrainData, schedule, train_dp, train_nonprivate
from backend.progress import ProgressLike, null_progress
from backend.specs import DPSpec


@dataclass
class TrainedHeads:
    """Trained heads in the EmbeddingSet layout (image_w (d_img_pre, d), image_b (d,) | None, text_w, text_b)."""

    image_w: np.ndarray
    image_b: np.ndarray | None
    text_w: np.ndarray
    text_b: np.ndarray | None
    logit_scale: float
    privacy: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "linear", "image_w": self.image_w, "image_b": self.image_b, "text_w": self.text_w,
                "text_b": self.text_b, "logit_scale": self.logit_scale}


def privacy_units(meta: pd.DataFrame, unit: str) -> tuple[np.ndarray, int]:
    """(n,) int64 codes of each pair's privacy unit and the number of units (pairs, or patients)."""
    if unit == "patient":
        codes, uniques = pd.factorize(meta["patient_id"])
        return codes.astype(np.int64), len(uniques)
    return np.arange(len(meta), dtype=np.int64), len(meta)


def train_heads(spec: DPSpec, train: Any, public_bank: np.ndarray | None, progress: ProgressLike | None = None, *,
                logit_scale: float | None = None, device: str | None = None) -> TrainedHeads:
    """Train the heads on `train` (an EmbeddingSet: image_feat (n, d_img_pre), text_feat (n, d_txt_pre), heads,
    meta.patient_id) under `spec` (DP unless spec.epsilon is inf). public_bank (M, d_txt_pre) is required by
    the public-negatives objective. Raises PrivacyBudgetError when the target epsilon is unreachable."""
    settings.check_device(device)
    progress = progress or null_progress
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    heads = LinearHeads.from_arrays(train.heads, init=spec.init, seed=spec.seed, logit_scale=logit_scale).to(dev)
    codes, n_units = privacy_units(train.meta, spec.privacy_unit)
    data = TrainData(torch.from_numpy(np.ascontiguousarray(train.image_feat, np.float32)).to(dev),
                     torch.from_numpy(np.ascontiguousarray(train.text_feat, np.float32)).to(dev),
                     torch.from_numpy(codes).to(dev), n_units,
                     None if public_bank is None else torch.from_numpy(np.asarray(public_bank, np.float32)).to(dev))
    cfg = TrainConfig.from_spec(spec)
    privacy = {"target_epsilon": spec.epsilon, "objective": spec.objective, "privacy_unit": spec.privacy_unit,
               "max_grad_norm": spec.max_grad_norm, "n_pairs": data.n, "n_units": n_units, "init": spec.init}
    if not spec.private:
        steps = train_nonprivate(heads, data, cfg, progress)
        privacy.update(epsilon=math.inf, delta=0.0, noise_multiplier=0.0, sample_rate=spec.batch_size / data.n,
                       steps=steps, accountant=None, guarantee="none", max_grad_norm=None)
    else:
        delta, note = resolve_delta(spec.delta, n_units)
        q, steps = schedule(data.n, spec.batch_size, spec.epochs)
        sigma = calibrate_noise(target_epsilon=spec.epsilon, delta=delta, sample_rate=q, steps=steps, accountant=spec.accountant)
        info = train_dp(heads, data, dataclasses.replace(cfg, noise_multiplier=sigma), progress)
        eps = compute_epsilon(noise_multiplier=sigma, sample_rate=info["sample_rate"], steps=info["steps"], delta=delta,
                              accountant=spec.accountant)
        privacy.update(epsilon=eps, delta=delta, delta_requested=spec.delta, delta_note=note, noise_multiplier=sigma,
                       sample_rate=info["sample_rate"], steps=info["steps"], accountant=spec.accountant,
                       guarantee=GUARANTEE[spec.objective])
    arrays = heads.to_arrays()
    return TrainedHeads(arrays["image_w"], arrays["image_b"], arrays["text_w"], arrays["text_b"], arrays["logit_scale"], privacy)
