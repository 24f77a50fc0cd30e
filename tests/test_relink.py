"""backend.relink against independent references: exact rational sums, Monte-Carlo pools sampled and ranked
explicitly, numpy argsort; plus the invariants (identical embeddings, random embeddings, block size)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from backend.errors import SpecError
from backend.relink import build_index, default_grid, relink_curves, top_k
from backend.relink.stats import expected_recall, group_chance

KS = (1, 3, 5)


def _data(seed: int = 0, n_patients: int = 30, d: int = 6, signal: float = 1.2, dup_texts: bool = True,
          noisy_dups: bool = True) -> dict:
    """Pairs: 1-3 studies per patient, 1-2 images per study, 3 label groups (with NaNs), weak image-report
    signal; optionally duplicated report texts across patients (identical or slightly perturbed embeddings)."""
    rng = np.random.default_rng(seed)
    rows, study_vecs, n_study = [], [], 0
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 4))):
            vec = rng.normal(size=d)
            text = f"report {n_study}"
            lab = np.array([[1, 0, np.nan], [0, 1, 0], [0, 0, 1]][int(rng.integers(0, 3))], dtype=float)
            study_vecs.append(vec)
            for _ in range(int(rng.integers(1, 3))):
                rows.append((f"s{n_study}", f"p{p}", text, lab, vec + rng.normal(size=d) / signal, n_study))
            n_study += 1
    study, patient, text, labels, img, sidx = (list(c) for c in zip(*rows, strict=True))
    rep = np.array([study_vecs[i] for i in sidx])
    if dup_texts:  # a later study of another patient reuses an earlier report text (and embedding)
        first_row = {s: i for i, s in reversed(list(enumerate(sidx)))}
        for src, dst in [(0, 7), (0, 19), (3, 25), (10, 40), (12, 33)]:
            if dst >= n_study or patient[first_row[src]] == patient[first_row[dst]]:
                continue
            noise = rng.normal(size=d) * 1e-4 if noisy_dups and dst % 2 else 0.0
            for i, s in enumerate(sidx):
                if s == dst:
                    text[i] = text[first_row[src]]
                    rep[i] = rep[first_row[src]] + noise
    return {"image_emb": np.array(img, np.float32), "report_emb": rep.astype(np.float32), "study_id": np.array(study),
            "patient_id": np.array(patient), "report_text": np.array(text), "labels": np.array(labels)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _mc(data: dict, n_pool: int, ks: tuple[int, ...], hard: bool, level: str, n_pools: int, seed: int,
        include_same_patient: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo Recall@K: sample pools explicitly, rank with random tie-breaking. Returns (mean, se) per K."""
    rng = np.random.default_rng(seed)
    sid = data["study_id"]
    first = {s: i for i, s in reversed(list(enumerate(sid)))}
    cand = sorted(first, key=lambda s: first[s])
    ci = [first[s] for s in cand]
    c_emb = _unit(data["report_emb"][ci].astype(np.float32))
    c_text, c_pat = data["report_text"][ci], data["patient_id"][ci]
    c_lab = [tuple(np.nan_to_num(data["labels"][i])) for i in ci]
    pos = {s: j for j, s in enumerate(cand)}
    sims = _unit(data["image_emb"].astype(np.float32)) @ c_emb.T
    per_query = []
    for q in range(len(sid)):
        c, s = pos[sid[q]], sims[q]
        own = np.flatnonzero(c_pat == c_pat[c])
        anchor = c if level == "study" or s[c] >= s[own].max() else own[np.argmax(s[own])]
        ok = np.array([j != c and (c_lab[j] == c_lab[c] or not hard) and
                       (c_pat[j] != c_pat[c] or (include_same_patient and level == "study")) for j in range(len(cand))])
        elig = np.flatnonzero(ok)
        take = min(n_pool - 1, elig.size)
        picks = np.argsort(rng.random((n_pools, elig.size)), axis=1)[:, :take]
        pool = elig[picks]
        ps = s[pool]
        tie = (c_text[pool] == c_text[anchor]) | (ps == s[anchor])
        beat = (ps > s[anchor]) & ~tie
        rank = 1 + beat.sum(1) + rng.integers(0, tie.sum(1) + 1)
        per_query.append([(rank <= k).mean() for k in ks])
    per_query = np.array(per_query)
    return per_query.mean(0), np.sqrt((per_query * (1 - per_query)).sum(0) / n_pools) / len(sid)


def _row(res, pool: str, level: str, k: int, n: int) -> pd.Series:
    rows = res.rows
    sel = rows[(rows.pool_kind == pool) & (rows.level == level) & (rows.k == k) & (rows.n == n)]
    assert len(sel) == 1
    return sel.iloc[0]


def _exact(m: int, b: int, t: int, n: int, k: int) -> float:
    """The multivariate hypergeometric double sum in exact rational arithmetic."""
    total, other, acc = math.comb(m, n), m - b - t, Fraction(0)
    for x in range(min(k - 1, b, n) + 1):
        for y in range(min(t, n - x) + 1):
            if 0 <= n - x - y <= other:
                w = math.comb(b, x) * math.comb(t, y) * math.comb(other, n - x - y)
                acc += Fraction(w, total) * Fraction(min(k - x, y + 1), y + 1)
    return float(acc)


def test_closed_form_equals_exact_double_sum() -> None:
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(120):
        m = int(rng.integers(0, 50))
        b = int(rng.integers(0, m + 1))
        t = int(rng.integers(0, m - b + 1))
        cases.append((m, b, t, int(rng.integers(0, m + 1))))
    # large pools with few ties (direct tail sums), many ties (complement), everything drawn
    cases += [(400000, 0, 1, 1), (400000, 3, 1, 1), (400000, 2, 5, 999), (400000, 5, 40, 399999),
              (5000, 2, 6, 400), (600, 1, 400, 300), (200, 0, 150, 100)]
    m, b, t, n = (np.array(c) for c in zip(*cases, strict=True))
    got = expected_recall(m, b, t, n, (1, 5, 10))
    want = np.array([[_exact(*c, k) for k in (1, 5, 10)] for c in cases])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    no_tie = (t == 0) & (m > 0)
    from scipy.stats import hypergeom

    np.testing.assert_allclose(got[no_tie, 1], hypergeom.cdf(4, m[no_tie], b[no_tie], n[no_tie]), atol=1e-9)


def test_group_chance_matches_enumeration() -> None:
    for draws, group, k in [(0, 1, 1), (9, 1, 1), (9, 3, 2), (20, 4, 5), (3, 2, 5)]:
        want = 1 - Fraction(math.comb(draws, k), math.comb(draws + group, k)) if draws >= k else 1.0
        assert group_chance(np.array([draws]), np.array([group]), k)[0] == pytest.approx(float(want), abs=1e-12)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dups", [False, True])
def test_closed_form_matches_monte_carlo_pools(hard: bool, dups: bool) -> None:
    data = _data(seed=1, dup_texts=dups)
    res = relink_curves(**data, ks=KS, n_grid=(2, 5, 12, 1000), n_bootstrap=0)
    if dups:
        assert (res.per_query.ties > 0).sum() >= 4
    kind = "hard" if hard else "random"
    for level in ("study", "patient"):
        for n_pool in (2, 5, 12, 1000):
            mean, se = _mc(data, n_pool, KS, hard, level, n_pools=300, seed=n_pool)
            for i, k in enumerate(KS):
                got = _row(res, kind, level, k, n_pool).recall
                assert abs(got - mean[i]) <= 4.5 * se[i] + 1e-9, (kind, level, n_pool, k, got, mean[i], se[i])


def test_include_same_patient_matches_monte_carlo() -> None:
    data = _data(seed=2)
    res = relink_curves(**data, ks=KS, n_grid=(4, 10), n_bootstrap=0, include_same_patient=True)
    for n_pool in (4, 10):
        mean, se = _mc(data, n_pool, KS, False, "study", n_pools=300, seed=5, include_same_patient=True)
        for i, k in enumerate(KS):
            assert abs(_row(res, "random", "study", k, n_pool).recall - mean[i]) <= 4.5 * se[i] + 1e-9


def test_full_pool_rank_and_rows_agree_with_brute_force() -> None:
    data = _data(seed=4, dup_texts=False)
    res = relink_curves(**data, ks=(1,), n_bootstrap=0)
    sid = data["study_id"]
    first = {s: i for i, s in reversed(list(enumerate(sid)))}
    cand = sorted(first, key=lambda s: first[s])
    c_pat = data["patient_id"][[first[s] for s in cand]]
    sims = _unit(data["image_emb"]) @ _unit(data["report_emb"][[first[s] for s in cand]]).T
    pos = {s: j for j, s in enumerate(cand)}
    beaters = np.array([int(((sims[q] > sims[q, pos[sid[q]]]) & (c_pat != data["patient_id"][q])).sum())
                        for q in range(len(sid))])
    np.testing.assert_array_equal(res.per_query.beaters.to_numpy(), beaters)
    np.testing.assert_allclose(res.per_query.rank_full.to_numpy(), beaters + 1.0)
    full = _row(res, "full", "study", 1, int(round(res.per_query.eligible.mean() + 1)))
    assert full.recall == pytest.approx(np.mean(beaters == 0))
    assert res.summary["median_rank"] == pytest.approx(np.median(beaters + 1.0))
    # per query, R@1 in a random pool of N: no beater among the N - 1 drawn distractors (no ties in this data)
    from scipy.stats import hypergeom

    pq = res.per_query
    assert (pq.ties == 0).all()
    for n_pool in (10, 100, 1000):
        draws = np.minimum(n_pool - 1, pq.eligible)
        np.testing.assert_allclose(pq[f"r1_at_{n_pool}"], hypergeom.pmf(0, pq.eligible, pq.beaters, draws), rtol=1e-12)


def test_identical_embeddings_give_recall_one() -> None:
    data = _data(seed=5, dup_texts=False)
    data["image_emb"] = data["report_emb"].copy()
    res = relink_curves(**data, n_bootstrap=20)
    assert np.allclose(res.rows.recall, 1.0)
    assert res.summary["median_rank"] == 1.0


def test_random_embeddings_give_chance() -> None:
    rng = np.random.default_rng(6)
    n = 1500
    res = relink_curves(rng.normal(size=(n, 16)), rng.normal(size=(n, 16)), np.arange(n), np.arange(n) // 3,
                        np.arange(n).astype(str), None, pools=("random",), ks=(1, 5), n_grid=(10, 100), n_bootstrap=100)
    for k in (1, 5):
        for n_pool in (10, 100):
            row = _row(res, "random", "study", k, n_pool)
            assert row.chance == pytest.approx(k / n_pool)
            assert abs(row.recall - k / n_pool) < 0.03
            assert row.ci_low - 0.01 <= k / n_pool <= row.ci_high + 0.01


def test_patient_level_at_least_study_level() -> None:
    data = _data(seed=7, n_patients=40)
    rows = relink_curves(**data, n_bootstrap=0).rows
    study = rows[rows.level == "study"].set_index(["pool_kind", "k", "n"]).recall
    patient = rows[rows.level == "patient"].set_index(["pool_kind", "k", "n"]).recall
    assert (patient.loc[study.index].to_numpy() >= study.to_numpy() - 1e-12).all()
    assert (patient.loc[study.index].to_numpy() > study.to_numpy() + 1e-6).any()


def test_results_do_not_depend_on_block_size() -> None:
    data = _data(seed=8)
    ref = relink_curves(**data, n_bootstrap=30, block_size=1000)
    for block in (1, 7):
        res = relink_curves(**data, n_bootstrap=30, block_size=block)
        pd.testing.assert_frame_equal(res.rows, ref.rows, check_exact=True)
        # counts are exact; the float32 score itself may differ in its last bit between BLAS kernels
        pd.testing.assert_frame_equal(res.per_query.drop(columns="score_true"), ref.per_query.drop(columns="score_true"),
                                      check_exact=True)
        np.testing.assert_allclose(res.per_query.score_true, ref.per_query.score_true, rtol=0, atol=1e-6)


def test_torch_counting_path_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPUs count with torch ops; run that code path on the CPU and compare with the numpy one."""
    import backend.relink.counts as counts

    data = _data(seed=13)
    ref = relink_curves(**data, n_bootstrap=0, block_size=9, device="cpu")
    monkeypatch.setattr(counts, "NUMPY_ON_CPU", False)
    res = relink_curves(**data, n_bootstrap=0, block_size=9, device="cpu")
    pd.testing.assert_frame_equal(res.per_query, ref.per_query, check_exact=True)


def test_torch_curve_path_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPUs run the curve arithmetic and the bootstrap in torch (backend.relink.stats.Xp); run that path on
    the CPU and compare every row with numpy's (float64 round-off apart)."""
    import backend.relink.rows as rows

    data = _data(seed=13)
    ref = relink_curves(**data, n_bootstrap=50, device="cpu")
    monkeypatch.setattr(rows, "TORCH_ON_CPU", True)
    res = relink_curves(**data, n_bootstrap=50, device="cpu")
    pd.testing.assert_frame_equal(res.rows, ref.rows, check_exact=False, rtol=1e-9, atol=1e-12)
    import torch

    m, b, t, n = (np.array(v) for v in ([50, 400000, 600, 9], [2, 3, 1, 0], [6, 1, 400, 0], [10, 999, 300, 9]))
    got = expected_recall(*(torch.as_tensor(v, dtype=torch.float64) for v in (m, b, t, n)), (1, 5, 10))
    assert isinstance(got, torch.Tensor)
    # log-gamma round-off differs between libraries: about 1e-9 at pools of 400,000 (module docstring)
    np.testing.assert_allclose(got.numpy(), expected_recall(m, b, t, n, (1, 5, 10)), rtol=0, atol=1e-9)


def test_bootstrap_ci_contains_estimate_and_shrinks_with_patients() -> None:
    widths = []
    for n_patients in (15, 120):
        res = relink_curves(**_data(seed=9, n_patients=n_patients, dup_texts=False), pools=("random",),
                            ks=(1,), n_grid=(5,), n_bootstrap=200)
        row = _row(res, "random", "study", 1, 5)
        assert row.ci_low <= row.recall <= row.ci_high
        widths.append(row.ci_high - row.ci_low)
        lo, hi = res.summary["median_rank_ci"]
        assert lo <= res.summary["median_rank"] <= hi
    assert widths[0] > widths[1]


def test_capped_hard_pools_report_effective_n() -> None:
    data = _data(seed=10)
    res = relink_curves(**data, ks=(1,), n_grid=(2, 10_000), n_bootstrap=0)
    big = _row(res, "hard", "study", 1, 10_000)
    assert big.capped_frac == 1.0 and big.effective_n == pytest.approx(res.per_query.eligible_hard.mean() + 1)
    assert big.chance == pytest.approx(np.mean(1.0 / (res.per_query.eligible_hard + 1)))
    assert default_grid(43793)[-3:] == [10000, 20000, 43793] and default_grid(2) == [2]


def test_top_k_agrees_with_argsort() -> None:
    rng = np.random.default_rng(11)
    reports, query = rng.normal(size=(300, 24)), rng.normal(size=24)
    idx, scores = top_k(query, reports, 7)
    cos = _unit(reports) @ (query / np.linalg.norm(query))
    np.testing.assert_array_equal(idx, np.argsort(-cos)[:7])
    np.testing.assert_allclose(scores, cos[idx], atol=1e-5)
    index = build_index(reports)
    np.testing.assert_array_equal(top_k(query, index, 7)[0], idx)
    assert index.search(reports[:3], 1)[0].ravel().tolist() == [0, 1, 2]


def test_bad_inputs_raise_clear_errors() -> None:
    data = _data(seed=12, n_patients=5)
    with pytest.raises(SpecError, match="same shape"):
        relink_curves(**{**data, "report_emb": data["report_emb"][:, :3]})
    with pytest.raises(SpecError, match="non-empty"):
        relink_curves(**{**data, "image_emb": np.zeros((0, 6))})
    with pytest.raises(SpecError, match="patient_id has"):
        relink_curves(**{**data, "patient_id": data["patient_id"][:-1]})
    with pytest.raises(SpecError, match="Unknown pool"):
        relink_curves(**data, pools=("easy",))
    with pytest.raises(SpecError, match="NaN"):
        relink_curves(**{**data, "image_emb": np.full_like(data["image_emb"], np.nan)})
    with pytest.raises(SpecError, match="two patients"):
        relink_curves(**{**data, "patient_id": np.array([f"x{i}" for i in range(len(data["study_id"]))])})
    with pytest.raises(SpecError, match="dimension"):
        top_k(np.ones(3), np.ones((4, 5)), 2)


def test_query_mask_keeps_every_study_as_candidate_and_progress_reaches_total() -> None:
    data = _data(seed=14)
    n = len(data["study_id"])
    ids = np.array([f"pair{i}" for i in range(n)])
    full = relink_curves(**data, n_bootstrap=0, pair_id=ids)
    mask = np.arange(n) % 3 == 0
    calls: list[tuple[int, int]] = []
    part = relink_curves(**data, n_bootstrap=0, pair_id=ids, query_mask=mask, block_size=4,
                         progress=lambda done, total, message="": calls.append((done, total)))
    assert part.per_query.pair_id.tolist() == ids[mask].tolist()
    assert part.summary["n_candidates"] == full.summary["n_candidates"]
    cols = ["beaters", "ties", "beaters_hard", "ties_hard", "patient_beaters", "patient_ties", "rank_full"]
    pd.testing.assert_frame_equal(part.per_query[cols].reset_index(drop=True),
                                  full.per_query.loc[mask, cols].reset_index(drop=True))
    assert calls[-1] == (int(mask.sum()), int(mask.sum())) and len(calls) == -(-int(mask.sum()) // 4)


def test_query_only_images_and_in_place_normalisation_give_the_same_bits() -> None:
    """The 400k memory diet: image_emb with only the queries' rows, and overwrite_emb=True (the
    caller's arrays normalised and reordered in place), change nothing in the result, not a bit."""
    data = _data(seed=21, n_patients=40)
    n = len(data["study_id"])
    mask = np.arange(n) % 3 != 1
    ref = relink_curves(**data, query_mask=mask, n_bootstrap=20, include_same_patient=True)
    img = data["image_emb"][mask]
    variants = {"query rows": {"image_emb": img.copy()},
                "in place": {"report_emb": data["report_emb"].copy(), "image_emb": data["image_emb"].copy()},
                "both": {"image_emb": img.copy(), "report_emb": data["report_emb"].copy()}}
    for name, given in variants.items():
        res = relink_curves(**{**data, **given}, query_mask=mask, n_bootstrap=20, include_same_patient=True,
                            overwrite_emb=name != "query rows")
        pd.testing.assert_frame_equal(res.rows, ref.rows, check_exact=True, obj=name)
        pd.testing.assert_frame_equal(res.per_query, ref.per_query, check_exact=True, obj=name)
        assert res.summary == ref.summary, name
        if name != "query rows":  # really used in place: the candidates' unit rows now head report_emb
            assert not np.array_equal(given["report_emb"], data["report_emb"])
            np.testing.assert_allclose(np.linalg.norm(given["report_emb"][:ref.summary["n_candidates"]], axis=1), 1,
                                       atol=1e-6)
    frozen = data["report_emb"].copy()
    frozen.flags.writeable = False  # a read-only array is copied, as without the flag
    res = relink_curves(**{**data, "report_emb": frozen}, query_mask=mask, n_bootstrap=20, include_same_patient=True,
                        overwrite_emb=True)
    pd.testing.assert_frame_equal(res.rows, ref.rows, check_exact=True)
    assert np.array_equal(frozen, data["report_emb"])
    with pytest.raises(SpecError, match="one row per query"):
        relink_curves(**{**data, "image_emb": img[:-1]}, query_mask=mask)


def test_the_curve_pieces_and_threads_do_not_change_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU curve's threads take pieces of distinct rows; each row's arithmetic is its own, so pieces of one
    row on four threads give the bits of one piece per kind on one thread."""
    import os

    from backend.relink import rows as rows_mod

    data = _data(seed=23)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    monkeypatch.setattr(rows_mod, "PIECE_ENTRIES", 10**9)
    whole = relink_curves(**data, n_bootstrap=20)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(rows_mod, "PIECE_ENTRIES", 1)
    pd.testing.assert_frame_equal(relink_curves(**data, n_bootstrap=20).rows, whole.rows, check_exact=True)


def test_tie_windows_of_any_row_subset_give_the_same_bits() -> None:
    """expected_recall's tie windows have a width fixed by the step, not by the other rows of the call: every
    row of a mixed batch (pools that fill up with beaters, ties, capped pools) equals the row computed alone
    (what lets the curve compute distinct rows in pieces)."""
    rng = np.random.default_rng(19)
    m = rng.integers(1, 300, size=400).astype(np.float64)
    b = np.floor(rng.random(400) * m)
    t = np.floor(rng.random(400) * (m - b))
    n = np.where(rng.random(400) < 0.3, m, np.floor(rng.random(400) * m))
    whole = expected_recall(m, b, t, n, (1, 5, 10))
    for i in range(400):
        assert np.array_equal(expected_recall(m[i:i + 1], b[i:i + 1], t[i:i + 1], n[i:i + 1], (1, 5, 10)), whole[i:i + 1])


def test_short_tie_windows_give_the_bits_of_the_steps_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows whose tie count has few support points sum a short window (stats.SHORT_WINDOW): the same bits as the
    step's long window (its extra terms are exact zeros), for tie counts on both sides of the cut and several
    Ks; and the value still equals an exact rational computation of one case."""
    from fractions import Fraction
    from math import comb

    from backend.relink import stats

    rng = np.random.default_rng(17)
    n = 4000
    m = rng.integers(1, 2000, size=n).astype(np.float64)
    b = np.floor(rng.random(n) * m * rng.choice([0.001, 0.05, 1.0], size=n))
    t = np.minimum(rng.choice([1, 2, 3, 6, 7, 8, 9, 30], size=n).astype(np.float64), m - b)
    d = np.floor(rng.random(n) * (m + 1)).clip(max=m)
    for ks in ((1, 5, 10), (2, 40)):
        short = stats.expected_recall(m, b, t, d, ks)
        monkeypatch.setattr(stats, "SHORT_WINDOW", 0)  # every row through the step's window
        long = stats.expected_recall(m, b, t, d, ks)
        monkeypatch.undo()
        assert np.array_equal(short, long)
    # one case by exact fractions: 30 eligible, 4 beaters, 2 ties, 9 drawn, K = 3
    e, bb, tt, dd, k = 30, 4, 2, 9, 3
    exact = Fraction(0)
    for x in range(min(bb, dd) + 1):
        for y in range(min(tt, dd - x) + 1):
            p = Fraction(comb(bb, x) * comb(tt, y) * comb(e - bb - tt, dd - x - y), comb(e, dd))
            exact += p * Fraction(max(0, min(k - x, y + 1)), y + 1)
    got = stats.expected_recall(np.array([e]), np.array([bb]), np.array([tt]), np.array([dd]), (k,))[0, 0]
    assert abs(got - float(exact)) < 1e-14


def test_expected_recall_in_chunks_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """expected_recall and tie_factor bound their scratch by chunks of rows; every row's arithmetic,
    tie windows included, is the one of the unchunked call."""
    from backend.relink import stats

    rng = np.random.default_rng(5)
    m = rng.integers(1, 400, size=3000).astype(np.float64)
    b = np.floor(rng.random(3000) * m)
    t = np.floor(rng.random(3000) * (m - b) * (rng.random(3000) < 0.5))
    n = np.floor(rng.random(3000) * m)
    whole = expected_recall(m, b, t, n, (1, 5, 10))
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 50)
    assert np.array_equal(expected_recall(m, b, t, n, (1, 5, 10)), whole)


def test_rows_taken_in_place_equal_a_fancy_index() -> None:
    from backend.relink import take_rows_in_place

    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 4)).astype(np.float32)
    for rows in (np.arange(300), np.arange(0, 300, 3), rng.permutation(300), rng.choice(300, 170, replace=False),
                 np.array([299, 0, 150]), np.array([5])):
        arr = base.copy()
        out = take_rows_in_place(arr, rows, chunk=16)
        assert np.shares_memory(out, arr) and np.array_equal(out, base[rows])


def test_normalised_rows_on_threads_equal_one_linalg_norm_call() -> None:
    """The chunks are normalised on every core: the float32 bits equal one np.linalg.norm call over all rows (copy
    and in place), and of several bad chunks the first in row order names the error, whatever thread ends first."""
    from backend.relink import normalised_rows

    rng = np.random.default_rng(5)
    base = rng.normal(size=(1000, 24)).astype(np.float32) * rng.uniform(0.1, 10, size=(1000, 1)).astype(np.float32)
    rows = rng.permutation(1000)[:700]
    want = base[rows] / np.linalg.norm(base[rows], axis=1, keepdims=True)
    assert np.array_equal(normalised_rows(base, rows, "x", chunk=37), want)
    own = base.copy()
    got = normalised_rows(own, rows, "x", in_place=True, chunk=37)
    assert np.shares_memory(got, own) and np.array_equal(got, want)
    bad = base.copy()
    bad[rows[600]] = 0.0  # a zero row late, a NaN row early: the NaN's chunk comes first
    bad[rows[50], 3] = np.nan
    with pytest.raises(SpecError, match="NaN"):
        normalised_rows(bad, rows, "x", chunk=37)
    bad[rows[50], 3] = np.inf
    with pytest.raises(SpecError, match="NaN or infinite"):
        normalised_rows(bad, rows, "x", chunk=37)
    bad[rows[50], 3] = 1.0
    with pytest.raises(SpecError, match=f"row {rows[600]}"):
        normalised_rows(bad, rows, "x", chunk=37)


def test_patient_level_matches_any_report_in_top_k() -> None:
    """Patient level simulated literally: the patient's reports + sampled distractors, sorted by score
    (random tie-breaking), hit = any of the patient's reports in the top K (no text twins in this data)."""
    data = _data(seed=15, n_patients=25, dup_texts=False)
    res = relink_curves(**data, ks=KS, n_grid=(3, 8), n_bootstrap=0)
    rng = np.random.default_rng(0)
    sid, pid = data["study_id"], data["patient_id"]
    first = {s: i for i, s in reversed(list(enumerate(sid)))}
    cand = sorted(first, key=lambda s: first[s])
    c_pat = pid[[first[s] for s in cand]]
    sims = _unit(data["image_emb"]) @ _unit(data["report_emb"][[first[s] for s in cand]]).T
    n_pools = 300
    for n_pool in (3, 8):
        hits = np.zeros(len(KS))
        for q in range(len(sid)):
            own, other = np.flatnonzero(c_pat == pid[q]), np.flatnonzero(c_pat != pid[q])
            picks = other[np.argsort(rng.random((n_pools, other.size)), axis=1)[:, :n_pool - 1]]
            pool = np.concatenate([np.broadcast_to(own, (n_pools, own.size)), picks], axis=1)
            score, key = sims[q, pool], rng.random(pool.shape)
            above = (score[:, None, :] > score[:, :, None]) | ((score[:, None, :] == score[:, :, None])
                                                               & (key[:, None, :] > key[:, :, None]))
            best_own_rank = (above.sum(2) + 1)[:, :own.size].min(1)
            hits += [(best_own_rank <= k).sum() for k in KS]
        hits /= n_pools * len(sid)
        for i, k in enumerate(KS):
            got = _row(res, "random", "patient", k, n_pool).recall
            assert abs(got - hits[i]) <= 4.5 * math.sqrt(max(hits[i] * (1 - hits[i]), 1e-4) / (n_pools * len(sid)))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (run by bench/gpu_suite.sh)")
def test_cuda_curve_equals_cpu() -> None:
    """The whole engine on the GPU (counts, curve arithmetic, bootstrap) against the CPU's numpy path."""
    data = _data(seed=21)
    ref = relink_curves(**data, n_bootstrap=100, device="cpu")
    res = relink_curves(**data, n_bootstrap=100, device="cuda")
    pd.testing.assert_frame_equal(res.rows, ref.rows, check_exact=False, rtol=1e-9, atol=1e-9)
    pd.testing.assert_frame_equal(res.per_query.drop(columns="score_true"), ref.per_query.drop(columns="score_true"),
                                  check_exact=False, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("chunk_rows", "m", "n_groups"), [(1000, 300, 6), (7, 300, 6), (5, 300, 6), (3, 1001, 300), (4, 320, 7)])
def test_row_counts_in_chunks_equal_brute_force(chunk_rows: int, m: int, n_groups: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU comparisons run in cache-sized row chunks and count packed bits: every count equals a row-by-row
    brute force, whatever the chunking (label-group runs cut between chunks, exact score ties included) and the
    label groups' widths (narrower than a byte, across byte and word ends; m a multiple of 64 or not), and the rows
    counted again against other thresholds in the same pass."""
    import torch

    from backend.relink import counts as C

    rng = np.random.default_rng(7)
    b = 257
    label = np.sort(rng.integers(0, n_groups, size=m))
    cands = C.build_candidates(rng.normal(size=(m, 4)).astype(np.float32), np.arange(m), np.arange(m), label)
    sim = np.round(rng.normal(size=(b, m)), 1).astype(np.float32)  # rounded: many exact ties
    row_label = np.sort(rng.choice(label, size=b))
    thr = sim[np.arange(b), rng.integers(0, m, size=b)]
    monkeypatch.setattr(C, "COUNT_CHUNK_ELEMENTS", chunk_rows * m)  # chunks of a few rows: runs cut between them
    got = C._row_counts(torch.from_numpy(sim), torch.from_numpy(thr), row_label, cands)
    # rows counted a second time against other thresholds (the patient level's best reports), in the same pass
    moved = np.sort(rng.choice(b, size=b // 3, replace=False))
    moved_thr = sim[moved, rng.integers(0, m, size=moved.size)]
    again, got_moved = C._row_counts_and_moved(torch.from_numpy(sim), torch.from_numpy(thr), row_label, cands, moved,
                                               torch.from_numpy(moved_thr))
    np.testing.assert_array_equal(again, got)

    def brute(row: np.ndarray, t: float, lab: int) -> list[int]:
        group = label == lab
        return [int((row > t).sum()), int((row == t).sum()), int((row[group] > t).sum()), int((row[group] == t).sum())]

    for i in range(b):
        assert got[:, i].tolist() == brute(sim[i], thr[i], row_label[i]), i
    for j, i in enumerate(moved):
        assert got_moved[:, j].tolist() == brute(sim[i], moved_thr[j], row_label[i]), i


def test_distinct_rows_equal_a_dictionary_of_tuples() -> None:
    from backend.relink.rows import distinct_rows

    rng = np.random.default_rng(11)
    small = [rng.integers(0, 4, size=500), rng.integers(0, 3, size=500), rng.integers(0, 2, size=500)]
    huge = [rng.integers(0, 3, size=200) * 2**40, rng.integers(0, 2, size=200) * 2**30, rng.integers(0, 2, size=200)]
    for cols in (small, huge):  # one int64 key; too many combinations for one (np.unique over rows)
        first, inverse = distinct_rows(*cols)
        tuples = list(zip(*(c.tolist() for c in cols), strict=True))
        assert len(first) == len(set(tuples))
        assert len({tuples[i] for i in first}) == len(first)  # each distinct row once
        assert all(tuples[i] == tuples[first[inverse[i]]] for i in range(len(tuples)))


def test_each_distinct_count_triplet_is_computed_once_with_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries sharing (eligible, beaters, ties) share their expected recall: the curve computes each triplet
    once and gives every query the bits it would get alone (here: against a run that computes every query)."""
    from backend.relink import rows as rows_mod
    from backend.relink import stats

    data = _data(seed=31, n_patients=60)
    sizes: list[int] = []
    real = stats.expected_recall

    def spy(eligible, *args, **kw):
        sizes.append(int(np.asarray(eligible).shape[0]))
        return real(eligible, *args, **kw)

    monkeypatch.setattr(rows_mod, "expected_recall", spy)
    deduped = relink_curves(**data, n_bootstrap=20)
    rows_seen = sum(sizes)
    sizes.clear()
    monkeypatch.setattr(rows_mod, "distinct_rows", lambda *cols: (np.arange(len(cols[0])), np.arange(len(cols[0]))))
    every = relink_curves(**data, n_bootstrap=20)
    assert rows_seen < sum(sizes)  # the duplicated triplets were left out
    pd.testing.assert_frame_equal(deduped.rows, every.rows, check_exact=True)


def test_cpu_lanes_give_the_same_bits_restore_torch_threads_and_report_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU two blocks are counted at once (each on one core); the results are the bits of one lane,
    progress comes in order up to the total, and torch's thread count is the caller's again afterwards."""
    import os

    import torch

    from backend.relink import counts as C

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert C.cpu_lanes(10_000, None) == 2 and C.cpu_lanes(400_000, None) == 1  # 20 rows a lane: one lane
    data = _data(seed=27, n_patients=80)
    monkeypatch.setattr(C, "CPU_LANES", 1)
    one = relink_curves(**data, n_bootstrap=20, block_size=7)
    monkeypatch.setattr(C, "CPU_LANES", 2)
    seen: list[tuple[int, int]] = []
    threads = torch.get_num_threads()
    two = relink_curves(**data, n_bootstrap=20, block_size=7, progress=lambda d, t, _msg: seen.append((d, t)))
    assert torch.get_num_threads() == threads
    pd.testing.assert_frame_equal(two.rows, one.rows, check_exact=True)
    pd.testing.assert_frame_equal(two.per_query, one.per_query, check_exact=True)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1] == len(data["study_id"]) and len(done) > 2
    calls = []
    real = C.count_block

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("lane failed")
        return real(*args, **kw)

    monkeypatch.setattr(C, "count_block", failing)
    with pytest.raises(RuntimeError, match="lane failed"):  # a lane's error reaches the caller ...
        relink_curves(**data, n_bootstrap=20, block_size=7)
    assert torch.get_num_threads() == threads  # ... with the caller's thread count restored


def test_curve_differences_allow_a_few_ulps_in_derived_columns_and_nothing_in_exact_ones() -> None:
    """What "the same numbers on another CPU" allows: Recall@K and the derived columns (CI bounds, chance, lift)
    within CROSS_CPU_RTOL, keys and effective N identical, NaN equal to NaN, rows matched in any order."""
    from backend.relink.rows import CROSS_CPU_RTOL, CURVE_COLUMNS, curve_differences

    rng = np.random.default_rng(3)
    base = pd.DataFrame({"pool_kind": ["random"] * 4 + ["hard"] * 4, "level": "study", "k": 1,
                         "n": [2, 5, 10, 20] * 2, "recall": rng.random(8), "ci_low": rng.random(8),
                         "ci_high": rng.random(8), "chance": rng.random(8), "lift": rng.random(8) * 10,
                         "effective_n": [2.0, 5.0, 10.0, 20.0] * 2})
    base.loc[7, "ci_low"] = np.nan
    assert list(base.columns) == list(CURVE_COLUMNS)
    assert curve_differences(base.iloc[::-1], base) == []
    ulps = base.copy()
    for col in ("recall", "ci_low", "ci_high", "chance", "lift"):
        ulps[col] = np.nextafter(np.nextafter(ulps[col], np.inf), np.inf)  # two units in the last place
    assert curve_differences(ulps, base) == []
    far = base.copy()
    far.loc[3, "lift"] *= 1 + 100 * CROSS_CPU_RTOL
    far.loc[2, "recall"] *= 1 + 100 * CROSS_CPU_RTOL
    assert [p.split(":")[0] for p in curve_differences(far, base)] == ["recall", "lift"]
    one_ulp = base.copy()
    one_ulp.loc[0, "effective_n"] = np.nextafter(one_ulp.loc[0, "effective_n"], np.inf)
    assert [p.split(":")[0] for p in curve_differences(one_ulp, base)] == ["effective_n"]
    assert curve_differences(base.iloc[:7], base) == ["7 rows against 8"]
