"""Training loops for the projection heads: non-private, and DP-SGD with the exact linear fast path.

DP-SGD here is a manual implementation for linear heads (not Opacus's hooks): Poisson sampling of
privacy units (pairs, or patients with all their pairs) at rate q, exact per-unit gradient norms
(backend.dp.sgd), Opacus's clip factor min(1, C / (norm + 1e-6)), Gaussian noise N(0, (sigma C)^2) drawn per
parameter in Opacus's order, and division by the expected batch size (q * n_pairs, a public constant).
A test shows one step equals Opacus's DPOptimizer (same seed) on small data. The privacy accounting is
Opacus's (backend.dp.accounting), for sample rate q and the number of steps run.

The non-private baseline uses the same objective, optimiser, learning rate, epochs and batch size,
with shuffled fixed-size batches, mean loss, no clipping and no noise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from backend.dp.objectives import LinearHeads, in_batch_loss, public_bank_coefficients, public_negatives_losses
from backend.dp.sgd import LayerGrads, augment, clip_factors, unit_sq_norms, weighted_sum
from backend.errors import SpecError
from backend.progress import ProgressLike, null_progress
from backend.specs import DPSpec

log = logging.getLogger(__name__)


_SPEC_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(DPSpec)}


@dataclass(frozen=True)
class TrainConfig:
    """The schedule of one training run (DP when noise_multiplier is not None); the defaults are DPSpec's."""

    objective: str = _SPEC_DEFAULTS["objective"]
    epochs: int = _SPEC_DEFAULTS["epochs"]
    batch_size: int = _SPEC_DEFAULTS["batch_size"]
    lr: float = _SPEC_DEFAULTS["lr"]
    optimizer: str = _SPEC_DEFAULTS["optimizer"]
    n_negatives: int = _SPEC_DEFAULTS["n_negatives"]
    seed: int = _SPEC_DEFAULTS["seed"]
    noise_multiplier: float | None = None  # None: non-private
    max_grad_norm: float = _SPEC_DEFAULTS["max_grad_norm"]

    @classmethod
    def from_spec(cls, spec: DPSpec) -> TrainConfig:
        """The schedule that spec asks for, non-private (a DP run sets the calibrated noise multiplier)."""
        return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(cls) if f.name != "noise_multiplier"})


@dataclass
class TrainData:
    """Training tensors: x_img (n, d_img), x_txt (n, d_txt), unit (n,) int64 codes of the privacy unit
    in [0, n_units), bank (M, d_txt) public report features or None."""

    x_img: torch.Tensor
    x_txt: torch.Tensor
    unit: torch.Tensor
    n_units: int
    bank: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.x_img)


def schedule(n_pairs: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate q, steps) of DP-SGD: q = batch / n_pairs (also for patients: expected pairs per batch =
    batch), and round(1 / q) steps per epoch."""
    q = min(1.0, batch_size / n_pairs)
    return q, epochs * max(1, round(1 / q))


def make_optimizer(params, name: str, lr: float) -> torch.optim.Optimizer:
    """Adam or SGD (no momentum) over the head parameters."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise SpecError(f"Unknown optimizer {name!r}; use adam or sgd.")


def batch_loss(heads: LinearHeads, xi: torch.Tensor, xt: torch.Tensor, bank: torch.Tensor | None, objective: str) -> torch.Tensor:
    """The summed loss of a batch through the heads' parameters (autograd reaches the weights)."""
    q, z = heads(xi, xt)
    if objective == "in-batch":
        return in_batch_loss(q, z, heads.logit_scale)
    if bank is None:
        raise SpecError("The public-negatives objective needs a public report bank.")
    return public_negatives_losses(q, z, heads.text(bank), heads.logit_scale).sum()


def layer_grads(heads: LinearHeads, xi: torch.Tensor, xt: torch.Tensor, bank: torch.Tensor | None,
                objective: str) -> list[LayerGrads]:
    """Factored per-example gradients of [image head, text head] for one batch (no parameter .grad touched).

    In-batch: the rows' output gradients of the summed loss (Opacus's per-sample gradients; they depend on
    the whole batch). Public negatives: each row's loss gradient alone, plus its bank rows' gradients.
    """
    bias = heads.image.bias is not None
    with torch.no_grad():
        q0, z0 = heads(xi, xt)
    q, z = q0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    if objective == "in-batch":
        loss = in_batch_loss(q, z, heads.logit_scale)
        extra: dict = {}
    else:
        with torch.no_grad():
            zb = heads.text(bank)
        loss = public_negatives_losses(q, z, zb, heads.logit_scale).sum()
        c, w, u, vb = public_bank_coefficients(q0, z0, zb, heads.logit_scale)
        extra = {"bank_x": augment(bank, bias), "c": c, "w": w, "u": u, "vb": vb}
    dq, dz = torch.autograd.grad(loss, [q, z])
    return [LayerGrads(augment(xi, bias), dq), LayerGrads(augment(xt, bias), dz, **extra)]


def set_dp_grads(heads: LinearHeads, layers: list[LayerGrads], unit: torch.Tensor, *, max_grad_norm: float,
                 noise_multiplier: float, expected_batch: float, generator: torch.Generator | None) -> torch.Tensor:
    """Clip each unit's summed gradient to max_grad_norm, add N(0, (sigma C)^2) noise, divide by expected_batch;
    writes p.grad of [image.weight, image.bias, text.weight, text.bias]. Returns the per-unit norms (before clipping).

    unit: (b,) codes of the rows' privacy units (any integers; rows of one unit share a code).
    """
    _, local = torch.unique(unit, return_inverse=True)
    n_units = int(local.max()) + 1 if len(local) else 0
    dev = heads.image.weight.device  # every tensor below lives where the heads live (CPU or GPU)
    sq = unit_sq_norms(layers, local, n_units) if n_units else torch.zeros(0, device=dev)
    s_row = clip_factors(sq, max_grad_norm)[local] if n_units else torch.zeros(0, device=dev)
    std = noise_multiplier * max_grad_norm
    for layer, lg in zip((heads.image, heads.text), layers, strict=True):
        g = weighted_sum(lg, s_row.to(lg.x.dtype)) if n_units else torch.zeros(layer.weight.shape[0], lg.x.shape[1],
                                                                                      device=dev)
        d_in = layer.weight.shape[1]
        parts = [(layer.weight, g[:, :d_in]), (layer.bias, g[:, d_in] if layer.bias is not None else None)]
        for p, summed in parts:
            if p is None:
                continue
            if std > 0:  # same draw as Opacus's _generate_noise (non-secure mode)
                summed = summed + torch.normal(mean=0, std=std, size=p.shape, generator=generator, dtype=p.dtype,
                                                device=p.device)
            p.grad = (summed / expected_batch).to(p.dtype).contiguous()
    return sq.sqrt()


def train_nonprivate(heads: LinearHeads, data: TrainData, cfg: TrainConfig, progress: ProgressLike = null_progress) -> int:
    """Plain training (the baseline, epsilon = inf): shuffled batches, mean loss, no clipping, no noise.
    Deterministic given cfg.seed. Returns the number of steps."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(heads.parameters(), cfg.optimizer, cfg.lr)
    per_epoch = math.ceil(data.n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    for epoch in range(cfg.epochs):
        perm = torch.randperm(data.n, generator=gen)
        for b in range(per_epoch):
            rows = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(data.x_img.device)
            bank = _bank_sample(data.bank, cfg.n_negatives, gen) if cfg.objective == "public-negatives" else None
            opt.zero_grad()
            loss = batch_loss(heads, data.x_img[rows], data.x_txt[rows], bank, cfg.objective) / len(rows)
            loss.backward()
            opt.step()
            progress(epoch * per_epoch + b + 1, total, f"epoch {epoch + 1}/{cfg.epochs}")
    return total


def train_dp(heads: LinearHeads, data: TrainData, cfg: TrainConfig, progress: ProgressLike = null_progress) -> dict:
    """DP-SGD over Poisson-sampled privacy units (see the module docstring). Returns {sample_rate, steps}."""
    if cfg.noise_multiplier is None:
        raise SpecError("train_dp needs a noise multiplier (use train_nonprivate for epsilon = inf).")
    gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=data.x_img.device).manual_seed(cfg.seed + 1)
    q, steps = schedule(data.n, cfg.batch_size, cfg.epochs)
    expected = q * data.n
    opt = make_optimizer(heads.parameters(), cfg.optimizer, cfg.lr)
    per_epoch = steps // cfg.epochs
    for step in range(steps):
        chosen = torch.rand(data.n_units, generator=gen) < q  # Poisson sampling of units
        rows = chosen.to(data.unit.device)[data.unit].nonzero().squeeze(1)
        bank = _bank_sample(data.bank, cfg.n_negatives, gen) if cfg.objective == "public-negatives" else None
        opt.zero_grad()
        layers = layer_grads(heads, data.x_img[rows], data.x_txt[rows], bank, cfg.objective) if len(rows) else _empty(heads, data)
        set_dp_grads(heads, layers, data.unit[rows], max_grad_norm=cfg.max_grad_norm,
                     noise_multiplier=cfg.noise_multiplier, expected_batch=expected, generator=noise_gen)
        opt.step()
        progress(step + 1, steps, f"DP epoch {step // per_epoch + 1}/{cfg.epochs}")
    return {"sample_rate": q, "steps": steps}


def _bank_sample(bank: torch.Tensor | None, m: int, gen: torch.Generator) -> torch.Tensor:
    """m public reports drawn without replacement for this step (public randomness only)."""
    if bank is None:
        raise SpecError("The public-negatives objective needs a public report bank; none was given.")
    idx = torch.randperm(len(bank), generator=gen)[: min(m, len(bank))]
    return bank[idx.to(bank.device)]


def _empty(heads: LinearHeads, data: TrainData) -> list[LayerGrads]:
    """Layer gradients of an empty Poisson batch (the step still adds noise, as Opacus does)."""
    bias = heads.image.bias is not None
    d = heads.image.weight.shape[0]
    z = data.x_img.new_zeros
    return [LayerGrads(z(0, data.x_img.shape[1] + bias), z(0, d)), LayerGrads(z(0, data.x_txt.shape[1] + bias), z(0, d))]
