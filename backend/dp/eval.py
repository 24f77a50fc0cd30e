"""Inputs and evaluation shared by run_dp and run_sweep: embeddings of the train/test splits, the public
report bank, the zero-shot prompts, and the evaluation of a set of heads (re-linkage audit, linear probe,
zero-shot) on the in-domain test split and on transfer targets.

Transfer: heads trained on the source are applied, without retraining, to another source's test split;
the linear-probe classifiers are the ones fitted on the source's train split (the whole pipeline transfers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from backend import settings
from backend.audit import audit_embeddings
from backend.embed.compute import embed_split
from backend.errors import SpecError
from backend.models import load_model
from backend.probe import ZERO_SHOT_PROMPTS, linear_probe, zero_shot
from backend.progress import ProgressLike, null_progress
from backend.public_bank import NO_BANK, bank_of, check_bank
from backend.sources import load_source
from backend.sources.schema import LABELS, combined_digest
from backend.specs import AuditSpec, DPSpec, EmbedSpec, SourceSpec

log = logging.getLogger(__name__)


@dataclass
class EvalInputs:
    """Everything that does not depend on the heads. Arrays: bank (M, d_txt_pre), prompts_pos/neg (14, d_txt_pre)."""

    train: Any  # EmbeddingSet
    test: Any  # EmbeddingSet
    bank: np.ndarray | None
    prompts_pos: np.ndarray
    prompts_neg: np.ndarray
    logit_scale: float | None
    transfer: dict[str, Any] = field(default_factory=dict)  # target label -> EmbeddingSet (test split)
    frozen_rows: pd.DataFrame | None = None  # the reference probe on frozen encoder features
    members: Any = None  # backend.dp.members.MemberGroups: members against non-members per point (the sweep's)
    device: str | None = None  # where the model ran and the heads train (None: cuda when present, else cpu)
    weights_hash: str = ""  # the model's weights hash (backend.models.digest), recorded with every result

    def data_inputs(self) -> dict[str, Any]:
        """{"data_hash", "n_pairs", "weights_hash"} of the data the heads were trained and evaluated on, as an audit
        records them, and of the model's weights:
        the source's digest (`embed_split`'s, over every pair of the source) and, with transfer targets, one hash
        over the source's and each target's digest in order; n_pairs counts the source's and the targets' pairs."""
        sets = [self.test, *self.transfer.values()]
        found = [dict((getattr(es, "info", None) or {}).get("inputs") or {}) for es in sets]
        weights = {"weights_hash": self.weights_hash} if self.weights_hash else {}
        if not all(f.get("data_hash") for f in found):
            return weights
        return {"data_hash": combined_digest([str(f["data_hash"]) for f in found]),
                "n_pairs": sum(int(f.get("n_pairs") or 0) for f in found), **weights}


def source_label(src: SourceSpec) -> str:
    """A short readable name for a source spec, e.g. 'synthetic[sites=B]'."""
    opts = ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in sorted(src.options.items()))
    return f"{src.name}[{opts}]" if opts else src.name


def text_features(lm: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), d_txt_pre) pre-projection text features through the frozen text encoder."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tokens = lm.tokenizer(texts[i:i + batch_size]).to(lm.device)
            out.append(lm.encode_text_features(tokens).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def public_bank(spec: DPSpec, lm: Any, progress: ProgressLike = null_progress) -> np.ndarray:
    """Text features of the public report bank (distinct reports of backend.public_bank.bank_of(spec)), cached.

    The bank must be public: its reports are used without privacy protection as negatives.
    """

    src = bank_of(spec)
    if src is None:
        raise SpecError(NO_BANK)
    key = hashlib.sha256(json.dumps([src.to_json(), lm.weights_id, lm.name]).encode()).hexdigest()[:16]
    path = settings.cache_subdir("dp_banks") / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    data = load_source(src.name, root=src.root, section_policy=src.section_policy, **src.options)
    texts = [str(t) for t in data.pairs["report"].dropna().unique()]
    progress(0, 1, f"embedding {len(texts)} public reports")
    feats = text_features(lm, texts)
    np.save(path, feats)
    log.info("public bank: %d reports from %s (%s)", len(texts), src.name, path)
    return feats


def prepare(spec: DPSpec, progress: ProgressLike = null_progress, *, need_bank: bool | None = None,
            device: str | None = None) -> EvalInputs:
    """Embed (cached) the source's train and test splits and the transfer targets' test splits; load the
    bank (when the objective needs it) and the prompt features; fit the frozen-feature reference probe.
    device: where the model runs and, later, the heads train (None: cuda when present, else cpu)."""

    need_bank = spec.objective == "public-negatives" if need_bank is None else need_bank
    if need_bank:
        check_bank(spec)  # seconds, before the model loads and the splits are embedded
    lm = load_model(spec.model, device=device)
    src = load_source(spec.source.name, root=spec.source.root, section_policy=spec.source.section_policy,
                      **spec.source.options)
    sets = {split: embed_split(EmbedSpec(source=spec.source, model=spec.model, split=split), progress, model=lm, source=src)
            for split in ("train", "test")}
    transfer = {source_label(t): embed_split(EmbedSpec(source=t, model=spec.model, split="test"), progress, model=lm)
                for t in spec.transfer}
    bank = public_bank(spec, lm, progress) if need_bank else None
    pos, neg = zip(*ZERO_SHOT_PROMPTS.values(), strict=True)
    scale = getattr(lm.model, "logit_scale", None)
    inputs = EvalInputs(sets["train"], sets["test"], bank, text_features(lm, list(pos)), text_features(lm, list(neg)),
                        float(scale.detach().exp().clamp(max=100)) if scale is not None else None, transfer,
                        device=device, weights_hash=lm.weights_hash)
    inputs.frozen_rows = frozen_reference(inputs, spec.audit)
    return inputs


def project(heads: dict, feat: np.ndarray, side: str) -> np.ndarray:
    """L2-normalised (n, d) embeddings of (n, d_pre) features through heads[side_w], heads[side_b]."""
    emb = feat @ heads[f"{side}_w"]
    if heads.get(f"{side}_b") is not None:
        emb = emb + heads[f"{side}_b"]
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _probe_rows(res: Any, target: str, method: str, features: str) -> pd.DataFrame:
    rows = res.rows.copy()
    rows.insert(0, "features", features)
    rows.insert(0, "method", method)
    rows.insert(0, "target", target)
    return rows


def frozen_reference(inputs: EvalInputs, audit: AuditSpec) -> pd.DataFrame:
    """Linear probe on the frozen encoder's pre-projection image features (independent of the heads)."""
    tr = inputs.train
    frames = []
    for target, te in [("in-domain", inputs.test), *inputs.transfer.items()]:
        res = linear_probe(tr.image_feat, tr.labels(), te.image_feat, te.labels(), te.meta["patient_id"].to_numpy(),
                           n_bootstrap=audit.n_bootstrap, seed=audit.seed)
        frames.append(_probe_rows(res, target, "linear-probe", "frozen"))
    return pd.concat(frames, ignore_index=True)


OUTCOME_COUNTS: tuple[str, ...] = ("beaters", "ties", "eligible", "beaters_hard", "ties_hard", "eligible_hard")


def outcome_frame(per_query: pd.DataFrame, labels: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """The per-query outcomes of one set of heads on the test split, what paired comparisons of two sets of heads
    resample (backend.relink.paired): per query image (in pair order) its patient, the study-level counts that its
    expected Recall@K at any pool size comes from (random and pathology-matched pools: OUTCOME_COUNTS, as
    backend.relink.rows.per_query_frame names them), its 14 labels ("y:<label>") and each probe's scores
    ("<method>:<label>", NaN for a label the probe left out)."""
    frame = per_query[["patient_id", *OUTCOME_COUNTS]].reset_index(drop=True).copy()
    cols = {f"y:{name}": labels[:, j] for j, name in enumerate(LABELS)}
    for method, values in scores.items():
        cols.update({f"{method}:{name}": values[:, j] for j, name in enumerate(LABELS)})
    return pd.concat([frame, pd.DataFrame(cols)], axis=1)


def evaluate(heads: dict, inputs: EvalInputs, audit: AuditSpec,
             progress: ProgressLike = null_progress, *, relink: bool = True,
             outcomes: dict[str, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Audit and probe the heads on the in-domain test split and every transfer target.

    Returns (relink rows with a `target` column, {target: relink summary}, probe rows with target/method/features).
    relink=False: the probes only (empty relink rows and summaries). outcomes: a dict that receives, under
    "in-domain", the in-domain per-query outcomes (outcome_frame) when relink is True.
    """

    tr = inputs.train
    train_emb = project(heads, tr.image_feat, "image")
    pos = project(heads, inputs.prompts_pos, "text")
    neg = project(heads, inputs.prompts_neg, "text")
    relinks, summaries, probes = [], {}, []
    for target, te in [("in-domain", inputs.test), *inputs.transfer.items()]:
        img = project(heads, te.image_feat, "image")
        if relink:
            rep = project(heads, te.text_feat, "text")
            res = audit_embeddings(dataclasses.replace(te, image_emb=img, report_emb=rep), audit, progress)
            rows = res.rows.copy()
            rows.insert(0, "target", target)
            relinks.append(rows)
            summaries[target] = res.summary
        patient = te.meta["patient_id"].to_numpy()
        lp = linear_probe(train_emb, tr.labels(), img, te.labels(), patient, n_bootstrap=audit.n_bootstrap, seed=audit.seed)
        zs = zero_shot(img, pos, neg, te.labels(), patient, n_bootstrap=audit.n_bootstrap, seed=audit.seed)
        if relink and outcomes is not None and target == "in-domain":
            outcomes[target] = outcome_frame(res.per_query, te.labels(), {"linear": lp.scores, "zero-shot": zs.scores})
        probes += [_probe_rows(lp, target, "linear-probe", "projected"), _probe_rows(zs, target, "zero-shot", "projected")]
    if inputs.frozen_rows is not None:
        probes.append(inputs.frozen_rows)
    relink_rows = pd.concat(relinks, ignore_index=True) if relinks else pd.DataFrame()
    return relink_rows, summaries, pd.concat(probes, ignore_index=True)
