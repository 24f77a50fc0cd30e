"""Exact per-example (and per-patient) gradient norms for linear heads, without materialising them.

A linear layer y = x A^T + b has per-example gradient g_i = delta_i x~_i^T (x~ = [x, 1] with a bias),
a rank-one matrix, so ||g_i||^2 = ||x~_i||^2 ||delta_i||^2 (what Opacus's ghost clipping exploits too)
and the clipped sum is X~^T diag(s) Delta: one matmul, no (b, out, in) tensor.

With public negatives the text head also sees the bank rows, whose output gradients are per-example
too: e_ij = c_ij u_i - w_ij vb_j (backend.dp.objectives.public_bank_coefficients). Everything stays exact:
the Gram matrix K_ik = <g_i, g_k> of the per-example gradients has a closed form of (b, b) and (b, m)
matrix products, its diagonal gives per-pair norms and its block sums per-patient norms
(||sum_{i in p} g_i||^2 = sum_{i,k in p} K_ik). Tests check all of this against torch.func.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CLIP_EPS = 1e-6  # Opacus's: factor = C / (norm + 1e-6), capped at 1


@dataclass
class LayerGrads:
    """The per-example gradients of one linear layer, in factored form.

    x: (b, d_in~) inputs (with a ones column when the layer has a bias); delta: (b, d_out) output gradients.
    Bank part (public-negatives text head only): bank_x (m, d_in~), c and w (b, m), u (b, d_out), vb (m, d_out).
    """

    x: torch.Tensor
    delta: torch.Tensor
    bank_x: torch.Tensor | None = None
    c: torch.Tensor | None = None
    w: torch.Tensor | None = None
    u: torch.Tensor | None = None
    vb: torch.Tensor | None = None

    @property
    def has_bank(self) -> bool:
        return self.bank_x is not None


def augment(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """(n, d) -> (n, d + 1) with a ones column when the layer has a bias, else x itself."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1) if bias else x


def sq_norms(lg: LayerGrads) -> torch.Tensor:
    """Squared Frobenius norms of the per-example gradients, (b,)."""
    own = (lg.x * lg.x).sum(1) * (lg.delta * lg.delta).sum(1)
    if not lg.has_bank:
        return own
    # the diagonal of gram() without the (b, b) products: O(b m d + b m^2)
    c, w, u, vb = lg.c, lg.w, lg.u, lg.vb
    h = lg.x @ lg.bank_x.T
    g = lg.bank_x @ lg.bank_x.T
    cross = (lg.delta * u).sum(1) * (h * c).sum(1) - (h * (lg.delta @ vb.T) * w).sum(1)
    cg = c @ g
    bank = (u * u).sum(1) * (cg * c).sum(1) - 2 * (cg * (u @ vb.T) * w).sum(1) + ((w @ (g * (vb @ vb.T))) * w).sum(1)
    return own + 2 * cross + bank


def gram(lg: LayerGrads) -> torch.Tensor:
    """K (b, b), K_ik = <g_i, g_k> (Frobenius) of the per-example gradients; exact, O(b^2 d + b m^2 + b^2 m)."""
    k = (lg.x @ lg.x.T) * (lg.delta @ lg.delta.T)
    if not lg.has_bank:
        return k
    c, w, u, vb = lg.c, lg.w, lg.u, lg.vb
    h = lg.x @ lg.bank_x.T  # (b, m)  <x_i, xb_j>
    g = lg.bank_x @ lg.bank_x.T  # (m, m)  <xb_j, xb_l>
    # own row of i against bank rows of k: sum_j h_ij <delta_i, c_kj u_k - w_kj vb_j>
    cross = (lg.delta @ u.T) * (h @ c.T) - (h * (lg.delta @ vb.T)) @ w.T
    # bank rows of i against bank rows of k: sum_jl g_jl <c_ij u_i - w_ij vb_j, c_kl u_k - w_kl vb_l>
    cg = c @ g
    t = (cg * (u @ vb.T)) @ w.T
    bank = (u @ u.T) * (cg @ c.T) - t - t.T + w @ (g * (vb @ vb.T)) @ w.T
    return k + cross + cross.T + bank


def unit_sq_norms(layers: list[LayerGrads], unit: torch.Tensor, n_units: int) -> torch.Tensor:
    """Squared norm of each privacy unit's summed gradient over all layers, (n_units,).

    unit: (b,) int64 codes in [0, n_units) of the rows' units (pair or patient). When every unit has one
    row this is the cheap diagonal; otherwise block sums of the Gram matrix.
    """
    if len(torch.unique(unit)) == len(unit):
        per_row = sum(sq_norms(lg) for lg in layers)
        return torch.zeros(n_units, dtype=per_row.dtype, device=per_row.device).index_add_(0, unit, per_row)
    k = sum(gram(lg) for lg in layers)
    onehot = torch.zeros(n_units, len(unit), dtype=k.dtype, device=k.device)
    onehot[unit, torch.arange(len(unit), device=k.device)] = 1.0
    return ((onehot @ k) * onehot).sum(1)


def clip_factors(sq: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Opacus's per-unit clip factors min(1, C / (norm + 1e-6))."""
    return (max_grad_norm / (sq.clamp_min(0).sqrt() + CLIP_EPS)).clamp(max=1.0)


def weighted_sum(lg: LayerGrads, s: torch.Tensor) -> torch.Tensor:
    """sum_i s_i g_i as a (d_out, d_in~) matrix (nn.Linear layout, bias as the last column)."""
    out = (lg.delta * s[:, None]).T @ lg.x
    if lg.has_bank:
        # sum_i s_i e_ij = sum_i s_i c_ij u_i - (sum_i s_i w_ij) vb_j, for each bank row j
        e = lg.c.T @ (s[:, None] * lg.u) - (lg.w.T @ s)[:, None] * lg.vb  # (m, d_out)
        out = out + e.T @ lg.bank_x
    return out


def materialize(lg: LayerGrads) -> torch.Tensor:
    """The per-example gradients themselves, (b, d_out, d_in~): the brute-force reference for tests."""
    out = torch.einsum("bo,bi->boi", lg.delta, lg.x)
    if lg.has_bank:
        e = lg.c[:, :, None] * lg.u[:, None, :] - lg.w[:, :, None] * lg.vb[None, :, :]  # (b, m, d_out)
        out = out + torch.einsum("bmo,mi->boi", e, lg.bank_x)
    return out
