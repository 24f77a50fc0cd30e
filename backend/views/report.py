"""The HTML audit report for a privacy review board: one self-contained file (figures, numbers,
definitions, full specs, versions) built from the finished runs of one dataset and model."""

from __future__ import annotations

import html
import json
import math
import platform
from datetime import UTC, datetime
from importlib import metadata

import numpy as np
import pandas as pd

from backend.runs import provenance, store
from backend.views import catalog, compare, cuts, figures, mitigation, status, verdict
from backend.views.definitions import DEFINITIONS
from backend.views.recommend import Target, recommend

PACKAGES = ("numpy", "pandas", "torch", "open_clip_torch", "opacus", "duckdb", "plotly", "streamlit", "scikit-learn")
THREAT = (
    "A de-identified chest radiograph can be re-linked to its own radiology report by an attacker who holds the "
    "image and a pool of candidate reports and ranks them with a CLIP-style vision-language model "
    "(arXiv 2606.02276). The report carries dates, history and findings that the image alone does not, so "
    "re-linkage undoes de-identification. This report measures how far above chance the model re-links, and what "
    "differentially private projection heads change."
)


CAVEATS: tuple[str, ...] = (
    "Only the projection heads are private: DP-SGD trains the two linear heads on frozen encoder features; the "
    "encoders themselves saw their training data without any guarantee, and their features are used as they are.",
    "Epsilon bounds what one training patient (or pair, per the privacy unit) adds to the heads. Re-linkage that "
    "the model does for every patient, seen or unseen, is a capability of the model, not memorisation, and DP does "
    "not promise to remove it (see the members against non-members numbers on the Mitigation page).",
    "One attack is measured: ranking a pool of candidate reports by cosine similarity to one image. Other attacks "
    "(several images of one patient, side information, a fine-tuned attacker model) can re-link more.",
    "'Nominal' epsilon (in-batch objective) ignores that one record also appears as a negative for others; only "
    "'certified' points carry the DP-SGD guarantee as stated.",
    "Confidence intervals are 95% percentile bootstraps over patients; lift = Recall@K / chance (K/N).",
)
SYNTHETIC_WARNING = ("SYNTHETIC data: generated images and reports, no patient. The numbers show the mechanism, "
                     "not the size of the risk on real data.")
MITIGATION_COLUMNS = {  # stored column -> the name a reader sees
    "epsilon": "target epsilon", "epsilon_achieved": "epsilon (accountant)", "guarantee": "guarantee",
    "privacy_unit": "privacy unit", "objective": "objective", "noise_multiplier": "noise multiplier",
    "delta": "delta", "r1_random": "Recall@1, random pool, largest N", "r1_hard": "Recall@1, pathology-matched, largest N",
    "auroc_linear": "linear-probe macro AUROC", "auroc_zero_shot": "zero-shot macro AUROC",
    "reduction": "Recall@1 cut at the largest N vs retrained heads, no DP",
    "auroc_change": "linear-probe AUROC change vs retrained heads, no DP"}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4g}")
    return html.escape(str(value))


def _table(df: pd.DataFrame) -> str:
    if df is None or not len(df):
        return "<p><em>No rows.</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _spec_block(run_id: str | None) -> str:
    run = store.get_run(run_id) if run_id else None
    if not run:
        return ""
    pretty = json.dumps(json.loads(run["spec"] or "{}"), indent=2, sort_keys=True)
    prov = provenance.display(store.get_provenance(run_id))
    return (f"<h3>{html.escape(run_id)} ({html.escape(run['kind'])}, device {html.escape(run.get('device') or '?')})"
            f"</h3>{_table(pd.DataFrame(list(prov.items()), columns=['provenance', 'value']))}"
            f"<pre>{html.escape(pretty)}</pre>")


def _relink_section(source: str | None, model: str | None, first: list[bool]) -> tuple[str, list[str]]:
    runs = catalog.audit_runs(source)
    ids = runs["run_id"].tolist() if len(runs) else []
    if not ids:
        return "<h2>Re-linkage</h2><p>No finished audit for this dataset yet.</p>", []
    rows = catalog.relink_rows(ids, variant="model")
    fig = figures.recall_curves(rows, k=1, title="Recall@1 against pool size (all audited models)")
    parts = ["<h2>Re-linkage</h2>", _figure(fig, first), "<h3>Lift table (K=1)</h3>",
             _table(compare.lift_table(rows, k=1))]
    return "".join(parts), ids


def _figure(fig: object, first: list[bool]) -> str:
    # The first figure carries plotly.js inline so the file opens offline; the others reuse it.
    out = fig.to_html(full_html=False, include_plotlyjs=bool(first[0]))
    first[0] = False
    return out


def _mitigation_section(sweep_id: str | None, first: list[bool]) -> str:
    if not sweep_id:
        return "<h2>Mitigation</h2><p>No finished epsilon sweep for this dataset and model.</p>"
    view = mitigation.sweep_view(sweep_id)
    pts = view.points.copy()
    cols = [c for c in ("epsilon", "epsilon_achieved", "guarantee", "privacy_unit", "objective", "noise_multiplier", "delta",
                        "r1_random", "r1_hard", "auroc_linear", "auroc_zero_shot", "reduction", "auroc_change")
            if c in pts.columns]
    curves = view.metrics[~view.metrics["variant"].str.startswith("transfer:")].copy()
    curves["series"] = [mitigation.series_label(e) for e in curves["epsilon"]]
    parts = ["<h2>Mitigation (DP projection heads)</h2>",
             f"<p>{html.escape(DEFINITIONS['nominal'])}</p>",
             f"<p>{html.escape(DEFINITIONS['certified'])}</p>",
             _table(_with_cis(pts, pts[cols].rename(columns=MITIGATION_COLUMNS))),
             _figure(figures.recall_curves(curves[curves["pool_kind"] == "random"], series="series",
                                           title="Recall@1 by epsilon (random pools)",
                                           colors=figures.sweep_colors(pts["epsilon"])), first),
             _figure(figures.frontier(pts), first)]
    strongest = pts[np.isfinite(pts["epsilon"])]
    if len(strongest):
        eps = float(strongest["epsilon"].min())
        probe, _ = mitigation.utility_frames(view, eps)
        macro = probe[probe["label"] == "macro"] if "label" in probe.columns else probe.iloc[0:0]
        if len(macro):
            keep = [c for c in ("series", "method", "auroc", "ci_low", "ci_high") if c in macro.columns]
            parts += [f"<h3>Clinical utility at the strongest epsilon ({eps:g}) against no DP</h3>",
                      "<p>Macro AUROC over the 14 findings with its 95% patient-bootstrap CI; linear probe on the "
                      "projected image embeddings, zero-shot with positive and negative prompts.</p>",
                      _table(macro[keep].rename(columns={"series": "heads", "ci_low": "95% CI low",
                                                         "ci_high": "95% CI high"}))]
    transfer = view.metrics[view.metrics["variant"].str.startswith("transfer:")]
    if len(transfer):
        t = transfer[(transfer["k"] == 1) & (transfer["level"] == "study")]
        t = t.loc[t.groupby(["variant", "epsilon"])["n"].idxmax()]
        parts += ["<h3>Transfer (heads applied to another source without retraining)</h3>",
                  _table(t[["variant", "epsilon", "pool_kind", "n", "recall", "lift"]])]
    return "".join(parts)


def _with_cis(pts: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The sweep table plus, per read point N, the cut vs the retrained heads with its paired CI, and the AUROC
    change's paired CI (as text: "52% [95% CI 44% to 60%]", or "(CI needs a recompute)")."""
    out = table.copy()
    for tag in ("100", "1000", "max"):
        if f"cut_{tag}" in pts.columns and pts[f"n_{tag}"].notna().any():
            n = int(pts[f"n_{tag}"].dropna().iloc[0])
            out[f"Recall@1 cut at N={n:,} vs retrained heads, no DP [paired 95% CI]"] = [
                cuts.interval(c, lo, hi, "{:.0%}") for c, lo, hi in
                zip(pts[f"cut_{tag}"], pts[f"cut_{tag}_low"], pts[f"cut_{tag}_high"], strict=True)]
    if "auroc_change_low" in pts.columns:
        out["linear-probe AUROC change vs retrained heads, no DP [paired 95% CI]"] = [
            cuts.interval(c, lo, hi, "{:+.3f}") for c, lo, hi in
            zip(pts["auroc_change"], pts["auroc_change_low"], pts["auroc_change_high"], strict=True)]
    return out


def _recommendation_section(sweep_id: str | None) -> str:
    """The recommendation for the default target (views.recommend.Target), at the top of the report."""
    if not sweep_id:
        return "<h2>Recommendation</h2><p>No finished epsilon sweep: no recommendation.</p>"
    got = recommend(mitigation.sweep_view(sweep_id).points, Target())
    risk = (f"<p>Risk in words: an attacker's first guess is the right report {html.escape(got['risk'])} at this "
            f"point; without DP (retrained heads) {html.escape(got['risk_before'])}.</p>" if got["risk"] else "")
    return (f"<h2>Recommendation</h2><p>Target: {html.escape(got['rule'])} (the default target; set your own on the "
            f"Overview).</p><p class=\"{'ok' if got['met'] else 'warn'}\"><b>{html.escape(got['sentence'])}</b></p>{risk}")


def _dp_table(lines: list[dict], epsilon: float | None) -> str:
    """The DP heads against their one baseline, the retrained heads without DP, with the baseline named in every
    column header: Recall@1 at each read point N and the macro AUROCs, each change with its paired CI."""
    dp = [x for x in lines if x["key"].startswith("dp_")]
    if not dp:
        return ""
    eps = f"{epsilon:g}" if epsilon is not None else "?"
    rows = [{"quantity": cuts.n_phrase(x["n"]),
             "retrained heads, no DP (baseline) [95% CI]": f"{x['before']['recall']:.4f} [{x['before']['ci_low']:.4f}, "
                                                           f"{x['before']['ci_high']:.4f}]",
             f"DP heads ε={eps} [95% CI]": f"{x['after']['recall']:.4f} [{x['after']['ci_low']:.4f}, "
                                          f"{x['after']['ci_high']:.4f}]",
             "change vs retrained heads, no DP [paired 95% CI]": cuts.interval(-x["cut"], -x["cut_high"], -x["cut_low"])}
            for x in dp]
    rows += [{"quantity": f"{'linear-probe' if x['key'] == 'auroc_linear' else 'zero-shot'} macro AUROC",
              "retrained heads, no DP (baseline) [95% CI]": f"{x['before']:.3f}",
              f"DP heads ε={eps} [95% CI]": f"{x['after']:.3f}",
              "change vs retrained heads, no DP [paired 95% CI]": cuts.interval(x["change"], x["change_low"],
                                                                               x["change_high"], "{:+.3f}")}
             for x in lines if x["key"] in ("auroc_linear", "auroc_zero_shot")]
    return f"<h3>DP heads at ε={html.escape(eps)} against the retrained heads, no DP</h3>" + _table(pd.DataFrame(rows))


def _members_section(sweep_id: str | None, model: str | None) -> str:
    """Members against non-members at every N measured, with what the gaps say."""
    if not sweep_id:
        return ""
    table, _ = mitigation.members_table(sweep_id, every_n=True)
    if table.empty:
        return ("<h2>Members against non-members</h2><p>This sweep did not measure members against non-members "
                "(sweeps launched since they are measured do).</p>")
    note = mitigation.members_note(table) or ""
    encoders = f" {verdict.ENCODERS_SAW_MEMBERS}" if model == "demo" else ""
    return (f"<h2>Members against non-members</h2><p>{html.escape(DEFINITIONS['members'])}</p>"
            f"{_table(mitigation.members_display(table))}<p>{html.escape(note + encoders)}</p>")


def build_report(source: str | None, model: str | None) -> str:
    """The complete HTML document for one dataset and model."""
    first = [True]
    head = verdict.headline(source, model)
    relink_html, audit_ids = _relink_section(source, model, first)
    numbers = pd.DataFrame([{"quantity": f"lift of Recall@1 at N={n}, random pool",
                             "original model (as audited)": head.get(f"before_{key}", np.nan)}
                            for key, n in (("100", 100), ("max", head.get("n_max")))])
    audit_id = catalog.latest("audit", source, model)
    said = verdict.verdict(audit_id, head.get("sweep_run"))
    lines = said["lines"]
    verdict_html = "".join(f"<li><b>{html.escape(line['label'])}</b>: {html.escape(line['sentence'])}</li>"
                           for line in lines) or "<li>No finished audit yet.</li>"
    warning = f'<p class="warn">{html.escape(SYNTHETIC_WARNING)}</p>' if source == "synthetic" else ""
    note = f'<p class="warn">{html.escape(head["sweep_note"])}</p>' if head.get("sweep_note") else ""
    dropped = status.drops_note(audit_id)
    note += f"<p>{html.escape(dropped)}</p>" if dropped else ""
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in CAVEATS)
    defs = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS.items())
    specs = "".join(_spec_block(r) for r in [*audit_ids, head.get("sweep_run")])
    vers = _table(pd.DataFrame(sorted(versions().items()), columns=["package", "version"]))
    when = datetime.now(UTC).isoformat(timespec="seconds")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>CXR re-linkage audit</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
pre{{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}}dt{{font-weight:bold}}
.warn{{background:#fff6dd;border:1px solid #e6c200;padding:8px}}.ok{{background:#e8f6e8;border:1px solid #3a3;padding:8px}}
@media print{{body{{max-width:none;margin:0;font-size:11px}}h2,h3{{page-break-after:avoid}}
table,pre,.js-plotly-plot,.plotly-graph-div{{page-break-inside:avoid}}pre{{white-space:pre-wrap}}}}</style></head><body>
<h1>CXR re-linkage audit</h1>
<p>Dataset <b>{_fmt(source)}</b>, model <b>{_fmt(model)}</b>. Generated {when} (UTC).</p>
{warning}{note}
{_recommendation_section(head.get('sweep_run'))}
<h2>Verdict</h2><ul>{verdict_html}</ul>
<h2>What this does not show (privacy caveats)</h2><ul>{caveats}</ul>
<h2>The threat</h2><p>{html.escape(THREAT)}</p>
<h2>Headline</h2><h3>The original model (the audited model's own heads)</h3>{_table(numbers)}
{_dp_table(lines, said.get('epsilon'))}
<p>Strongest DP point of the sweep: epsilon {_fmt(head.get('after_eps', 'n/a'))}, guarantee {_fmt(head.get('guarantee', 'n/a'))}.</p>
{relink_html}{_mitigation_section(head.get('sweep_run'), first)}{_members_section(head.get('sweep_run'), model)}
<h2>Definitions</h2><dl>{defs}</dl>
<h2>Full specifications and provenance of every run</h2>{specs or '<p>No runs.</p>'}
<h2>Versions</h2>{vers}
</body></html>"""
