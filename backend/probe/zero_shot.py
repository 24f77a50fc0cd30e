"""Zero-shot classification: cross-modal utility of an embedding, scored through the report tower.

score_il = <u_i, t(positive prompt l)> - <u_i, t(negative prompt l)> with L2-normalised image embeddings u and
prompt embeddings t (the softmax over the two prompts is monotone in this difference, so its AUROC is the
same); per-label and macro AUROC with patient-bootstrap CIs from backend.probe.auroc.
"""

from __future__ import annotations

import numpy as np

from backend.errors import SpecError
from backend.probe.auroc import ProbeResult, auroc_table, check_shapes, exclusion
from backend.sources.schema import LABELS

# (positive prompt, negative prompt) per label, in CheXpert order, phrased like report sentences.
ZERO_SHOT_PROMPTS: dict[str, tuple[str, str]] = {
    "No Finding": ("No acute cardiopulmonary abnormality.", "Acute cardiopulmonary abnormality."),
    "Enlarged Cardiomediastinum": ("Enlarged cardiomediastinal silhouette.", "Normal mediastinal contour."),
    "Cardiomegaly": ("Cardiomegaly.", "Heart size is normal."),
    "Lung Opacity": ("Lung opacity.", "The lungs are clear."),
    "Lung Lesion": ("Pulmonary nodule.", "No pulmonary nodule."),
    "Edema": ("Pulmonary edema.", "No pulmonary edema."),
    "Consolidation": ("Focal consolidation.", "No focal consolidation."),
    "Pneumonia": ("Pneumonia.", "No pneumonia."),
    "Atelectasis": ("Atelectasis.", "No atelectasis."),
    "Pneumothorax": ("Pneumothorax.", "No pneumothorax."),
    "Pleural Effusion": ("Pleural effusion.", "No pleural effusion."),
    "Pleural Other": ("Pleural thickening.", "No pleural thickening."),
    "Fracture": ("Rib fracture.", "No acute bony abnormality."),
    "Support Devices": ("Support device in place.", "No support devices."),
}
assert tuple(ZERO_SHOT_PROMPTS) == LABELS  # a module invariant, not a user error


def zero_shot(image_emb: np.ndarray, pos_emb: np.ndarray, neg_emb: np.ndarray, test_y: np.ndarray,
              test_patient: np.ndarray, *, labels: tuple[str, ...] = LABELS, min_test: int = 5,
              n_bootstrap: int = 200, seed: int = 0) -> ProbeResult:
    """Zero-shot AUROC: image_emb (n, d) against prompt embeddings pos_emb, neg_emb (L, d) (normalised here)."""
    check_shapes(image_emb, test_y, labels, "zero_shot")
    if pos_emb.shape != (len(labels), image_emb.shape[1]) or neg_emb.shape != pos_emb.shape:
        raise SpecError(f"zero_shot: prompt embeddings must be ({len(labels)}, {image_emb.shape[1]}), got {pos_emb.shape}, {neg_emb.shape}.")

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    scores = unit(image_emb) @ (unit(pos_emb) - unit(neg_emb)).T
    reasons = [exclusion(None, test_y[:, j], 0, min_test) for j in range(len(labels))]
    return auroc_table(scores, test_y, test_patient, reasons, labels=labels, n_bootstrap=n_bootstrap, seed=seed)
