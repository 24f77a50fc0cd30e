"""Training objectives for the projection heads, and the linear heads themselves.

Two objectives (DESIGN.md section 4):
- `in-batch`: CLIP's symmetric InfoNCE over the batch. Summed over the batch (so that the gradient of
  the batch loss is the sum of Opacus-style per-example gradients). Each pair's loss uses every other
  pair of the batch as a negative, so one pair's data changes the others' gradients: per-example
  clipping does not bound a pair's influence and the epsilon is *nominal* (arXiv 2310.03104).
- `public-negatives`: image -> text InfoNCE in which the candidates are the pair's own report and
  reports from a public bank (embedded with the same frozen text encoder and the text head being
  trained). Example i's loss depends only on pair i and public data, so its gradient is truly
  per-example and the epsilon is *certified*. The bank passes through the text head; that is fine
  because the bank's features are public.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import SpecError

GUARANTEE = {"in-batch": "nominal", "public-negatives": "certified"}
DEFAULT_LOGIT_SCALE = 1 / 0.07  # CLIP's initial temperature, used when the model's scale is unknown


class LinearHeads(nn.Module):
    """The two projection heads: pre-projection features -> embeddings before L2 normalisation.

    Weights in nn.Linear layout (out, in), so that Opacus and this module see the same parameters in
    the same order (image.weight, image.bias, text.weight, text.bias). The logit scale is fixed.
    """

    def __init__(self, d_img: int, d_txt: int, d: int, *, bias: bool, logit_scale: float) -> None:
        super().__init__()
        self.image = nn.Linear(d_img, d, bias=bias)
        self.text = nn.Linear(d_txt, d, bias=bias)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, d_img), (b, d_txt) -> image and text embeddings before normalisation, (b, d) each."""
        return self.image(x_img), self.text(x_txt)

    @classmethod
    def from_arrays(cls, heads: dict, *, init: str = "model", seed: int = 0, logit_scale: float | None = None) -> LinearHeads:
        """Heads shaped like the model's (`heads` dict of an EmbeddingSet: image_w (d_img, d), image_b or None,
        text_w (d_txt, d), text_b or None, optional logit_scale); init 'model' copies them, 'random' does not."""
        if heads.get("kind", "linear") != "linear":
            raise SpecError(f"Only linear projection heads are supported, this model has {heads.get('kind')!r}.")
        if init not in ("model", "random"):
            raise SpecError(f"Unknown init {init!r}; use model or random.")
        image_w, text_w = np.asarray(heads["image_w"]), np.asarray(heads["text_w"])
        bias = heads.get("image_b") is not None or heads.get("text_b") is not None
        scale = logit_scale or float(heads.get("logit_scale") or DEFAULT_LOGIT_SCALE)
        torch.manual_seed(seed)
        module = cls(image_w.shape[0], text_w.shape[0], image_w.shape[1], bias=bias, logit_scale=scale)
        if init == "model":
            with torch.no_grad():
                module.image.weight.copy_(torch.from_numpy(image_w.T.astype(np.float32)))
                module.text.weight.copy_(torch.from_numpy(text_w.T.astype(np.float32)))
                for layer, key in ((module.image, "image_b"), (module.text, "text_b")):
                    if layer.bias is not None:
                        b = heads.get(key)
                        layer.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)) if b is not None else 0.0)
        return module

    def to_arrays(self) -> dict:
        """The trained heads in the EmbeddingSet `heads` layout (numpy, (d_pre, d) weights)."""
        def arr(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().numpy().astype(np.float32)

        return {
            "kind": "linear",
            "image_w": arr(self.image.weight).T.copy(), "image_b": arr(self.image.bias),
            "text_w": arr(self.text.weight).T.copy(), "text_b": arr(self.text.bias),
            "logit_scale": float(self.logit_scale),
        }


def in_batch_loss(q: torch.Tensor, z: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP InfoNCE, summed over the batch: sum_i (CE(row i) + CE(column i)) / 2.

    q, z: (b, d) image and text embeddings before normalisation. Returns a scalar.
    """
    u, v = F.normalize(q, dim=1), F.normalize(z, dim=1)
    logits = scale * u @ v.T
    target = torch.arange(len(q), device=q.device)
    return 0.5 * (F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.T, target, reduction="sum"))


def in_batch_per_row(q: torch.Tensor, z: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """The in-batch loss split by row, (b,): what Opacus's ghost clipping takes as 'per-sample' losses."""
    u, v = F.normalize(q, dim=1), F.normalize(z, dim=1)
    logits = scale * u @ v.T
    target = torch.arange(len(q), device=q.device)
    return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))


def public_negatives_losses(q: torch.Tensor, z: torch.Tensor, zb: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Per-example losses (b,): -log softmax over [own report, public bank reports] of example i's image.

    q, z: (b, d) own image/text embeddings before normalisation; zb: (m, d) public bank through the text head.
    """
    u, v, vb = F.normalize(q, dim=1), F.normalize(z, dim=1), F.normalize(zb, dim=1)
    logits = scale * torch.cat([(u * v).sum(1, keepdim=True), u @ vb.T], dim=1)  # (b, 1 + m)
    return -torch.log_softmax(logits, dim=1)[:, 0]


def public_bank_coefficients(
    q: torch.Tensor, z: torch.Tensor, zb: torch.Tensor, scale: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient of example i's public-negatives loss w.r.t. bank row j (before normalisation), in factored form:

        d loss_i / d zb_j = c_ij * u_i - w_ij * vb_j,   c_ij = s p_ij / |zb_j|,  w_ij = c_ij (u_i . vb_j)

    where p_ij is the softmax weight of bank report j for image i. Returns (c (b, m), w (b, m), u (b, d), vb (m, d)),
    all detached. Derivation: d logit_ij / d vb_j = s u_i and d vb / d zb = (I - vb vb^T) / |zb|.
    """
    with torch.no_grad():
        u, v = F.normalize(q, dim=1), F.normalize(z, dim=1)
        norms = zb.norm(dim=1).clamp_min(1e-12)
        vb = zb / norms[:, None]
        logits = scale * torch.cat([(u * v).sum(1, keepdim=True), u @ vb.T], dim=1)
        p = torch.softmax(logits, dim=1)[:, 1:]
        c = scale * p / norms[None, :]
        w = c * (u @ vb.T)
    return c, w, u, vb
